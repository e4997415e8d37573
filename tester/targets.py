"""Echo targets the tester runs itself (`--spawn-targets`), and who served which connection.

Every client payload starts with a unique token (`TOKEN_LEN` bytes). The echo target keeps the first bytes a
connection sent, so once a client has its echo back the pool can say which target address served it. A
target can be stopped mid-run (its listening socket closed) to test failover.
"""

from __future__ import annotations

import asyncio
import errno
from collections import Counter

from tester.config import App, is_local, split_host_port
from tester.echo import EchoProtocol, start_echo

TOKEN_LEN = 16


class TargetBusy(OSError):
    """A target address of the config could not be served by the tester: one line with a hint."""

    def __init__(self, address: str, exc: OSError) -> None:
        hint = ""
        if exc.errno == errno.EADDRINUSE:
            hint = ("; something already serves it: `make run`'s demo targets (or another tester)? stop them, "
                    "or run without --spawn-targets to test against the targets that run")
        super().__init__(exc.errno, f"cannot serve target {address}: {exc.strerror or exc}{hint}")


class TargetPool:
    """The echo servers of one run, keyed by the target string exactly as the config spells it."""

    def __init__(self) -> None:
        self.servers: dict[str, asyncio.AbstractServer] = {}
        self.started: list[str] = []  # every target this run served, kept after close for the report
        self.accepted: Counter[str] = Counter()
        self.open_connections = 0
        self._idle = asyncio.Event()
        self._idle.set()
        self._unindexed: list[EchoProtocol] = []
        self._by_token: dict[bytes, str] = {}

    @staticmethod
    def local_targets(apps: list[App]) -> list[str]:
        """Every distinct loopback target of the config, in config order."""
        seen: dict[str, None] = {}
        for app in apps:
            for target in app.targets:
                if is_local(split_host_port(target)[0]):
                    seen.setdefault(target, None)
        return list(seen)

    async def start(self, addresses: list[str]) -> None:
        for address in addresses:
            if address in self.servers:
                continue
            try:
                (server,) = await start_echo([address], self._on_connection, self._on_close)
            except OSError as exc:
                raise TargetBusy(address, exc) from None
            self.servers[address] = server
            self.started.append(address)

    def stop(self, address: str) -> None:
        """Close the listening socket: new connections are refused, connections in flight carry on."""
        server = self.servers.get(address)
        if server is not None:
            server.close()

    def running(self, address: str) -> bool:
        server = self.servers.get(address)
        return server is not None and server.is_serving()

    def served_by(self, token: bytes) -> str | None:
        """The target that received `token` first on a connection, or None if no spawned target did."""
        self._index()
        return self._by_token.pop(token, None)

    async def wait_idle(self, timeout: float) -> bool:
        """Wait until no connection is open towards any spawned target; False on timeout."""
        try:
            async with asyncio.timeout(timeout):
                await self._idle.wait()
        except TimeoutError:
            return False
        return True

    async def close(self) -> None:
        # No wait_closed: in 3.11 it also waits for open connections, which are the proxy's to close.
        for server in self.servers.values():
            server.close()
        self.servers.clear()

    def _on_connection(self, address: str, protocol: EchoProtocol) -> None:
        self.accepted[address] += 1
        self.open_connections += 1
        self._idle.clear()
        self._unindexed.append(protocol)

    def _on_close(self, protocol: EchoProtocol) -> None:
        self.open_connections -= 1
        if self.open_connections == 0:
            self._idle.set()

    def _index(self) -> None:
        # Indexing lazily keeps the hook cheap; a connection whose token has not arrived yet stays pending
        # until it has, or forever forgotten once it closed without sending one.
        pending = []
        for protocol in self._unindexed:
            if len(protocol.received) >= TOKEN_LEN:
                self._by_token[bytes(protocol.received[:TOKEN_LEN])] = protocol.address
            elif not protocol.closed:
                pending.append(protocol)
        self._unindexed = pending
