"""Connect with failover: try the app's targets, each at most once, within a per-attempt timeout.

A failed attempt (refused, unreachable, timeout, DNS failure) marks the target down with backoff and moves on;
the client only sees a failure when every target of its app has failed for this connection. Targets at the
app's MaxConns are skipped; when only those are left the client is refused. Running out of file descriptors
is this process's problem, not the target's: it never marks a target down.
"""

from __future__ import annotations

import asyncio
import errno
import logging
import random
import time
from typing import TYPE_CHECKING

from proxy.balancer import TargetState, choose, mark_failed, mark_ok
from proxy.logs import log_event
from workers.relay import UpstreamSide
from workers.resolver import ResolveError, Resolver
from workers.routes import literal_address

if TYPE_CHECKING:
    from workers.policy import Policy
    from workers.relay import ClientSide

log = logging.getLogger("worker")

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


def _expire(relay: ClientSide) -> None:
    task = relay.connect_task
    if task is not None and not task.done():
        relay.connect_expired = True
        task.cancel()


class Connector:
    def __init__(self, slot: int, resolver: Resolver, rng: random.Random, policy: Policy | None = None) -> None:
        self.slot = slot
        self.resolver = resolver
        self.rng = rng
        self.policy = policy
        self.loop = asyncio.get_running_loop()

    async def connect(self, relay: ClientSide) -> None:
        route = relay.route
        assert route is not None
        stats = route.stats
        app = route.app
        timeout = app.connect_timeout
        tried = relay.tried  # across replays too: each target at most once per client connection
        started = time.monotonic()
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
                relay.finish()
                return
            self.failed(route.app.name, state, failure)
            if relay.finished:
                return
            stats.failovers += 1
        if app.max_conns is not None and (full or any(s not in tried for s in route.targets)):
            if self.policy is not None:
                self.policy.refuse(route, f"every target is at MaxConns ({app.max_conns})")
            relay.finish()
            return
        stats.failed += 1
        log_event(log, logging.DEBUG, "connect_failed",
                  f"app {route.app.name}: all {len(tried)} targets failed; closing the client",
                  app=route.app.name, worker=self.slot)
        relay.finish()

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
        """One connect (with its DNS lookup) to one target: (adopted, why it failed).

        `adopted` says the relay took the connection (UpstreamSide.connection_made ran), which can happen even
        when create_connection then reports an error. The deadline is a plain loop timer that cancels the
        connect task: cheaper per connection than asyncio.timeout, which the new-connection rate notices.
        """
        side = UpstreamSide(relay, state)
        timer = self.loop.call_later(timeout, _expire, relay)
        try:
            host = literal_address(state.target.host) or await self.resolver.resolve(state.target.host)
            await self.loop.create_connection(lambda: side, host, state.target.port)
            return side.adopted, None
        except (OSError, ResolveError) as exc:
            return side.adopted, exc
        except asyncio.CancelledError:
            if not relay.connect_expired:
                # The client left while we were connecting. Once the relay adopted the upstream, its own
                # finish() accounts for the target; before that, we do.
                if not side.adopted:
                    state.release()
                raise
            relay.connect_expired = False
            if relay.connect_task is not None:
                relay.connect_task.uncancel()
            return side.adopted, TimeoutError(f"no connection within {timeout:g} s")
        finally:
            timer.cancel()

    def failed(self, app: str, state: TargetState, exc: BaseException) -> None:
        reason = failure_reason(exc)
        state.errors[reason] = state.errors.get(reason, 0) + 1
        if mark_failed(state, time.monotonic()):
            detail = str(exc) or reason
            log_event(log, logging.WARNING, "target_down",
                      f"target {state.target} of app {app} is down ({reason}: {detail})",
                      app=app, target=str(state.target), worker=self.slot, error=reason)
