"""Connect with failover: try the app's targets, each at most once, within a per-address timeout.

A name's addresses are tried in the resolver's order, each within the app's ConnectTimeout; the target has
failed only when all of them have. A failed attempt (refused, unreachable, timeout, DNS failure) marks the
target down with backoff and moves on;
the client only sees a failure when every target of its app has failed for this connection. Targets at the
app's MaxConns are skipped; when only those are left the client is refused. Running out of file descriptors
is this process's problem, not the target's: it never marks a target down. Anything else a connect raises is a
bug: it is logged, the target's count is given back and the client is closed at once.
"""

from __future__ import annotations

import asyncio
import errno
import logging
import random
import time
from collections.abc import Coroutine
from functools import partial
from typing import TYPE_CHECKING, Any, TypeVar

from proxy import failpoints
from proxy.balancer import TargetState, choose, mark_failed, mark_ok
from proxy.logs import log_event
from workers.deadlines import Deadlines
from workers.relay import ClientSide, UpstreamSide, expire_connect
from workers.resolver import ResolveError, Resolver
from workers.routes import literal_address
from workers.stepper import Stepper

if TYPE_CHECKING:
    from workers.policy import Policy

log = logging.getLogger("worker")
T = TypeVar("T")

FD_EXHAUSTED = (errno.EMFILE, errno.ENFILE)


def failure_reason(exc: BaseException) -> str:
    if isinstance(exc, TimeoutError):
        return "timeout"
    if isinstance(exc, ResolveError):
        return "dns"
    if isinstance(exc, ConnectionRefusedError):
        return "refused"
    if isinstance(exc, OSError) and exc.errno in (errno.ENETUNREACH, errno.EHOSTUNREACH):
        return "unreachable"
    return "error"


class Connector:
    def __init__(self, slot: int, resolver: Resolver, rng: random.Random, policy: Policy | None = None) -> None:
        self.slot = slot
        self.resolver = resolver
        self.rng = rng
        self.policy = policy
        self.loop = asyncio.get_running_loop()
        self.deadlines: Deadlines[UpstreamSide] = Deadlines(self.loop, expire_side)

    def start(self, relay: ClientSide) -> None:
        """Connect a new client. Its first attempt runs on callbacks when it can (the target is an IP address and
        the app has no MaxConns): uvloop's create_connection stepped by hand (workers/stepper.py) under a shared
        deadline (workers/deadlines.py), where the failover coroutines cost a Task, five coroutines and a timer
        of their own. A failure, a name to look up or MaxConns takes the coroutines."""
        route = relay.route
        assert route is not None
        app = route.app
        if app.max_conns is None and not (failpoints.ANY and failpoints.active("connect-raise")):
            state = choose(route.targets, time.monotonic(), self.rng, relay.tried, app.soft_limit)
            if state is not None:
                host = literal_address(state.target.host)
                if host is not None:
                    self.first_attempt(relay, state, host, app.connect_timeout)
                    return
        relay.connect_task = self.loop.create_task(self.connect(relay))

    def first_attempt(self, relay: ClientSide, state: TargetState, host: str, timeout: float) -> None:
        relay.tried.append(state)
        state.hold()
        side = UpstreamSide(relay, state)
        side.started = time.monotonic()
        attempt = Stepper(self.loop, self.loop.create_connection(lambda: side, host, state.target.port),
                          partial(self.first_done, side))
        relay.connect_task = attempt
        side.deadline = self.deadlines.watch(side, timeout)
        attempt.step()

    def first_done(self, side: UpstreamSide, failure: BaseException | None, _: object) -> None:
        """The first attempt's outcome: adopted, the client gone, or a failure to fail over from."""
        relay = side.relay
        if not side.adopted:
            # This attempt is over; kept, it would hold a cycle (relay, attempt, side, relay). An adopted upstream
            # is released by connected(), and a reset after adoption may already have given the relay a retry task.
            relay.connect_task = None
        if side.deadline is not None:
            side.deadline.discard(side)
        state = side.target
        if isinstance(failure, asyncio.CancelledError):
            if not relay.connect_expired:  # the client left while we were connecting
                if not side.adopted:
                    state.release()
                return
            relay.connect_expired = False
            failure = TimeoutError(f"no connection to {state.target} within {timeout_of(relay):g} s")
        if side.adopted:
            if relay.target is state:  # else a reset raced the result and the relay has moved on by itself
                self.connected(relay, state, time.monotonic() - side.started)
            return
        state.release()
        if failure is None:
            return  # Connected, but the client had already left.
        if not isinstance(failure, OSError):  # A bug: this client only, and at once.
            log.error("worker %d: connect failed unexpectedly: %s", self.slot, failure, exc_info=failure,
                      extra={"event": "connect_error", "worker": self.slot})
            relay.connect_failed()
            return
        if failure.errno in FD_EXHAUSTED:
            if self.policy is not None:
                self.policy.fds_exhausted(failure)
            relay.connect_failed()
            return
        route = relay.route
        assert route is not None
        self.failed(route.app.name, state, failure)
        if relay.done:
            return
        route.stats.failovers += 1
        relay.connect_task = self.loop.create_task(self.connect(relay, side.started))

    async def connect(self, relay: ClientSide, started: float | None = None) -> None:
        try:
            await self.failover(relay, time.monotonic() if started is None else started)
        except Exception as exc:  # A bug: this client only, and at once, not after its IdleTimeout.
            log.exception("worker %d: connect failed unexpectedly: %s", self.slot, exc,
                          extra={"event": "connect_error", "worker": self.slot})
            relay.connect_failed()

    async def failover(self, relay: ClientSide, started: float) -> None:
        """Each target in turn, until one takes the connection (`started`: when the client's first attempt
        began, for the connect latency)."""
        route = relay.route
        assert route is not None
        stats = route.stats
        app = route.app
        timeout = app.connect_timeout
        tried = relay.tried  # across replays too: each target at most once per client connection
        full = False
        while True:
            state = choose(route.targets, time.monotonic(), self.rng, tried, app.soft_limit, app.max_conns)
            if state is None:
                break
            tried.append(state)
            state.hold()
            if app.max_conns is not None and state.load() > app.max_conns:
                state.release()  # Another worker took the last place first; counting first keeps the limit.
                full = True
                continue
            adopted, failure = await self.attempt(relay, state, timeout)
            if adopted:
                # The relay took this connection: from here its callbacks own the target's accounting. If it
                # has already lost it again (a reset can race create_connection's return), the relay has
                # moved on by itself (a replay to the next target, or the end): nothing more to do here.
                if relay.target is state:
                    self.connected(relay, state, time.monotonic() - started)
                return
            state.release()
            if failure is None:
                return  # Connected, but the client had already left.
            if isinstance(failure, OSError) and failure.errno in FD_EXHAUSTED:
                if self.policy is not None:
                    self.policy.fds_exhausted(failure)
                relay.connect_failed()
                return
            self.failed(route.app.name, state, failure)
            if relay.done:
                return
            stats.failovers += 1
        if app.max_conns is not None and (full or any(s not in tried for s in route.targets)):
            if self.policy is not None:
                self.policy.refuse(route, f"every target is at MaxConns ({app.max_conns})")
            relay.connect_failed()
            return
        stats.failed += 1
        log_event(log, logging.DEBUG, "connect_failed",
                  f"app {route.app.name}: all {len(tried)} targets failed; closing the client",
                  app=route.app.name, worker=self.slot)
        relay.connect_failed()

    def connected(self, relay: ClientSide, state: TargetState, seconds: float) -> None:
        relay.connect_task = None  # this task ends now: an idle connection should not keep it alive
        state.connects += 1
        route = relay.route
        assert route is not None
        route.stats.observe_connect(seconds)
        if mark_ok(state):
            log_event(log, logging.INFO, "target_up", f"target {state.target} of app {route.app.name} is up",
                      app=route.app.name, target=str(state.target), worker=self.slot)

    async def attempt(self, relay: ClientSide, state: TargetState,
                      timeout: float) -> tuple[bool, BaseException | None]:
        """One target: its DNS lookup, then each of its addresses in turn: (adopted, why it failed).

        `adopted` says the relay took the connection (UpstreamSide.connection_made ran), which can happen even
        when create_connection then reports an error. Each step has its own deadline: a plain loop timer that
        cancels the connect task, cheaper per connection than asyncio.timeout, which the new-connection rate
        notices. Anything unexpected gives the target's count back before it propagates.
        """
        side = UpstreamSide(relay, state)
        try:
            host = literal_address(state.target.host)
            if host is not None:
                return await self.attempt_address(relay, side, host, timeout)
            hosts = await self.within(relay, side, timeout, self.resolver.resolve_all(state.target.host))
            if hosts is None:
                return False, TimeoutError(f"no address for {state.target.host} within {timeout:g} s")
            failure: BaseException | None = None
            for host in hosts:
                adopted, failure = await self.attempt_address(relay, side, host, timeout)
                if adopted or failure is None or (isinstance(failure, OSError) and failure.errno in FD_EXHAUSTED):
                    return adopted, failure
            return False, failure
        except ResolveError as exc:
            return False, exc
        except asyncio.CancelledError:
            if not side.adopted:
                state.release()  # The client left while we were connecting; once adopted, the relay accounts.
            raise
        except Exception:
            if not side.adopted:
                state.release()
            raise

    async def attempt_address(self, relay: ClientSide, side: UpstreamSide, host: str,
                              timeout: float) -> tuple[bool, BaseException | None]:
        if failpoints.ANY and failpoints.active("connect-raise"):
            raise RuntimeError("failpoint connect-raise")
        try:
            connected = await self.within(relay, side, timeout,
                                          self.loop.create_connection(lambda: side, host, side.target.target.port))
        except OSError as exc:
            return side.adopted, exc
        if connected is None:
            return side.adopted, TimeoutError(f"no connection to {host} within {timeout:g} s")
        return side.adopted, None

    async def within(self, relay: ClientSide, side: UpstreamSide, timeout: float,
                     step: Coroutine[Any, Any, T]) -> T | None:
        """The step's result, or None when its deadline passed first (CancelledError: the client left)."""
        timer = self.loop.call_later(timeout, expire_connect, relay, side)
        try:
            return await step
        except asyncio.CancelledError:
            if not relay.connect_expired:
                raise
            relay.connect_expired = False
            if isinstance(relay.connect_task, asyncio.Task):
                relay.connect_task.uncancel()
            return None
        finally:
            timer.cancel()

    def failed(self, app: str, state: TargetState, exc: BaseException) -> None:
        """Count a failed connect by reason; log when it turns the target down."""
        reason = failure_reason(exc)
        state.errors[reason] = state.errors.get(reason, 0) + 1
        if mark_failed(state, time.monotonic()):
            detail = str(exc) or reason
            log_event(log, logging.WARNING, "target_down",
                      f"target {state.target} of app {app} is down ({reason}: {detail})",
                      app=app, target=str(state.target), worker=self.slot, error=reason)


def expire_side(side: UpstreamSide) -> None:
    expire_connect(side.relay, side)


def timeout_of(relay: ClientSide) -> float:
    return relay.route.app.connect_timeout if relay.route is not None else 0.0
