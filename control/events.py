"""/events: the status page's server-sent events, streamed from the supervisor's loop.

The HTTP server (control/http.py) reads the request and hands the socket over here, so a stream is exempt
from the 10 s connection lifetime and counts against its own cap (MAX_STREAMS, the excess answered 503). A
viewer gets the whole state once (`event: snapshot`), then one `event: delta` per tick with only what changed
(control/page.py). Each tick's delta is encoded once, whoever watches. Writes never block: a viewer whose
unsent bytes pass MAX_BACKLOG is too slow to follow and is dropped (EventSource reconnects and starts over
from a snapshot). The model ticks once a second whether or not anyone watches, reading only the gauges then,
so "down since" is right for a page opened later.
"""

from __future__ import annotations

import logging
import selectors
import socket
from dataclasses import dataclass, field

import orjson

from control.page import PageModel

log = logging.getLogger("supervisor")

MAX_STREAMS = 16
INTERVAL = 1.0  # seconds between deltas
MAX_BACKLOG = 8 << 20  # unsent bytes per viewer before it is dropped (a 2,000-app snapshot is ~2 MB)
HEAD = (b"HTTP/1.0 200 OK\r\nContent-Type: text/event-stream\r\nCache-Control: no-store\r\n"
        b"X-Accel-Buffering: no\r\n\r\nretry: 2000\n\n")
BUSY = (b"HTTP/1.0 503 Service Unavailable\r\nContent-Type: text/plain\r\nContent-Length: 28\r\n"
        b"Connection: close\r\n\r\ntoo many status page viewers")


def event(name: str, data: object) -> bytes:
    return b"event: " + name.encode() + b"\ndata: " + orjson.dumps(data, option=orjson.OPT_NON_STR_KEYS) + b"\n\n"


@dataclass(eq=False)
class _Viewer:
    sock: socket.socket
    backlog: bytearray = field(default_factory=bytearray)


class EventStream:
    def __init__(self, selector: selectors.BaseSelector, model: PageModel, max_streams: int = MAX_STREAMS,
                 interval: float = INTERVAL) -> None:
        self.selector = selector
        self.model = model
        self.max_streams = max_streams
        self.interval = interval
        self.viewers: set[_Viewer] = set()
        self.rejected = 0
        self.dropped = 0
        self.due: float | None = None
        model.watched = lambda: bool(self.viewers)

    def adopt(self, sock: socket.socket, head_only: bool = False) -> None:
        """A request for /events, read: the socket is ours from now on (non-blocking, unregistered)."""
        if head_only or len(self.viewers) >= self.max_streams:
            if not head_only:
                self.rejected += 1
            try:
                sock.send(HEAD.split(b"\r\n\r\n")[0] + b"\r\n\r\n" if head_only else BUSY)
            except OSError:
                pass  # best effort: a full buffer on a fresh socket means the client is gone anyway
            sock.close()
            return
        viewer = _Viewer(sock, bytearray(HEAD))
        self.viewers.add(viewer)
        viewer.backlog += event("snapshot", self.model.snapshot())
        self.selector.register(sock, selectors.EVENT_READ, lambda: self.on_readable(viewer))
        self.flush(viewer)

    def on_readable(self, viewer: _Viewer) -> None:
        try:
            data = viewer.sock.recv(4096)
        except (BlockingIOError, InterruptedError):
            return
        except OSError:
            data = b""
        if not data:
            self.drop(viewer)  # a viewer never sends after its request: this is the close

    def flush(self, viewer: _Viewer) -> None:
        try:
            sent = viewer.sock.send(viewer.backlog)
        except (BlockingIOError, InterruptedError):
            sent = 0
        except OSError:
            self.drop(viewer)
            return
        del viewer.backlog[:sent]
        events = selectors.EVENT_READ | (selectors.EVENT_WRITE if viewer.backlog else 0)
        self.selector.modify(viewer.sock, events, lambda mask=0: self.on_ready(viewer))

    def on_ready(self, viewer: _Viewer) -> None:
        if viewer.backlog:
            self.flush(viewer)
        if viewer in self.viewers:
            self.on_readable(viewer)

    def broadcast(self, data: bytes) -> None:
        for viewer in list(self.viewers):
            viewer.backlog += data
            if len(viewer.backlog) > MAX_BACKLOG:
                self.dropped += 1
                log.warning("status page: a viewer fell %d bytes behind; dropped", len(viewer.backlog),
                            extra={"event": "events_dropped"})
                self.drop(viewer)
            else:
                self.flush(viewer)

    def drop(self, viewer: _Viewer) -> None:
        if viewer in self.viewers:
            self.viewers.discard(viewer)
            try:
                self.selector.unregister(viewer.sock)
            except (KeyError, ValueError):
                pass
            viewer.sock.close()

    # --- the Deferred side: the supervisor's timers ---------------------------------------------------
    def next_deadline(self) -> float | None:
        return self.due

    def start(self, now: float) -> None:
        self.due = now + self.interval

    def expire(self, now: float) -> None:
        if self.due is None or now < self.due:
            return
        self.due = self.due + self.interval if now < self.due + self.interval else now + self.interval  # no catch-up
        if self.model.tick():
            if self.viewers:
                self.broadcast(event("snapshot", self.model.snapshot()))
        elif self.viewers:
            self.broadcast(event("delta", self.model.delta()))

    def abandon(self) -> None:
        for viewer in self.viewers:
            viewer.sock.close()
        self.viewers.clear()

    def close(self) -> None:
        for viewer in list(self.viewers):
            self.drop(viewer)
