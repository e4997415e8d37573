"""TLS clients and a TLS echo target for the tests (threads, blocking sockets, real `ssl`)."""

from __future__ import annotations

import socket
import ssl
import threading
from pathlib import Path

from tests.support import read_all


class TlsEcho:
    """A passthrough app's target: it holds its own certificate, terminates TLS and echoes, prefixed with the
    server name it saw (so a test knows the hello reached it untouched)."""

    def __init__(self, port: int, cert: Path, key: Path) -> None:
        self.context = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
        self.context.load_cert_chain(str(cert), str(key))
        self.names: list[str | None] = []
        self.context.sni_callback = lambda sock, name, ctx: self.names.append(name)  # type: ignore[func-returns-value]
        self.sock = socket.create_server(("127.0.0.1", port))
        self.thread = threading.Thread(target=self.serve, daemon=True)
        self.thread.start()

    def serve(self) -> None:
        while True:
            try:
                conn, _ = self.sock.accept()
            except OSError:
                return
            threading.Thread(target=self.echo, args=(conn,), daemon=True).start()

    def echo(self, conn: socket.socket) -> None:
        try:
            with self.context.wrap_socket(conn, server_side=True) as tls:
                tls.settimeout(10)
                data = tls.recv(65536)
                tls.sendall(b"passthrough:" + data)
        except (OSError, ssl.SSLError):
            conn.close()

    def stop(self) -> None:
        self.sock.close()


def tls_roundtrip(port: int, name: str | None, context: ssl.SSLContext, payload: bytes = b"ping",
                  until: bytes | None = None) -> tuple[bytes, bytes]:
    """Connect, handshake with `name` as SNI, send, read until the answer ends with `until` (default: the
    payload) or the peer closes: (the peer certificate's DER, the answer)."""
    until = payload if until is None else until
    with socket.create_connection(("127.0.0.1", port), timeout=10) as raw, \
            context.wrap_socket(raw, server_hostname=name) as tls:
        der = tls.getpeercert(binary_form=True) or b""
        tls.sendall(payload)
        answer = bytearray()
        while not answer.endswith(until):
            chunk = tls.recv(65536)
            if not chunk:
                break
            answer += chunk
        return der, bytes(answer)


__all__ = ["TlsEcho", "read_all", "tls_roundtrip"]
