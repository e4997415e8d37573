"""Targets of our own for the integration tests: plain sockets in threads that report what they saw.

`tester.echo` answers; these servers observe (a reset, an EOF, a byte count) or misbehave on purpose (reset,
flood, answer in pieces). Every blocking call has a timeout and every loop a bound.
"""

from __future__ import annotations

import contextlib
import socket
import struct
import threading
from collections.abc import Callable

from tests.support import read_all

LINGER_RESET = struct.pack("ii", 1, 0)
CONN_TIMEOUT = 15.0
MB = 1 << 20


def close_with_reset(sock: socket.socket) -> None:
    """Close so that the peer gets an RST, not a FIN."""
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, LINGER_RESET)
    sock.close()


def recv_exactly(sock: socket.socket, size: int) -> bytes:
    data = bytearray()
    while len(data) < size:
        chunk = sock.recv(size - len(data))
        if not chunk:
            raise EOFError(f"EOF after {len(data)} of {size} bytes")
        data += chunk
    return bytes(data)


def outcome_of_recv(sock: socket.socket) -> str:
    """What the next read on `sock` sees: "reset", "eof", "data" or "timeout"."""
    try:
        return "data" if sock.recv(1 << 16) else "eof"
    except ConnectionResetError:
        return "reset"
    except TimeoutError:
        return "timeout"


class ThreadServer:
    """Listens on 127.0.0.1:`port`; each accepted connection runs `handler(conn)` in its own thread."""

    def __init__(self, port: int, handler: Callable[[socket.socket], None], max_connections: int = 10_000) -> None:
        self.port = port
        self.handler = handler
        self.max_connections = max_connections
        self.accepted = 0
        self.errors: list[BaseException] = []
        self._stop = threading.Event()
        self._threads: list[threading.Thread] = []
        self._conns: list[socket.socket] = []
        self._lock = threading.Lock()
        self.sock = socket.create_server(("127.0.0.1", port), backlog=256)
        self.sock.settimeout(0.1)
        self._acceptor = threading.Thread(target=self._accept_loop, name=f"server:{port}", daemon=True)
        self._acceptor.start()

    def _accept_loop(self) -> None:
        while not self._stop.is_set() and self.accepted < self.max_connections:
            try:
                conn, _ = self.sock.accept()
            except TimeoutError:
                continue
            except OSError:
                return
            conn.settimeout(CONN_TIMEOUT)
            with self._lock:
                self.accepted += 1
                self._conns.append(conn)
            thread = threading.Thread(target=self._run, args=(conn,), daemon=True)
            self._threads.append(thread)
            thread.start()

    def _run(self, conn: socket.socket) -> None:
        try:
            self.handler(conn)
        except BaseException as exc:  # reported to the test through self.errors
            self.errors.append(exc)
        finally:
            with contextlib.suppress(OSError):
                conn.close()

    def stop(self) -> None:
        self._stop.set()
        with contextlib.suppress(OSError):
            self.sock.close()
        self._acceptor.join(2)
        for conn in self._conns:  # Unblock handlers still reading or writing.
            with contextlib.suppress(OSError):
                conn.shutdown(socket.SHUT_RDWR)
        for thread in self._threads:
            thread.join(CONN_TIMEOUT + 1)


def roundtrip_concurrently(port: int, payload: bytes, timeout: float = 30.0) -> bytes:
    """Send `payload` from one thread, then shutdown(SHUT_WR), while this thread reads to EOF."""
    with socket.create_connection(("127.0.0.1", port), timeout=timeout) as sock:
        errors: list[BaseException] = []

        def send() -> None:
            try:
                view = memoryview(payload)
                for start in range(0, len(view), MB):
                    sock.sendall(view[start:start + MB])
                sock.shutdown(socket.SHUT_WR)
            except BaseException as exc:  # reported below
                errors.append(exc)

        sender = threading.Thread(target=send, daemon=True)
        sender.start()
        received = read_all(sock)
        sender.join(timeout)
        assert not errors, errors
        return received
