"""A STAND-IN for skiff, used only to validate the benchmark harness before skiff runs. It is not skiff.

It takes skiff's command line (`-c CONFIG.json -w N`) and config format, and relays each connection to an
app's targets round-robin with uvloop Protocols in N forked workers sharing the listening sockets. No
half-close, no reload, no health checks, no graceful drain: SIGTERM/SIGINT stop everything at once.

    python bench/run.py --quick --skiff-cmd "$PWD/.venv/bin/python bench/standin_proxy.py"
"""

from __future__ import annotations

import argparse
import asyncio
import itertools
import json
import os
import signal
import socket
import sys
from collections.abc import Iterator
from typing import Any

import uvloop


class Pipe(asyncio.Protocol):
    """One side of a relayed connection; writes what it reads to its peer, with backpressure both ways."""

    def __init__(self) -> None:
        self.transport: Any = None
        self.peer: Pipe | None = None
        self.early: list[bytes] = []  # bytes read before the upstream connection exists
        self.early_eof = False
        self.connecting: asyncio.Task[None] | None = None  # the loop holds tasks weakly: keep it alive here

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self.transport = transport

    def attach(self, peer: Pipe) -> None:
        self.peer = peer
        if peer.transport.is_closing():  # the client left while we were connecting upstream
            self.transport.close()
            return
        for chunk in self.early:
            peer.transport.write(chunk)
        self.early.clear()
        if self.early_eof:
            peer.transport.close()

    def data_received(self, data: bytes) -> None:
        if self.peer is None:
            self.early.append(data)
        else:
            self.peer.transport.write(data)

    def eof_received(self) -> bool:
        # An EOF closes the other side (after its buffered bytes) instead of half-closing it: with write_eof()
        # here this stand-in aborted with "double free or corruption" under `wrk -H 'Connection: close'`
        # (uvloop 0.23), and wrk and iperf3 need no half-close.
        if self.peer is None:
            self.early_eof = True
        else:
            self.peer.transport.close()
        return False

    def connection_lost(self, exc: Exception | None) -> None:
        if self.peer is not None:
            self.peer.transport.close()

    def pause_writing(self) -> None:
        if self.peer is not None:
            self.peer.transport.pause_reading()

    def resume_writing(self) -> None:
        if self.peer is not None:
            self.peer.transport.resume_reading()


def accept(targets: Iterator[tuple[str, int]]) -> Pipe:
    client = Pipe()

    async def connect() -> None:
        host, port = next(targets)
        try:
            _, upstream = await asyncio.get_running_loop().create_connection(Pipe, host, port)
        except OSError as e:
            print(f"standin_proxy: connect {host}:{port}: {e}", file=sys.stderr, flush=True)
            client.transport.close()
            return
        upstream.attach(client)
        client.attach(upstream)

    client.connecting = asyncio.get_running_loop().create_task(connect())
    return client


def listen(config: dict[str, Any]) -> list[tuple[socket.socket, list[tuple[str, int]]]]:
    listeners = []
    for app in config["Apps"]:
        targets = [(t.rpartition(":")[0], int(t.rpartition(":")[2])) for t in app["Targets"]]
        for port in app["Ports"]:
            sock = socket.create_server(("127.0.0.1", port), backlog=4096)
            sock.setblocking(False)
            listeners.append((sock, targets))
    return listeners


async def work(listeners: list[tuple[socket.socket, list[tuple[str, int]]]]) -> None:
    loop = asyncio.get_running_loop()
    for sock, targets in listeners:
        cycle = itertools.cycle(targets)
        # backlog again: create_server re-listens on a passed socket, with 100 unless told otherwise.
        await loop.create_server(lambda cycle=cycle: accept(cycle), sock=sock, backlog=4096)  # type: ignore[misc]
    await asyncio.Event().wait()


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("-c", "--config", required=True)
    parser.add_argument("-w", "--workers", type=int, default=1)
    args = parser.parse_args()
    with open(args.config, "rb") as f:
        listeners = listen(json.load(f))
    children = []
    for _ in range(args.workers):
        pid = os.fork()
        if pid == 0:
            signal.signal(signal.SIGINT, signal.SIG_DFL)
            uvloop.run(work(listeners))
            os._exit(0)
        children.append(pid)

    def stop(signum: int, _frame: object) -> None:
        for child in children:
            os.kill(child, signal.SIGTERM)

    signal.signal(signal.SIGTERM, stop)
    signal.signal(signal.SIGINT, stop)
    for child in children:
        os.waitpid(child, 0)
    print("standin_proxy: stopped", file=sys.stderr)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
