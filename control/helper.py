"""A helper process the supervisor forks for blocking work (the etcd client, ACME orders), and its channel.

The supervisor stays one selector loop with no threads: whatever must block lives in a child that never forks,
talks length-prefixed orjson frames over a socketpair registered in that selector, and is killed and replaced
by its owner when the channel breaks (EOF, a bad frame, or a frame that could only be half sent, which would
desynchronise the stream). The child is reaped by the supervisor's SIGCHLD handling like any other child.
"""

from __future__ import annotations

import contextlib
import logging
import os
import selectors
import signal
import socket
from collections.abc import Callable
from typing import Any

from proxy.framing import FrameDecoder, FramingError, encode

log = logging.getLogger("supervisor")


class HelperProcess:
    def __init__(self, name: str, selector: selectors.BaseSelector,
                 on_message: Callable[[dict[str, Any]], None], on_lost: Callable[[], None]) -> None:
        self.name = name
        self.selector = selector
        self.on_message = on_message
        self.on_lost = on_lost  # the channel broke: the owner decides when to start a new helper
        self.sock: socket.socket | None = None
        self.pid: int | None = None
        self.decoder = FrameDecoder()

    @property
    def running(self) -> bool:
        return self.sock is not None

    def start(self, main: Callable[[socket.socket], int]) -> None:
        """Fork the child, which runs `main(its end of the channel)` and exits with what it returns."""
        ours, theirs = socket.socketpair()
        pid = os.fork()
        if pid == 0:
            code = 1
            try:
                ours.close()
                code = main(theirs)
            except BaseException:
                log.exception("the %s helper failed", self.name, extra={"event": "helper_crashed"})
            finally:
                logging.shutdown()
                os._exit(code)
        theirs.close()
        ours.setblocking(False)
        self.sock, self.pid, self.decoder = ours, pid, FrameDecoder()
        self.selector.register(ours, selectors.EVENT_READ, self.on_readable)

    def on_readable(self) -> None:
        if self.sock is None:
            return
        try:
            data = self.sock.recv(1 << 20)
        except BlockingIOError:
            return
        except OSError:
            data = b""
        try:
            messages = self.decoder.feed(data) if data else None
        except FramingError:
            messages = None
        if messages is None:
            self.lost()
            return
        for message in messages:
            self.on_message(message)

    def send(self, message: dict[str, Any], droppable: bool = False) -> None:
        """Send a whole frame or none. A full channel drops a `droppable` message (the next one says the same);
        anything else that cannot go whole means the helper is lost."""
        if self.sock is None:
            return
        frame = encode(message)
        try:
            sent = self.sock.send(frame)
        except BlockingIOError:
            if droppable:
                return
            sent = 0
        except OSError:
            sent = 0
        if sent < len(frame):
            self.lost()

    def lost(self) -> None:
        """Close our end and kill the child (it is reaped on SIGCHLD), then tell the owner once."""
        if self.sock is None:
            return
        self.close()
        if self.pid is not None:
            with contextlib.suppress(ProcessLookupError):
                os.kill(self.pid, signal.SIGKILL)
            self.pid = None
        self.on_lost()

    def close(self) -> None:
        """Close our end: the child reads EOF and finishes on its own (a clean stop)."""
        if self.sock is not None:
            with contextlib.suppress(KeyError, ValueError):
                self.selector.unregister(self.sock)
            self.sock.close()
            self.sock = None

    def close_in_child(self) -> None:
        """In a freshly forked worker: drop our copy without touching the (shared) selector."""
        if self.sock is not None:
            self.sock.close()
