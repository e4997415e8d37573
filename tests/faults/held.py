"""Held client connections through the proxy: opened once, asked to echo again and again, checked each time."""

from __future__ import annotations

import socket


class Held:
    """One client connection kept open; `echo` proves it still carries bytes both ways."""

    def __init__(self, port: int, timeout: float = 5.0) -> None:
        self.sock = socket.create_connection(("127.0.0.1", port), timeout=timeout)
        self.rounds = 0

    def echo(self) -> None:
        payload = f"round {self.rounds}\n".encode()
        self.sock.sendall(payload)
        got = b""
        while len(got) < len(payload):
            chunk = self.sock.recv(len(payload) - len(got))
            if not chunk:
                raise ConnectionError(f"closed after {self.rounds} rounds")
            got += chunk
        assert got == payload
        self.rounds += 1

    def finish(self) -> bytes:
        """Half-close and read to EOF: b'' when the proxy closed in order (a reset raises)."""
        self.sock.shutdown(socket.SHUT_WR)
        rest = b""
        while chunk := self.sock.recv(4096):
            rest += chunk
        self.sock.close()
        return rest

    def close(self) -> None:
        self.sock.close()


def hold(port: int, count: int) -> list[Held]:
    held = [Held(port) for _ in range(count)]
    for h in held:
        h.echo()
    return held
