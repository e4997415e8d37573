"""The supervisor's end of one worker's channel: frames out through a bounded outbox, frames in, never blocking.

The socket is non-blocking and registered in the supervisor's one selector; while the outbox holds anything the
registration also asks for writability. Descriptors handed over with a frame are duplicated first (a reload may
close the supervisor's copy before the frame leaves) and closed once sent. A worker that lets its outbox
overflow, or sends bytes that are not frames, is not a peer any more: `on_broken` says so once, and the owner
kills it (its sockets stay with the supervisor, so its queue waits for the next worker).
"""

from __future__ import annotations

import os
import selectors
import socket
from collections.abc import Callable
from typing import Any

from proxy.framing import FrameDecoder, FramingError, encode
from proxy.outbox import Outbox
from workers.channel import write_some

MessageHandler = Callable[[dict[str, Any]], None]


class WorkerChannel:
    def __init__(self, sock: socket.socket, selector: selectors.BaseSelector, on_message: MessageHandler,
                 on_broken: Callable[[str], None]) -> None:
        sock.setblocking(False)
        self.sock = sock
        self.selector = selector
        self.on_message = on_message
        self.on_broken = on_broken
        self.decoder = FrameDecoder()
        self.outbox = Outbox()
        self.writing = False  # registered for writability too (the outbox is not empty)
        self.closed = False
        selector.register(sock, selectors.EVENT_READ, self.on_event)

    def send(self, message: dict[str, Any], fds: list[int] | None = None, coalesce: str | None = None) -> bool:
        return self.send_frame(encode(message), fds, coalesce)

    def send_frame(self, frame: bytes, fds: list[int] | None = None, coalesce: str | None = None) -> bool:
        """Queue a frame and write what the socket takes now; False when the worker cannot be reached."""
        if self.closed:
            return False
        owned = tuple(os.dup(fd) for fd in fds or ())
        if not self.outbox.push(frame, owned, coalesce):
            size = self.outbox.size
            for fd in (*owned, *self.outbox.clear()):
                os.close(fd)
            self.on_broken(f"has not read {size:,} queued bytes")
            return False
        return self.flush()

    def flush(self) -> bool:
        """Write what the socket takes; watch for writability while something waits. False when the worker is
        gone (its exit is handled when it is reaped)."""
        reachable = True
        try:
            empty = write_some(self.sock, self.outbox)
        except OSError:
            for fd in self.outbox.clear():
                os.close(fd)
            empty, reachable = True, False
        if empty == self.writing and not self.closed:
            self.writing = not empty
            events = selectors.EVENT_READ | (selectors.EVENT_WRITE if self.writing else 0)
            try:
                self.selector.modify(self.sock, events, self.on_event)
            except (KeyError, ValueError):
                pass  # no longer registered: the worker closed its end
        return reachable

    def on_event(self) -> None:
        """Readable or (while the outbox waits) writable: write what waits, then read what came."""
        if self.closed:
            return
        if self.outbox:
            self.flush()
        try:
            data = self.sock.recv(1 << 20)
        except (BlockingIOError, InterruptedError):
            return
        except OSError:
            data = b""
        if not data:
            self.unregister()  # the worker exited: SIGCHLD does the rest
            return
        try:
            messages = self.decoder.feed(data)
        except FramingError as exc:
            self.unregister()
            self.on_broken(f"sent a bad frame ({exc})")
            return
        for message in messages:
            self.on_message(message)

    def unregister(self) -> None:
        try:
            self.selector.unregister(self.sock)
        except (KeyError, ValueError):
            pass

    def close(self) -> None:
        if self.closed:
            return
        self.closed = True
        self.unregister()
        for fd in self.outbox.clear():
            os.close(fd)
        self.sock.close()

    def close_in_child(self) -> None:
        """In a forked worker: close our copy without touching the (shared) selector."""
        self.sock.close()
