"""The floor without transports: accept, connect and relay on plain non-blocking sockets with the loop's
reader/writer callbacks (uvloop), to measure whether moving skiff off uvloop's transports could lower the floor.

Same contract as floor_relay.py (skiff's command line and config, each app's first target, an EOF ends both
sides once pending bytes are out, backpressure both ways). What it skips per connection that uvloop's
transports do: getsockname/getpeername on both sockets, TCP_NODELAY on the accepted one (inherited from the
listener), a transport and a protocol object per socket, the connect coroutine, its future and task. It accepts
until EAGAIN on each wake-up and reads the client only once the upstream is connected (no early buffer).

    python bench/floor_raw.py -c CONFIG.json -w N
"""

from __future__ import annotations

import argparse
import asyncio
import errno
import json
import os
import signal
import socket

import uvloop

READ_CHUNK = 256 * 1024
ACCEPTS_PER_WAKEUP = 64


class End:
    """One socket of a relayed pair; `out` holds what the socket would not take yet."""

    __slots__ = ("closing", "out", "peer", "sock")

    def __init__(self, sock: socket.socket) -> None:
        self.sock = sock
        self.peer: End = self
        self.out = b""
        self.closing = False


def close_pair(loop: asyncio.AbstractEventLoop, end: End) -> None:
    for e in (end, end.peer):
        if e.sock.fileno() >= 0:
            loop.remove_reader(e.sock)
            loop.remove_writer(e.sock)
            e.sock.close()


def on_read(loop: asyncio.AbstractEventLoop, end: End) -> None:
    peer = end.peer
    try:
        data = end.sock.recv(READ_CHUNK)
    except BlockingIOError:
        return
    except OSError:
        close_pair(loop, end)
        return
    if not data:  # EOF: the other side ends once its pending bytes are out
        if peer.out:
            peer.closing = True
            loop.remove_reader(end.sock)
        else:
            close_pair(loop, end)
        return
    try:
        sent = peer.sock.send(data)
    except BlockingIOError:
        sent = 0
    except OSError:
        close_pair(loop, end)
        return
    if sent < len(data):
        peer.out = data[sent:]
        loop.remove_reader(end.sock)  # backpressure: read this side again once the peer drained
        loop.add_writer(peer.sock, on_writable, loop, peer)


def on_writable(loop: asyncio.AbstractEventLoop, end: End) -> None:
    try:
        sent = end.sock.send(end.out)
    except BlockingIOError:
        return
    except OSError:
        close_pair(loop, end)
        return
    end.out = end.out[sent:]
    if end.out:
        return
    loop.remove_writer(end.sock)
    if end.closing:
        close_pair(loop, end)
    else:
        loop.add_reader(end.peer.sock, on_read, loop, end.peer)


def on_connected(loop: asyncio.AbstractEventLoop, upstream: End) -> None:
    loop.remove_writer(upstream.sock)
    if upstream.sock.getsockopt(socket.SOL_SOCKET, socket.SO_ERROR):
        close_pair(loop, upstream)
        return
    loop.add_reader(upstream.sock, on_read, loop, upstream)
    loop.add_reader(upstream.peer.sock, on_read, loop, upstream.peer)


def on_acceptable(loop: asyncio.AbstractEventLoop, listener: socket.socket, target: tuple[str, int]) -> None:
    for _ in range(ACCEPTS_PER_WAKEUP):
        try:
            fd, _ = listener._accept()  # type: ignore[attr-defined]
        except BlockingIOError:
            return
        except OSError:
            return
        client = End(socket.socket(socket.AF_INET, socket.SOCK_STREAM, 0, fd))
        client.sock.setblocking(False)
        upstream = End(socket.socket(socket.AF_INET, socket.SOCK_STREAM | socket.SOCK_NONBLOCK))
        upstream.sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        client.peer, upstream.peer = upstream, client
        err = upstream.sock.connect_ex(target)
        if err not in (0, errno.EINPROGRESS):
            close_pair(loop, client)
            continue
        loop.add_writer(upstream.sock, on_connected, loop, upstream)


async def work(listeners: list[tuple[socket.socket, tuple[str, int]]]) -> None:
    loop = asyncio.get_running_loop()
    for sock, target in listeners:
        loop.add_reader(sock, on_acceptable, loop, sock, target)
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
            sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)  # accepted sockets inherit it
            sock.setblocking(False)
            listeners.append((sock, (host, int(port))))
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
