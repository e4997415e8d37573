"""Supervisor <-> worker framing: a 4-byte big-endian length, then one orjson object.

Pure: bytes in, messages out. File descriptors travel beside the bytes (SCM_RIGHTS); a message that carries
some says how many in its "fds" field, and the receiver takes that many from the front of its fd queue.
"""

from __future__ import annotations

import struct
from typing import Any

import orjson

HEADER = struct.Struct(">I")
MAX_FRAME = 64 * 1024 * 1024


class FramingError(Exception):
    """The peer sent bytes that are not a frame: a bug or a broken peer, never the operator's mistake."""


def encode(message: dict[str, Any]) -> bytes:
    body = orjson.dumps(message)
    if len(body) > MAX_FRAME:
        raise FramingError(f"frame of {len(body)} bytes is over the {MAX_FRAME}-byte limit")
    return HEADER.pack(len(body)) + body


class FrameDecoder:
    """Accumulates bytes and yields every complete message, in order."""

    def __init__(self) -> None:
        self._buffer = bytearray()

    def feed(self, data: bytes) -> list[dict[str, Any]]:
        self._buffer += data
        messages = []
        while len(self._buffer) >= HEADER.size:
            (length,) = HEADER.unpack_from(self._buffer)
            if length > MAX_FRAME:
                raise FramingError(f"frame header announces {length} bytes, over the {MAX_FRAME}-byte limit")
            end = HEADER.size + length
            if len(self._buffer) < end:
                break
            try:
                message = orjson.loads(memoryview(self._buffer)[HEADER.size:end])
            except orjson.JSONDecodeError as exc:
                raise FramingError(f"frame is not JSON: {exc}") from None
            del self._buffer[:end]
            if not isinstance(message, dict):
                raise FramingError("frame is not a JSON object")
            messages.append(message)
        return messages

    @property
    def pending(self) -> int:
        return len(self._buffer)
