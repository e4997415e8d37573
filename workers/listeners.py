"""A worker's listeners: serving a port through uvloop, and draining its queue when the port goes away."""

from __future__ import annotations

import asyncio
import socket
from collections.abc import Callable
from dataclasses import dataclass
from typing import Protocol

# The accept queue length for every listening socket. The supervisor listens with it and the worker repeats it,
# since uvloop calls listen() again on a socket it is handed.
BACKLOG = 4096
# A drain stops after this many connections even if the queue still yields more (it never should: the socket
# is closed in every other process first).
DRAIN_LIMIT = 65536


class Server(Protocol):
    """What serves a port: uvloop's server, or a TLS port's accept loop (workers/tls.py)."""

    def close(self) -> None: ...


@dataclass(slots=True, eq=False)
class Listener:
    port: int
    sock: socket.socket  # this process's descriptor; uvloop serves a duplicate
    server: Server | None = None


async def serve(listener: Listener, factory: Callable[[], asyncio.Protocol]) -> None:
    loop = asyncio.get_running_loop()
    listener.server = await loop.create_server(factory, sock=listener.sock.dup(), backlog=BACKLOG)


def drain(listener: Listener, factory: Callable[[], asyncio.Protocol]) -> list[asyncio.Task[object]]:
    """Stop serving, accept what the kernel already queued (so it is served, not reset), then close.

    Returns the tasks that hand the queued connections to `factory`'s protocols.
    """
    loop = asyncio.get_running_loop()
    tasks: list[asyncio.Task[object]] = []
    if listener.server is not None:
        listener.server.close()
        listener.server = None
    while len(tasks) < DRAIN_LIMIT:
        try:
            conn, _ = listener.sock.accept()
        except (BlockingIOError, InterruptedError):
            break
        except OSError:
            break  # e.g. EMFILE: the rest of the queue is reset when the socket closes.
        conn.setblocking(False)
        tasks.append(loop.create_task(loop.connect_accepted_socket(factory, conn)))
    listener.sock.close()
    return tasks
