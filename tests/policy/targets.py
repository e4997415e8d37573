"""In-test targets for the policy tests: they count what reaches them, parse PROXY headers, hold, or reset.

Plain threads and blocking sockets on 127.0.0.1; `stop()` closes everything, even mid-connection.
"""

from __future__ import annotations

import socket
import struct
import threading
from dataclasses import dataclass

V2_SIG = b"\r\n\r\n\x00\r\nQUIT\n"


@dataclass
class ProxyHeader:
    version: str
    source: tuple[str, int] | None
    destination: tuple[str, int] | None


def read_exactly(sock: socket.socket, n: int) -> bytes:
    data = b""
    while len(data) < n:
        chunk = sock.recv(n - len(data))
        if not chunk:
            raise ConnectionError(f"EOF after {len(data)} of {n} bytes")
        data += chunk
    return data


def parse_proxy_header(sock: socket.socket) -> ProxyHeader:
    """Read one PROXY header (v1 text or v2 binary) off `sock`, independently of the code under test."""
    first = read_exactly(sock, 1)
    if first == b"P":
        line = first
        while not line.endswith(b"\r\n"):
            line += read_exactly(sock, 1)
            if len(line) > 107:
                raise ValueError(f"v1 header too long: {line!r}")
        parts = line[:-2].decode("ascii").split(" ")
        if parts[:2] == ["PROXY", "UNKNOWN"]:
            return ProxyHeader("v1", None, None)
        assert parts[0] == "PROXY" and parts[1] in ("TCP4", "TCP6") and len(parts) == 6, line
        return ProxyHeader("v1", (parts[2], int(parts[4])), (parts[3], int(parts[5])))
    rest = read_exactly(sock, 15)
    fixed = first + rest
    assert fixed[:12] == V2_SIG, fixed
    command, family, length = fixed[12], fixed[13], struct.unpack("!H", fixed[14:16])[0]
    body = read_exactly(sock, length)
    assert command >> 4 == 2, "not version 2"
    if command & 0xF == 0:
        return ProxyHeader("v2", None, None)
    assert family == 0x11, f"family {family:#x} (only TCP over IPv4 here)"
    src = socket.inet_ntoa(body[0:4])
    dst = socket.inet_ntoa(body[4:8])
    sport, dport = struct.unpack("!HH", body[8:12])
    return ProxyHeader("v2", (src, sport), (dst, dport))


class Target:
    """A target on 127.0.0.1:port. mode: "echo" (echo to EOF, then close), "hold" (echo, never close after EOF),
    "reset" (read what arrives for a moment, then RST). With `proxy`, it parses a PROXY header first."""

    def __init__(self, port: int, mode: str = "echo", proxy: bool = False) -> None:
        self.port = port
        self.mode = mode
        self.proxy = proxy
        self.accepted = 0
        self.headers: list[ProxyHeader] = []
        self.received: list[bytes] = []  # in "reset" mode: what arrived before the reset
        self.errors: list[str] = []
        self.lock = threading.Lock()
        self.conns: list[socket.socket] = []
        self.stopping = threading.Event()
        self.listener: socket.socket | None = None
        self.thread: threading.Thread | None = None
        self.start()

    def start(self) -> None:
        sock = socket.socket()
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        sock.bind(("127.0.0.1", self.port))
        sock.listen(512)
        sock.settimeout(0.2)
        self.listener = sock
        self.stopping.clear()
        self.thread = threading.Thread(target=self._accept, args=(sock,), daemon=True)
        self.thread.start()

    def close_listener(self) -> None:
        """Stop listening (connects are refused) but keep serving open connections."""
        self.stopping.set()
        if self.thread is not None:
            self.thread.join(5)
        if self.listener is not None:
            self.listener.close()
            self.listener = None

    def _accept(self, sock: socket.socket) -> None:
        while not self.stopping.is_set():
            try:
                conn, _ = sock.accept()
            except TimeoutError:
                continue
            except OSError:
                return
            with self.lock:
                self.accepted += 1
                self.conns.append(conn)
            threading.Thread(target=self._serve, args=(conn,), daemon=True).start()

    def _serve(self, conn: socket.socket) -> None:
        try:
            conn.settimeout(30)  # inside the try: stop() may have closed conn before this thread ran
            if self.proxy:
                header = parse_proxy_header(conn)
                with self.lock:
                    self.headers.append(header)
            if self.mode == "reset":
                conn.settimeout(2.0)  # the client's bytes come at once; the margin is for a loaded machine
                try:
                    data = conn.recv(65536)
                except TimeoutError:
                    data = b""
                with self.lock:
                    self.received.append(data)
                conn.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
                conn.close()
                return
            while True:
                data = conn.recv(65536)
                if not data:
                    break
                conn.sendall(data)
            if self.mode == "echo":
                conn.close()
        except Exception as exc:  # recorded for the test to assert on
            with self.lock:
                self.errors.append(repr(exc))
            conn.close()

    def stop(self) -> None:
        self.close_listener()
        with self.lock:
            conns, self.conns = self.conns, []
        for conn in conns:
            try:
                conn.close()
            except OSError:
                pass
