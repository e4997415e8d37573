"""A tiny HTTP/1.0 server for /metrics, /healthz and /status, living in the supervisor's one wait point.

Non-blocking throughout: a slow or silent scraper costs a registered socket, never a stalled supervisor.
GET and HEAD (the same head, no body); one request per connection; bounded request size and lifetime; at most
`max_connections` at once (the excess is closed as soon as it is accepted, and counted). A path may be answered
later (`Deferred`: /metrics waits for a render child), the others are answered at once by the handler. A
`Stream` path (/events, control/events.py) takes the socket over once the request is read: it leaves this
server's lifetime and cap for the stream's own.
"""

from __future__ import annotations

import functools
import logging
import selectors
import socket
import time
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from typing import Protocol

log = logging.getLogger("supervisor")

Handler = Callable[[str], tuple[int, str, bytes]]  # path -> (status, content type, body)
Reply = Callable[[bytes], None]  # a whole response, given when it is ready

MAX_REQUEST = 8192
CONNECTION_LIFETIME = 10.0
MAX_CONNECTIONS = 64
REASONS = {200: "OK", 400: "Bad Request", 404: "Not Found", 405: "Method Not Allowed", 500: "Internal Server Error",
           503: "Service Unavailable"}


class Stream(Protocol):
    """A path that takes the connection over once its request is read (server-sent events)."""

    def adopt(self, sock: socket.socket, head_only: bool = False) -> None: ...

    def next_deadline(self) -> float | None: ...

    def expire(self, now: float) -> None: ...

    def close(self) -> None: ...

    def abandon(self) -> None: ...


class HttpError(Exception):
    pass


class Deferred(Protocol):
    """A path answered later: `request` calls the reply once the response exists (perhaps at once)."""

    def request(self, reply: Reply) -> None: ...

    def next_deadline(self) -> float | None: ...

    def expire(self, now: float) -> None: ...

    def close(self) -> None: ...

    def abandon(self) -> None: ...


def parse_address(text: str) -> tuple[str, int]:
    host, sep, port = text.rpartition(":")
    if not sep or not port.isdigit() or not 0 < int(port) < 65536:
        raise HttpError(f"--metrics {text!r}: expected HOST:PORT, e.g. 127.0.0.1:9901")
    return host.strip("[]") or "127.0.0.1", int(port)


@dataclass(eq=False)
class _Exchange:
    sock: socket.socket
    deadline: float
    request: bytes = b""
    response: memoryview | None = None
    head_only: bool = False  # a HEAD request: the response's head is sent, not its body


def render(status: int, content_type: str, body: bytes) -> bytes:
    head = (f"HTTP/1.0 {status} {REASONS.get(status, 'Error')}\r\nContent-Type: {content_type}\r\n"
            f"Content-Length: {len(body)}\r\nConnection: close\r\n\r\n")
    return head.encode() + body


def request_method(request: bytes) -> str:
    return request.split(b" ", 1)[0].decode("latin-1")


def request_path(request: bytes) -> str | bytes:
    """Pure: the path a request asks for, or the whole error response when it is not a GET or HEAD we answer."""
    line = request.split(b"\r\n", 1)[0].decode("latin-1")
    parts = line.split()
    if len(parts) != 3 or not parts[2].startswith("HTTP/"):
        return render(400, "text/plain", b"bad request\n")
    if parts[0] not in ("GET", "HEAD"):
        return render(405, "text/plain", b"only GET and HEAD\n")
    return parts[1].split("?", 1)[0]


def head_only(response: bytes) -> bytes:
    """The head of a response (its Content-Length still the body's, as HEAD wants)."""
    end = response.find(b"\r\n\r\n")
    return response if end < 0 else response[:end + 4]


def respond_to(request: bytes, handler: Handler) -> bytes:
    """Pure: request bytes in, response bytes out. A bug in one page costs that request, never the loop."""
    path = request_path(request)
    if isinstance(path, bytes):
        return path
    try:
        response = render(*handler(path))
    except Exception:
        log.exception("http: GET %s failed", path, extra={"event": "http_error"})
        response = render(500, "text/plain", b"internal error: see the supervisor's log\n")
    return head_only(response) if request_method(request) == "HEAD" else response


class HttpServer:
    def __init__(self, address: str, selector: selectors.BaseSelector, handler: Handler,
                 deferred: Mapping[str, Deferred] | None = None, max_connections: int = MAX_CONNECTIONS,
                 streams: Mapping[str, Stream] | None = None) -> None:
        host, port = parse_address(address)
        family = socket.AF_INET6 if ":" in host else socket.AF_INET
        self.listener = socket.socket(family, socket.SOCK_STREAM)
        try:
            self.listener.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
            self.listener.bind((host, port))
            self.listener.listen(64)
        except OSError as exc:
            self.listener.close()
            raise HttpError(f"--metrics {address}: {exc.strerror or exc}") from None
        self.listener.setblocking(False)
        self.selector = selector
        self.handler = handler
        self.deferred = dict(deferred or {})
        self.streams = dict(streams or {})
        self.max_connections = max_connections
        self.rejected = 0  # connections closed at once: max_connections were open
        self.exchanges: set[_Exchange] = set()
        selector.register(self.listener, selectors.EVENT_READ, self.on_accept)

    def on_accept(self) -> None:
        for _ in range(64):
            try:
                sock, _ = self.listener.accept()
            except (BlockingIOError, InterruptedError):
                return
            except OSError:
                return  # EMFILE and friends: try again on the next readiness
            if len(self.exchanges) >= self.max_connections:
                sock.close()  # the cap: what a flood of scrapers costs is bounded
                self.rejected += 1
                continue
            sock.setblocking(False)
            exchange = _Exchange(sock, time.monotonic() + CONNECTION_LIFETIME)
            self.exchanges.add(exchange)
            self.selector.register(sock, selectors.EVENT_READ, lambda e=exchange: self.on_readable(e))

    def on_readable(self, exchange: _Exchange) -> None:
        try:
            chunk = exchange.sock.recv(4096)
        except (BlockingIOError, InterruptedError):
            return
        except OSError:
            chunk = b""
        if not chunk:
            self.finish(exchange)
            return
        exchange.request += chunk
        if b"\r\n\r\n" not in exchange.request and len(exchange.request) < MAX_REQUEST:
            return
        self.selector.unregister(exchange.sock)  # nothing more to read; registered again to write the answer
        path = request_path(exchange.request)
        exchange.head_only = request_method(exchange.request) == "HEAD"
        if isinstance(path, bytes):
            self.respond(exchange, path)
        elif path in self.streams:
            self.exchanges.discard(exchange)  # the stream's now: its own cap, no lifetime
            self.streams[path].adopt(exchange.sock, exchange.head_only)
        elif path in self.deferred:
            self.deferred[path].request(functools.partial(self.respond, exchange))
        else:
            self.respond(exchange, render(*self.handler(path)))

    def respond(self, exchange: _Exchange, response: bytes) -> None:
        if exchange not in self.exchanges:
            return  # gone while its answer was being made (expired, or the client left)
        exchange.response = memoryview(head_only(response) if exchange.head_only else response)
        self.selector.register(exchange.sock, selectors.EVENT_WRITE, lambda e=exchange: self.on_writable(e))
        self.on_writable(exchange)

    def on_writable(self, exchange: _Exchange) -> None:
        assert exchange.response is not None
        try:
            sent = exchange.sock.send(exchange.response)
        except (BlockingIOError, InterruptedError):
            return
        except OSError:
            self.finish(exchange)
            return
        exchange.response = exchange.response[sent:]  # a view: a large body is never copied per send
        if not exchange.response:
            self.finish(exchange)

    def finish(self, exchange: _Exchange) -> None:
        if exchange in self.exchanges:
            self.exchanges.discard(exchange)
            try:
                self.selector.unregister(exchange.sock)
            except (KeyError, ValueError):
                pass  # waiting for a deferred answer: not registered
            exchange.sock.close()

    def timed(self) -> list[Deferred | Stream]:
        return [*self.deferred.values(), *self.streams.values()]

    def expire(self, now: float) -> None:
        for deferred in self.timed():
            deferred.expire(now)
        for exchange in [e for e in self.exchanges if e.deadline <= now]:
            self.finish(exchange)

    def next_deadline(self) -> float | None:
        deadlines = [e.deadline for e in self.exchanges]
        deadlines += [d for deferred in self.timed()
                      if (d := deferred.next_deadline()) is not None]
        return min(deadlines, default=None)

    def abandon(self) -> None:
        """In a forked child: close our copies without touching the (shared) selector."""
        for exchange in self.exchanges:
            exchange.sock.close()
        for deferred in self.timed():
            deferred.abandon()
        self.listener.close()

    def close(self) -> None:
        for exchange in list(self.exchanges):
            self.finish(exchange)
        for deferred in self.timed():
            deferred.close()
        try:
            self.selector.unregister(self.listener)
        except (KeyError, ValueError):
            pass
        self.listener.close()
