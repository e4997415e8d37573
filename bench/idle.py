"""Both ends of the idle-connection test, each run as its own process by run.py.

    python bench/idle.py serve 127.0.0.1:27002        # accept and hold; close when the client does
    python bench/idle.py hold 127.0.0.1:27202 3000    # open 3000 connections, print "ready N", hold until stdin ends

`serve` prints `listening` once bound. `hold` prints `ready N` with the count it holds and exits (closing all
of them) when its stdin reaches EOF, so the parent ends a holder by closing a pipe rather than by a signal.
"""

from __future__ import annotations

import asyncio
import resource
import socket
import sys

import uvloop

CONNECT_CONCURRENCY = 64  # few enough in flight that no listen backlog on the way overflows
CONNECT_TIMEOUT_S = 10.0


def raise_nofile_limit() -> None:
    _, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    resource.setrlimit(resource.RLIMIT_NOFILE, (hard, hard))


def split_address(address: str) -> tuple[str, int]:
    host, _, port = address.rpartition(":")
    return host, int(port)


class Holder(asyncio.Protocol):
    """Accepts and does nothing; closes when the peer closes."""

    def eof_received(self) -> bool:
        return False


async def serve(address: str) -> None:
    host, port = split_address(address)
    loop = asyncio.get_running_loop()
    server = await loop.create_server(Holder, host, port, backlog=4096, reuse_address=True)
    print("listening", flush=True)
    async with server:
        await server.serve_forever()


async def open_one(host: str, port: int, gate: asyncio.Semaphore) -> socket.socket:
    async with gate:
        sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
        sock.setblocking(False)
        try:
            await asyncio.wait_for(asyncio.get_running_loop().sock_connect(sock, (host, port)), CONNECT_TIMEOUT_S)
        except BaseException:
            sock.close()
            raise
        return sock


async def hold(address: str, count: int) -> None:
    host, port = split_address(address)
    gate = asyncio.Semaphore(CONNECT_CONCURRENCY)
    results = await asyncio.gather(*(open_one(host, port, gate) for _ in range(count)), return_exceptions=True)
    socks = [r for r in results if isinstance(r, socket.socket)]
    failures = [r for r in results if not isinstance(r, socket.socket)]
    if failures:
        print(f"{len(failures)} connects failed, first: {failures[0]!r}", file=sys.stderr, flush=True)
    print(f"ready {len(socks)}", flush=True)
    await asyncio.get_running_loop().run_in_executor(None, sys.stdin.read)
    for s in socks:
        s.close()


def main(argv: list[str]) -> int:
    raise_nofile_limit()
    if len(argv) == 2 and argv[0] == "serve":
        uvloop.run(serve(argv[1]))
        return 0
    if len(argv) == 3 and argv[0] == "hold":
        uvloop.run(hold(argv[1], int(argv[2])))
        return 0
    print(__doc__, file=sys.stderr)
    return 2


if __name__ == "__main__":
    raise SystemExit(main(sys.argv[1:]))
