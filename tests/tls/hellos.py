"""Real ClientHellos (made by Python's ssl through memory BIOs) and ways to cut them up: into more TLS records,
into more TCP segments, and a client that completes the handshake after sending the hello its own way."""

from __future__ import annotations

import socket
import ssl


def client_object(context: ssl.SSLContext, name: str | None) -> tuple[ssl.SSLObject, ssl.MemoryBIO, ssl.MemoryBIO]:
    incoming, outgoing = ssl.MemoryBIO(), ssl.MemoryBIO()
    obj = context.wrap_bio(incoming, outgoing, server_hostname=name)
    try:
        obj.do_handshake()
    except ssl.SSLWantReadError:
        pass
    return obj, incoming, outgoing


def make_hello(name: str | None, alpn: list[str] | None = None) -> bytes:
    context = ssl.create_default_context()
    if alpn:
        context.set_alpn_protocols(alpn)
    _, _, outgoing = client_object(context, name)
    return outgoing.read()


def records(hello: bytes) -> list[bytes]:
    """The handshake payload of each record in `hello`."""
    payloads, offset = [], 0
    while offset < len(hello):
        length = int.from_bytes(hello[offset + 3:offset + 5], "big")
        payloads.append(hello[offset + 5:offset + 5 + length])
        offset += 5 + length
    return payloads


def reframe(hello: bytes, sizes: list[int]) -> bytes:
    """The same handshake bytes in records of the given sizes (cycled): RFC 8446 lets a message span records."""
    payload = b"".join(records(hello))
    out, offset, i = bytearray(), 0, 0
    while offset < len(payload):
        size = max(1, sizes[i % len(sizes)])
        chunk = payload[offset:offset + size]
        out += b"\x16\x03\x01" + len(chunk).to_bytes(2, "big") + chunk
        offset += size
        i += 1
    return bytes(out)


def handshake_fragmented(port: int, context: ssl.SSLContext, name: str, record_size: int, segment: int,
                         payload: bytes = b"ping") -> bytes:
    """Send the hello in records of `record_size` bytes and TCP segments of `segment` bytes (Nagle off, one
    send each), then finish the handshake and an echo over the same socket. Returns the echo."""
    obj, incoming, outgoing = client_object(context, name)
    wire = reframe(outgoing.read(), [record_size])
    with socket.create_connection(("127.0.0.1", port), timeout=10) as sock:
        sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        for start in range(0, len(wire), segment):
            sock.sendall(wire[start:start + segment])
        while True:
            try:
                obj.do_handshake()
                break
            except ssl.SSLWantReadError:
                if data := outgoing.read():
                    sock.sendall(data)
                chunk = sock.recv(65536)
                if not chunk:
                    raise ConnectionError("closed during the handshake") from None
                incoming.write(chunk)
        obj.write(payload)
        sock.sendall(outgoing.read())
        answer = b""
        while len(answer) < len(payload):
            try:
                answer += obj.read(65536)
            except ssl.SSLWantReadError:
                if data := outgoing.read():
                    sock.sendall(data)  # e.g. nothing; TLS 1.3 tickets are only read
                chunk = sock.recv(65536)
                if not chunk:
                    break
                incoming.write(chunk)
        return answer
