"""An echo target: every byte a client sends comes back, half-close included.

Used by `make run` (the demo's local backends), by the test suite and by the tester. Each listening address
gets its own server; `on_connection` lets an in-process user learn which address served a connection.

    python -m tester.echo 127.0.0.1:15001 127.0.0.1:15002
    python -m tester.echo --config config.json     # every local target of a skiff config
"""

from __future__ import annotations

import argparse
import asyncio
import signal
import sys
from collections.abc import Callable
from typing import cast

import orjson
import uvloop

ConnectionHook = Callable[[str, "EchoProtocol"], None]
CloseHook = Callable[["EchoProtocol"], None]


class EchoProtocol(asyncio.Protocol):
    """Writes back what it reads; stops reading while the client is not reading (bounded memory)."""

    def __init__(
        self, address: str, on_connection: ConnectionHook | None, on_close: CloseHook | None = None
    ) -> None:
        self.address = address
        self.received = bytearray()
        self.keep_bytes = on_connection is not None
        self.closed = False
        self._on_connection = on_connection
        self._on_close = on_close
        self._transport: asyncio.Transport | None = None

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        # uvloop sets TCP_NODELAY itself. Never ask a uvloop transport for its "socket": with uvloop 0.23 the
        # pseudo-socket it returns corrupts the heap under load ("double free or corruption").
        self._transport = cast(asyncio.Transport, transport)
        if self._on_connection is not None:
            self._on_connection(self.address, self)

    def data_received(self, data: bytes) -> None:
        if self.keep_bytes and len(self.received) < 4096:
            self.received += data[: 4096 - len(self.received)]
        assert self._transport is not None
        self._transport.write(data)

    def eof_received(self) -> bool:
        # Half-close: finish sending what is buffered, then shut our side down too. Close as well (close also
        # waits for the buffer): nothing ever closes a half-closed transport for us, so each one leaked.
        assert self._transport is not None
        self._transport.write_eof()
        self._transport.close()
        return True

    def connection_lost(self, exc: Exception | None) -> None:
        self.closed = True
        if self._on_close is not None:
            self._on_close(self)

    def pause_writing(self) -> None:
        assert self._transport is not None
        self._transport.pause_reading()

    def resume_writing(self) -> None:
        assert self._transport is not None
        self._transport.resume_reading()


def parse_address(text: str) -> tuple[str, int]:
    host, sep, port = text.rpartition(":")
    if not sep or not port.isdigit():
        raise ValueError(f"{text!r} is not host:port")
    return host.strip("[]") or "127.0.0.1", int(port)


async def start_echo(
    addresses: list[str], on_connection: ConnectionHook | None = None, on_close: CloseHook | None = None
) -> list[asyncio.AbstractServer]:
    """Start one echo server per address on the running loop and return them.

    `on_close` lets the tester count connections the proxy left open towards its targets.
    """
    loop = asyncio.get_running_loop()
    servers: list[asyncio.AbstractServer] = []
    for address in addresses:
        host, port = parse_address(address)
        servers.append(
            await loop.create_server(
                lambda a=address: EchoProtocol(a, on_connection, on_close),  # type: ignore[misc]
                host,
                port,
                reuse_address=True,
                backlog=1024,
            )
        )
    return servers


async def serve(addresses: list[str]) -> None:
    servers = await start_echo(addresses)
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for signum in (signal.SIGINT, signal.SIGTERM):
        loop.add_signal_handler(signum, stop.set)
    print(f"echo: listening on {', '.join(addresses)}", flush=True)
    await stop.wait()
    for server in servers:
        server.close()


LOCAL_HOSTS = ("127.", "localhost", "::1", "[::1]")


def local_targets(config_path: str) -> list[str]:
    """Every target of a skiff config that lives on this machine (what the demo must provide)."""
    with open(config_path, "rb") as f:
        document = orjson.loads(f.read())
    return [
        target
        for app in document.get("Apps", [])
        for target in app.get("Targets", [])
        if isinstance(target, str) and target.startswith(LOCAL_HOSTS)
    ]


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m tester.echo", description=__doc__.splitlines()[0])
    parser.add_argument("addresses", nargs="*", metavar="HOST:PORT")
    parser.add_argument("--config", help="also listen on every local target of this skiff config")
    args = parser.parse_args(argv)
    addresses = list(args.addresses)
    try:
        if args.config:
            addresses += local_targets(args.config)
        for address in addresses:
            parse_address(address)
    except (OSError, ValueError) as exc:
        parser.exit(2, f"echo: {exc}\n")
    if not addresses:
        parser.exit(2, "echo: no addresses to listen on\n")
    args.addresses = addresses
    try:
        uvloop.run(serve(args.addresses))
    except OSError as exc:
        print(f"echo: {exc}", file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
