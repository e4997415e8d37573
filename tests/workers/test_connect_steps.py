"""The first connect's machinery on a real uvloop loop: a coroutine stepped by hand (workers/stepper.py) and
deadlines on shared timers (workers/deadlines.py)."""

from __future__ import annotations

import asyncio
import gc
import random
import socket
import struct
import time
from typing import Any

import uvloop

from workers.deadlines import TICK, Deadlines
from workers.stepper import Stepper


class Outcome:
    def __init__(self) -> None:
        self.calls: list[tuple[BaseException | None, Any]] = []

    def __call__(self, error: BaseException | None, result: Any) -> None:
        self.calls.append((error, result))


def test_a_stepped_connect_reaches_a_real_listener_and_reports_once() -> None:
    """1. A listener on loopback. 2. uvloop's create_connection to it, stepped by hand. 3. The outcome is
    reported exactly once, with the (transport, protocol) pair, and done() turns true only then."""
    with socket.create_server(("127.0.0.1", 0)) as listener:
        port = listener.getsockname()[1]

        async def main() -> tuple[Outcome, bool]:
            loop = asyncio.get_running_loop()
            outcome = Outcome()
            stepper = Stepper(loop, loop.create_connection(asyncio.Protocol, "127.0.0.1", port), outcome)
            stepper.step()
            done_at_start = stepper.done()
            for _ in range(100):
                if outcome.calls:
                    break
                await asyncio.sleep(0.01)
            error, result = outcome.calls[0]
            assert error is None
            result[0].close()
            assert stepper.cancel() is False  # over: nothing left to cancel
            return outcome, done_at_start

        outcome, done_at_start = uvloop.run(main())
    assert not done_at_start
    assert len(outcome.calls) == 1


def test_a_refused_connect_reports_the_error() -> None:
    """1. A port nobody listens on. 2. The stepped connect reports ConnectionRefusedError, once."""
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        port = probe.getsockname()[1]  # bound, never listening: connects are refused

        async def main() -> Outcome:
            loop = asyncio.get_running_loop()
            outcome = Outcome()
            Stepper(loop, loop.create_connection(asyncio.Protocol, "127.0.0.1", port), outcome).step()
            for _ in range(100):
                if outcome.calls:
                    break
                await asyncio.sleep(0.01)
            return outcome

        outcome = uvloop.run(main())
    assert len(outcome.calls) == 1
    assert isinstance(outcome.calls[0][0], ConnectionRefusedError)


def test_cancel_reaches_the_coroutine_and_its_cleanup_runs() -> None:
    """1. A coroutine awaiting a future that never completes, with a finally clause. 2. cancel(). 3. The
    coroutine saw CancelledError (its cleanup ran) and the owner heard CancelledError, once."""
    cleaned: list[bool] = []

    async def main() -> Outcome:
        loop = asyncio.get_running_loop()
        never: asyncio.Future[None] = loop.create_future()

        async def waits() -> None:
            try:
                await never
            finally:
                cleaned.append(True)

        outcome = Outcome()
        stepper = Stepper(loop, waits(), outcome)
        stepper.step()
        assert stepper.cancel() is True
        for _ in range(100):
            if outcome.calls:
                break
            await asyncio.sleep(0.01)
        assert stepper.done()
        return outcome

    outcome = uvloop.run(main())
    assert cleaned == [True]
    assert len(outcome.calls) == 1
    assert isinstance(outcome.calls[0][0], asyncio.CancelledError)


def test_a_bare_yield_is_stepped_again_on_the_next_turn() -> None:
    async def main() -> Outcome:
        loop = asyncio.get_running_loop()

        async def yields() -> int:
            await asyncio.sleep(0)
            await asyncio.sleep(0)
            return 7

        outcome = Outcome()
        Stepper(loop, yields(), outcome).step()
        for _ in range(10):
            await asyncio.sleep(0)
        return outcome

    assert uvloop.run(main()).calls == [(None, 7)]


def test_deadlines_fire_after_their_timeout_never_before_and_not_for_discarded_items() -> None:
    """1. Three items watched for 50 ms, one more for 200 ms; one of the first three is discarded. 2. By 150 ms
    the two others have expired, each once and none before 50 ms; the discarded one never does. 3. The
    200 ms item expires after 200 ms."""

    async def main() -> tuple[dict[str, float], float]:
        loop = asyncio.get_running_loop()
        expired: dict[str, float] = {}

        def expire(name: str) -> None:
            assert name not in expired
            expired[name] = loop.time()

        deadlines: Deadlines[str] = Deadlines(loop, expire)
        start = loop.time()
        for name in ("a", "b", "c"):
            bucket = deadlines.watch(name, 0.05)
        bucket.discard("c")
        deadlines.watch("late", 0.2)
        assert len(deadlines) == 3
        await asyncio.sleep(0.15)
        assert set(expired) == {"a", "b"}
        await asyncio.sleep(0.15)
        return {name: at - start for name, at in expired.items()}, TICK

    expired, tick = uvloop.run(main())
    assert set(expired) == {"a", "b", "late"}
    assert all(0.05 - 0.002 <= expired[name] <= 0.05 + tick + 0.1 for name in ("a", "b"))  # uvloop: ms clock
    assert expired["late"] >= 0.2 - 0.002


def test_deadlines_started_within_one_tick_share_one_timer() -> None:
    async def main() -> int:
        loop = asyncio.get_running_loop()
        deadlines: Deadlines[int] = Deadlines(loop, lambda _: None)
        for i in range(200):
            deadlines.watch(i, 1.0)
        return len(deadlines.buckets)

    started = time.monotonic()
    buckets = uvloop.run(main())
    assert buckets <= 1 + int((time.monotonic() - started) / TICK) + 1


class _Owner:
    """The worker's side of a relay, as RelayOwner names it: admits every client and starts its connect."""

    def __init__(self, loop: asyncio.AbstractEventLoop, connector: Any) -> None:
        self.loop = loop
        self.connector = connector
        self.finished_relays: list[int] = []

    def accepted(self, relay: Any) -> None:
        self.connector.start(relay)

    def retry(self, relay: Any, target: Any, exc: BaseException) -> None:
        raise AssertionError("no retry expected")

    def finished(self, relay: Any) -> None:
        self.finished_relays.append(id(relay))


def test_a_client_that_leaves_while_its_first_connect_pends_is_freed_without_the_cycle_collector() -> None:
    """1. A target whose accept queue is full, so a connect to it pends (the kernel drops the SYN). 2. A real
    client connects through a real relay and connector, then resets its connection while that connect pends. 3. With the
    cycle collector off, the relay is freed by reference counting alone: nothing the first attempt left
    behind (the stepped connect, its outcome callback, the upstream side) points back at it."""
    from proxy.config import parse_document
    from workers.connector import Connector
    from workers.relay import ClientSide
    from workers.resolver import Resolver
    from workers.routes import build_table

    target = socket.socket()
    target.bind(("127.0.0.1", 0))
    target.listen(0)
    fillers = []
    try:
        port = target.getsockname()[1]
        for _ in range(2):  # backlog 0 holds one; more only to be sure the queue is full
            filler = socket.socket()
            filler.setblocking(False)
            filler.connect_ex(("127.0.0.1", port))
            fillers.append(filler)
        time.sleep(0.05)
        config = parse_document({"Apps": [{"Name": "a", "Ports": [1], "Targets": [f"127.0.0.1:{port}"],
                                           "ConnectTimeout": 5}]})
        route = build_table(1, config, None).apps["a"]

        async def main() -> tuple[list[int], int]:
            loop = asyncio.get_running_loop()
            owner = _Owner(loop, Connector(0, Resolver(), random.Random(1)))
            server = await loop.create_server(lambda: ClientSide(owner, route), "127.0.0.1", 0)
            client = socket.create_connection(server.sockets[0].getsockname())
            for _ in range(50):  # accepted, its connect started (and pending)
                await asyncio.sleep(0.01)
                if route.targets[0].outstanding:
                    break
            assert route.targets[0].outstanding == 1
            client.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
            client.close()  # a reset: the relay ends at once (an orderly EOF would wait for the upstream)
            for _ in range(100):
                await asyncio.sleep(0.01)
                if owner.finished_relays and not route.targets[0].outstanding:
                    break
            for _ in range(5):
                await asyncio.sleep(0)
            server.close()
            return owner.finished_relays, route.targets[0].outstanding

        gc.collect()
        gc.disable()
        try:
            finished, outstanding = uvloop.run(main())
            alive = [o for o in gc.get_objects() if isinstance(o, ClientSide)]  # relays not yet freed
        finally:
            gc.enable()
    finally:
        for filler in fillers:
            filler.close()
        target.close()
    assert len(finished) == 1
    assert outstanding == 0
    assert alive == []
