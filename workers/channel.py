"""The supervisor <-> worker channel's I/O: writing an outbox to a non-blocking socket (both ends share it), and
the worker's end of the channel on its event loop.

Neither end ever blocks on the other: the supervisor's selector and a worker's event loop call `write_some`
when the socket is writable, and it writes until the socket is full or the outbox is empty.
"""

from __future__ import annotations

import asyncio
import collections
import logging
import os
import socket
from collections.abc import Callable
from typing import Any

from proxy.framing import FrameDecoder, FramingError, encode
from proxy.logs import log_event
from proxy.outbox import Outbox

log = logging.getLogger("worker")

EXIT_CHANNEL_BROKEN = 4


def write_some(sock: socket.socket, outbox: Outbox) -> bool:
    """Write queued frames until the socket would block; True when the outbox is empty.

    Raises OSError when the peer is gone (EPIPE, ECONNRESET): the caller decides what that means.
    """
    while True:
        head = outbox.head()
        if head is None:
            return True
        data, fds = head
        try:
            sent = socket.send_fds(sock, [data], list(fds)) if fds else sock.send(data)
        except (BlockingIOError, InterruptedError):
            return False
        for fd in outbox.sent(sent):
            os.close(fd)


class SupervisorChannel:
    """A worker's end of its channel, on the worker's event loop: frames in (with passed descriptors), frames
    out through a bounded outbox. Pings are answered here, as they are read, never behind a snapshot being
    applied: a ping asks whether the loop turns. Every other message goes to `on_message`, in order."""

    def __init__(self, loop: asyncio.AbstractEventLoop, sock: socket.socket, slot: int,
                 on_message: Callable[[dict[str, Any]], None], on_lost: Callable[[], None]) -> None:
        sock.setblocking(False)
        self.loop = loop
        self.sock = sock
        self.slot = slot
        self.on_message = on_message
        self.on_lost = on_lost
        self.decoder = FrameDecoder()
        self.fds: collections.deque[int] = collections.deque()  # passed descriptors, in the order they came
        self.outbox = Outbox()
        self.writing = False  # the loop watches the socket for writability (the outbox is not empty)
        self.broken = False

    def start(self) -> None:
        self.loop.add_reader(self.sock.fileno(), self.on_readable)

    def send(self, message: dict[str, Any], coalesce: str | None = None) -> None:
        """Queue a message for the supervisor and write what the socket takes now: never blocks the loop."""
        if self.broken:
            return
        if not self.outbox.push(encode(message), coalesce=coalesce):
            self.lost(f"the supervisor has not read {self.outbox.size:,} queued bytes")
            return
        self.flush()

    def flush(self) -> None:
        try:
            empty = write_some(self.sock, self.outbox)
        except OSError as exc:
            self.lost(f"cannot write to the supervisor ({exc.strerror or exc})")
            return
        if empty and self.writing:
            self.loop.remove_writer(self.sock.fileno())
            self.writing = False
        elif not empty and not self.writing:
            self.loop.add_writer(self.sock.fileno(), self.flush)
            self.writing = True

    def lost(self, why: str) -> None:
        """The supervisor is gone (or stuck past saving): tell the worker once, which drains (never forces)."""
        if self.broken:
            return
        self.broken = True
        self.loop.remove_reader(self.sock.fileno())
        if self.writing:
            self.loop.remove_writer(self.sock.fileno())
            self.writing = False
        self.outbox.clear()
        log_event(log, logging.WARNING, "supervisor_gone", f"{why}; draining", worker=self.slot)
        self.on_lost()

    def on_readable(self) -> None:
        try:
            data, fds, _flags, _addr = socket.recv_fds(self.sock, 1 << 20, 253, socket.MSG_DONTWAIT)
        except (BlockingIOError, InterruptedError):
            return
        except OSError:
            data, fds = b"", []
        self.fds.extend(fds)
        if not data:
            self.lost("supervisor channel closed")
            return
        try:
            messages = self.decoder.feed(data)
        except FramingError as exc:
            log_event(log, logging.ERROR, "channel_error", f"bad frame from supervisor: {exc}", worker=self.slot)
            os._exit(EXIT_CHANNEL_BROKEN)
        for message in messages:
            if message.get("t") == "ping":
                self.send({"t": "pong", "n": message.get("n", 0)}, coalesce="pong")
            else:
                self.on_message(message)
