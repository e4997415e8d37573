"""Small asyncio relays the tester's tests run it against: one correct, several broken on purpose.

`Relay` reads the same config file the tester reads, listens on every port, relays each connection to one of
its app's targets (round-robin, trying the next target when a connect fails) and follows rewrites of the file.
A `fault` makes it wrong in exactly one way:

- corrupt: flips one byte of the reply stream at offset CORRUPT_AT;
- cross_app: sends every connection on the first app's ports to the next app's targets;
- drop_after_eof: when the client half-closes, closes both sides at once, dropping the reply still in flight;
- no_failover: gives up (closes the client) when the chosen target refuses;
- sticky: always picks the app's first target.

Run it alone with `python -m tests.tester.relays CONFIG [FAULT]`.
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import sys
import threading
from dataclasses import dataclass, field
from pathlib import Path

from tester.config import App, read_config, split_host_port

CORRUPT_AT = 100
FAULTS = ("corrupt", "cross_app", "drop_after_eof", "no_failover", "sticky")


@dataclass
class Relay:
    config: Path
    fault: str | None = None
    host: str = "127.0.0.1"
    servers: dict[int, asyncio.AbstractServer] = field(default_factory=dict)
    routes: dict[int, list[str]] = field(default_factory=dict)
    _turn: dict[int, int] = field(default_factory=dict)
    _tasks: set[asyncio.Task[None]] = field(default_factory=set)
    _seen: tuple[int, int] | None = None

    async def start(self) -> None:
        await self.apply(read_config(self.config))

    async def apply(self, apps: list[App]) -> None:
        """Open new ports first, then swap routes, then close removed ports (connections in flight stay)."""
        routes = {port: list(app.targets) for app in apps for port in app.ports}
        if self.fault == "cross_app" and len(apps) > 1:
            for port in apps[0].ports:
                routes[port] = list(apps[1].targets)
        for port in routes.keys() - self.servers.keys():
            self.servers[port] = await asyncio.start_server(
                lambda r, w, p=port: self.handle(p, r, w), self.host, port, reuse_address=True
            )
        self.routes = routes
        for port in self.servers.keys() - routes.keys():
            self.servers.pop(port).close()

    async def watch(self) -> None:
        """Follow the config file. A test relay may poll; the real proxy uses inotify."""
        while True:
            await asyncio.sleep(0.05)
            try:
                st = os.stat(self.config)
                seen = (st.st_ino, st.st_mtime_ns)
                if seen != self._seen:
                    if self._seen is not None:
                        await self.apply(read_config(self.config))
                    self._seen = seen
            except (OSError, ValueError) as exc:
                print(f"relay: keeping the old config: {exc}", file=sys.stderr)

    async def handle(self, port: int, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        # asyncio holds connection tasks weakly: without this set the garbage collector could destroy a relay
        # mid-transfer (seen as "Task was destroyed but it is pending" and a client EOF).
        task = asyncio.current_task()
        assert task is not None
        self._tasks.add(task)  # type: ignore[arg-type]
        try:
            await self.relay(port, reader, writer)
        finally:
            self._tasks.discard(task)  # type: ignore[arg-type]

    async def relay(self, port: int, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        targets = self.routes.get(port, [])
        upstream = None
        turn = self._turn.get(port, 0)
        self._turn[port] = turn + 1
        # Each target at most once, starting from this connection's turn.
        order = (
            [targets[0]]
            if self.fault == "sticky"
            else targets[turn % len(targets) :] + targets[: turn % len(targets)]
        )
        # The tester's clients speak first: keep their first bytes until a target answers, so a target whose
        # listener closed with this connection still queued (a reset before any answer) is replaced by the next
        # one, as skiff does for apps with "RetryOnReset".
        first = await reader.read(65536)
        answer = b""
        for attempt, target in enumerate(order):
            try:
                host, tport = split_host_port(target)
                upstream = await asyncio.wait_for(asyncio.open_connection(host, tport), 2.0)
                if first:
                    upstream[1].write(first)
                    answer = await upstream[0].read(65536)
                    if not answer:
                        raise ConnectionResetError("closed before answering")
                break
            except (OSError, TimeoutError, ValueError) as exc:
                print(f"relay: {target}: {exc!r}", file=sys.stderr)
                if upstream is not None:
                    upstream[1].close()
                    upstream = None
                if self.fault == "no_failover" or attempt == len(order) - 1:
                    break
        if upstream is None:
            writer.close()
            return
        up_reader, up_writer = upstream
        if not first:
            up_writer.write_eof()
        elif answer:
            writer.write(self.corrupted(answer, 0))
        client_done = asyncio.Event()
        await asyncio.gather(
            self.pipe(reader, up_writer, corrupt=False, done=client_done),
            self.pipe(
                up_reader,
                writer,
                corrupt=self.fault == "corrupt",
                done=None,
                offset=len(answer),
                cut=client_done if self.fault == "drop_after_eof" else None,
            ),
            return_exceptions=True,
        )
        for w in (writer, up_writer):
            w.close()

    def corrupted(self, data: bytes, offset: int) -> bytes:
        """`data` at `offset` of the reply stream, with the byte at CORRUPT_AT flipped (fault "corrupt")."""
        if self.fault != "corrupt" or not offset <= CORRUPT_AT < offset + len(data):
            return data
        i = CORRUPT_AT - offset
        return data[:i] + bytes([data[i] ^ 0xFF]) + data[i + 1 :]

    async def pipe(
        self,
        reader: asyncio.StreamReader,
        writer: asyncio.StreamWriter,
        corrupt: bool,
        done: asyncio.Event | None,
        cut: asyncio.Event | None = None,
        offset: int = 0,
    ) -> None:
        try:
            while True:
                read = asyncio.ensure_future(reader.read(65536))
                if cut is not None:
                    waiter = asyncio.ensure_future(cut.wait())
                    await asyncio.wait({read, waiter}, return_when=asyncio.FIRST_COMPLETED)
                    waiter.cancel()
                    if cut.is_set():
                        # The bug under test: the reply still in flight is dropped, the client gets a FIN.
                        read.cancel()
                        writer.close()
                        return
                data = await read
                if not data:
                    if writer.can_write_eof():
                        writer.write_eof()
                    return
                if corrupt:
                    data = self.corrupted(data, offset)
                offset += len(data)
                writer.write(data)
                await writer.drain()
        except (ConnectionError, OSError):
            # Either side went away: the peer's pipe notices through its own read; close both.
            writer.transport.abort()
        finally:
            if done is not None:
                done.set()

    def close(self) -> None:
        for server in self.servers.values():
            server.close()
        self.servers.clear()


class RelayThread:
    """A relay on its own event loop in a background thread, for tests that run the tester in-process."""

    def __init__(self, config: Path, fault: str | None = None) -> None:
        self.relay = Relay(config, fault)
        self._loop = asyncio.new_event_loop()
        self._ready = threading.Event()
        self._error: BaseException | None = None
        self._thread = threading.Thread(target=self._run, daemon=True)

    def __enter__(self) -> Relay:
        self._thread.start()
        self._ready.wait(10)
        if self._error is not None:
            raise self._error
        return self.relay

    def __exit__(self, *exc: object) -> None:
        self._loop.call_soon_threadsafe(self._loop.stop)
        self._thread.join(10)

    def _run(self) -> None:
        asyncio.set_event_loop(self._loop)
        try:
            self._loop.run_until_complete(self.relay.start())
        except BaseException as exc:
            self._error = exc
            self._ready.set()
            return
        watcher = self._loop.create_task(self.relay.watch())
        self._ready.set()
        self._loop.run_forever()
        watcher.cancel()
        self.relay.close()
        with contextlib.suppress(BaseException):
            self._loop.run_until_complete(asyncio.sleep(0))
        self._loop.close()


async def _serve(config: Path, fault: str | None) -> None:
    relay = Relay(config, fault)
    await relay.start()
    print(f"relay: listening on {sorted(relay.servers)} fault={fault}", flush=True)
    await relay.watch()


if __name__ == "__main__":
    asyncio.run(_serve(Path(sys.argv[1]), sys.argv[2] if len(sys.argv) > 2 else None))
