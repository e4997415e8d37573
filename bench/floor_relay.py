"""The floor: the least a uvloop Protocol relay does per connection, as a row beside skiff in the benchmarks.

No balancing, limits, metrics, reload, timeouts or half-close: each app's first target, an EOF closes the
other side once its buffered bytes are out, backpressure both ways. Whatever skiff costs above this row is
skiff's own; what this row costs is uvloop's and the interpreter's. Takes skiff's command line and config:

    python bench/floor_relay.py -c CONFIG.json -w N
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import signal
import socket
from typing import Any

import uvloop


class Side(asyncio.Protocol):
    """One end of a relayed connection: writes what it reads to its peer."""

    __slots__ = ("early", "early_eof", "peer", "task", "transport")

    def __init__(self) -> None:
        self.transport: Any = None
        self.peer: Side | None = None
        self.early: list[bytes] = []  # read before the upstream exists (uvloop reads right after accept)
        self.early_eof = False
        self.task: asyncio.Task[None] | None = None  # the loop holds tasks weakly

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self.transport = transport

    def attach(self, peer: Side) -> None:
        self.peer = peer
        if peer.transport.is_closing():
            self.transport.close()
            return
        if self.early:
            peer.transport.writelines(self.early)
            self.early.clear()
        if self.early_eof:
            peer.transport.close()

    def data_received(self, data: bytes) -> None:
        if self.peer is None:
            self.early.append(data)
        else:
            self.peer.transport.write(data)

    def eof_received(self) -> bool:
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


async def connect(client: Side, host: str, port: int) -> None:
    try:
        _, upstream = await asyncio.get_running_loop().create_connection(Side, host, port)
    except OSError:
        client.transport.close()
        return
    client.task = None
    upstream.attach(client)
    client.attach(upstream)


def accepted(host: str, port: int) -> Side:
    client = Side()
    client.task = asyncio.get_running_loop().create_task(connect(client, host, port))
    return client


async def work(listeners: list[tuple[socket.socket, str, int]]) -> None:
    loop = asyncio.get_running_loop()
    for sock, host, port in listeners:
        await loop.create_server(lambda h=host, p=port: accepted(h, p), sock=sock, backlog=4096)  # type: ignore[misc]
    await asyncio.Event().wait()


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("-c", "--config", required=True)
    parser.add_argument("-w", "--workers", type=int, default=1)
    args = parser.parse_args()
    with open(args.config, "rb") as f:
        config = json.load(f)
    listeners = []
    for app in config["Apps"]:
        host, _, port = app["Targets"][0].rpartition(":")
        for listen_port in app["Ports"]:
            sock = socket.create_server(("127.0.0.1", listen_port), backlog=4096, reuse_port=True)
            sock.setblocking(False)
            listeners.append((sock, host, int(port)))
    children = []
    for _ in range(args.workers):
        pid = os.fork()
        if pid == 0:
            signal.signal(signal.SIGINT, signal.SIG_DFL)
            signal.signal(signal.SIGTERM, signal.SIG_DFL)
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
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
