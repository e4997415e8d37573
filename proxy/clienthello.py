"""Reading a TLS ClientHello from the bytes peeked off a socket: the server name (SNI) and the ALPN protocols.

Pure: bytes in, a `Hello` out. The caller peeks (MSG_PEEK) and calls `read_hello` with everything peeked so
far; the answer is either complete (`Hello.done`), or says how many bytes in total must be there before another
look can make progress (`Hello.wanted`, for SO_RCVLOWAT), or names why the bytes are not a usable ClientHello
(`Hello.error`). The hello may be split across any number of TLS records (RFC 8446 §5.1 allows a handshake
message to span records) and arrive in any number of TCP segments; only handshake records may precede it.
"""

from __future__ import annotations

from dataclasses import dataclass

RECORD_HANDSHAKE = 0x16
HANDSHAKE_CLIENT_HELLO = 0x01
RECORD_HEADER = 5
MAX_RECORD = 16384 + 256  # a plaintext record is at most 2^14 bytes; a little slack for odd clients
MAX_HELLO = 16384  # a ClientHello body larger than this is refused (post-quantum key shares are ~1.8 KiB)
# Bytes peeked in all, record headers included (a hello cut into tiny records costs 5 bytes a record): also the
# most SO_RCVLOWAT is asked to wait for, well under the default receive buffer.
MAX_PEEK = 32768
EXT_SERVER_NAME = 0
EXT_ALPN = 16

NOT_TLS = "not_tls"
MALFORMED = "protocol"
TOO_LARGE = "protocol"


@dataclass(frozen=True, slots=True)
class Hello:
    done: bool = False
    wanted: int = 0  # when not done and no error: total bytes needed before the next look
    error: str | None = None  # NOT_TLS or MALFORMED (a reason label of the handshake failure counter)
    detail: str = ""
    server_name: str | None = None  # lowercased, without a trailing dot
    alpn: tuple[bytes, ...] = ()


def _more(wanted: int) -> Hello:
    if wanted > MAX_PEEK:
        return _fail(TOO_LARGE, f"ClientHello spread over more than {MAX_PEEK} bytes")
    return Hello(wanted=wanted)


def _fail(reason: str, detail: str) -> Hello:
    return Hello(error=reason, detail=detail)


def read_hello(data: bytes) -> Hello:
    """What `data` (the first bytes of a connection) says about its ClientHello."""
    handshake = bytearray()
    offset = 0
    while True:
        if len(data) - offset < RECORD_HEADER:
            # Check what is there of the header, so garbage is refused at its first byte.
            head = data[offset:]
            if head and head[0] != RECORD_HANDSHAKE:
                return _fail(NOT_TLS if offset == 0 else MALFORMED, f"record type {head[0]:#04x}, not handshake")
            if len(head) > 1 and head[1] != 3:
                return _fail(NOT_TLS if offset == 0 else MALFORMED, f"record version {head[1]}.x, not 3.x")
            return _more(offset + RECORD_HEADER)
        kind, major = data[offset], data[offset + 1]
        length = int.from_bytes(data[offset + 3:offset + 5], "big")
        if kind != RECORD_HANDSHAKE or major != 3:
            return _fail(NOT_TLS if offset == 0 else MALFORMED, f"record type {kind:#04x} version {major}.x")
        if length == 0 or length > MAX_RECORD:
            return _fail(MALFORMED, f"record length {length}")
        end = offset + RECORD_HEADER + length
        handshake += data[offset + RECORD_HEADER:end]
        # The message header is judged as soon as it is there, so a huge or wrong hello is refused early.
        if len(handshake) >= 4:
            if handshake[0] != HANDSHAKE_CLIENT_HELLO:
                return _fail(MALFORMED, f"handshake message {handshake[0]}, not a ClientHello")
            size = int.from_bytes(handshake[1:4], "big")
            if size > MAX_HELLO:
                return _fail(TOO_LARGE, f"ClientHello of {size} bytes (the limit is {MAX_HELLO})")
            if len(handshake) >= 4 + size:
                return _parse_body(bytes(handshake[4:4 + size]))
        if len(data) < end:
            return _more(end)
        offset = end


class _Malformed(Exception):
    pass


class _Reader:
    __slots__ = ("data", "pos")

    def __init__(self, data: bytes) -> None:
        self.data = data
        self.pos = 0

    def take(self, n: int) -> bytes:
        if self.pos + n > len(self.data):
            raise _Malformed(f"truncated at byte {self.pos} (wanted {n} more)")
        chunk = self.data[self.pos:self.pos + n]
        self.pos += n
        return chunk

    def number(self, n: int) -> int:
        return int.from_bytes(self.take(n), "big")

    def vector(self, length_bytes: int) -> bytes:
        return self.take(self.number(length_bytes))

    @property
    def left(self) -> int:
        return len(self.data) - self.pos


def _parse_body(body: bytes) -> Hello:
    try:
        reader = _Reader(body)
        reader.take(2 + 32)  # legacy_version, random
        if len(reader.vector(1)) > 32:
            raise _Malformed("session id longer than 32 bytes")
        suites = reader.vector(2)
        if not suites or len(suites) % 2:
            raise _Malformed("cipher suites")
        reader.vector(1)  # compression methods
        name: str | None = None
        alpn: tuple[bytes, ...] = ()
        if reader.left:
            extensions = _Reader(reader.vector(2))
            while extensions.left:
                kind = extensions.number(2)
                payload = extensions.vector(2)
                if kind == EXT_SERVER_NAME:
                    name = _server_name(_Reader(payload))
                elif kind == EXT_ALPN:
                    alpn = _protocols(_Reader(payload))
        return Hello(done=True, server_name=name, alpn=alpn)
    except _Malformed as exc:
        return _fail(MALFORMED, f"ClientHello: {exc}")


def _server_name(reader: _Reader) -> str | None:
    names = _Reader(reader.vector(2))
    while names.left:
        kind = names.number(1)
        value = names.vector(2)
        if kind == 0:  # host_name
            try:
                text = value.decode("ascii")
            except UnicodeDecodeError:
                raise _Malformed("server name is not ASCII") from None
            text = text.lower().rstrip(".")
            if not text or any(c <= " " or c == "\x7f" for c in text):
                raise _Malformed("server name is empty or has control characters")
            return text
    return None


def _protocols(reader: _Reader) -> tuple[bytes, ...]:
    listed = _Reader(reader.vector(2))
    protocols = []
    while listed.left:
        protocol = listed.vector(1)
        if not protocol:
            raise _Malformed("empty ALPN protocol")
        protocols.append(protocol)
    return tuple(protocols)


def wildcard_of(name: str) -> str | None:
    """The wildcard hostname that may cover `name` (one label, RFC 6125 §6.4.3), or None for a single label."""
    _, dot, rest = name.partition(".")
    return f"*.{rest}" if dot and rest else None
