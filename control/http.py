"""A tiny HTTP/1.0 server for /metrics, /healthz and /status, living in the supervisor's one wait point.

Non-blocking throughout: a slow or silent scraper costs a registered socket, never a stalled supervisor.
Only GET; one request per connection; bounded request size and lifetime.
"""

from __future__ import annotations

import logging
import selectors
import socket
import time
from collections.abc import Callable
from dataclasses import dataclass

log = logging.getLogger("supervisor")

Handler = Callable[[str], tuple[int, str, bytes]]  # path -> (status, content type, body)

MAX_REQUEST = 8192
CONNECTION_LIFETIME = 10.0
REASONS = {200: "OK", 400: "Bad Request", 404: "Not Found", 405: "Method Not Allowed", 500: "Internal Server Error",
           503: "Service Unavailable"}


class HttpError(Exception):
    pass


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
    response: bytes = b""


def render(status: int, content_type: str, body: bytes) -> bytes:
    head = (f"HTTP/1.0 {status} {REASONS.get(status, 'Error')}\r\nContent-Type: {content_type}\r\n"
            f"Content-Length: {len(body)}\r\nConnection: close\r\n\r\n")
    return head.encode() + body


def respond_to(request: bytes, handler: Handler) -> bytes:
    """Pure: request bytes in, response bytes out."""
    line = request.split(b"\r\n", 1)[0].decode("latin-1")
    parts = line.split()
    if len(parts) != 3 or not parts[2].startswith("HTTP/"):
        return render(400, "text/plain", b"bad request\n")
    if parts[0] != "GET":
        return render(405, "text/plain", b"only GET\n")
    path = parts[1].split("?", 1)[0]
    try:
        return render(*handler(path))
    except Exception:  # a bug in one page costs that request, never the supervisor's loop
        log.exception("http: GET %s failed", path, extra={"event": "http_error"})
        return render(500, "text/plain", b"internal error: see the supervisor's log\n")


class HttpServer:
    def __init__(self, address: str, selector: selectors.BaseSelector, handler: Handler) -> None:
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
        exchange.response = respond_to(exchange.request, self.handler)
        self.selector.modify(exchange.sock, selectors.EVENT_WRITE, lambda e=exchange: self.on_writable(e))
        self.on_writable(exchange)

    def on_writable(self, exchange: _Exchange) -> None:
        try:
            sent = exchange.sock.send(exchange.response)
        except (BlockingIOError, InterruptedError):
            return
        except OSError:
            self.finish(exchange)
            return
        exchange.response = exchange.response[sent:]
        if not exchange.response:
            self.finish(exchange)

    def finish(self, exchange: _Exchange) -> None:
        if exchange in self.exchanges:
            self.exchanges.discard(exchange)
            try:
                self.selector.unregister(exchange.sock)
            except (KeyError, ValueError):
                pass
            exchange.sock.close()

    def expire(self, now: float) -> None:
        for exchange in [e for e in self.exchanges if e.deadline <= now]:
            self.finish(exchange)

    def next_deadline(self) -> float | None:
        return min((e.deadline for e in self.exchanges), default=None)

    def abandon(self) -> None:
        """In a forked child: close our copies without touching the (shared) selector."""
        for exchange in self.exchanges:
            exchange.sock.close()
        self.listener.close()

    def close(self) -> None:
        for exchange in list(self.exchanges):
            self.finish(exchange)
        try:
            self.selector.unregister(self.listener)
        except (KeyError, ValueError):
            pass
        self.listener.close()
