"""One client connection through the proxy: connect, send, half-close, read the echo, classify the outcome.

Timeouts are idle timeouts (no progress for `timeout` seconds), so a 1 GB transfer and a 10-byte one are held
to the same standard. Every failure becomes a `Failure(reason, detail)` with a reason from `stats.REASONS`.
"""

from __future__ import annotations

import asyncio
import contextlib
import hashlib
import socket
import struct
import time

READ_SIZE = 256 * 1024


class Failure(Exception):
    """A connection did not do what an echo through a correct proxy does."""

    def __init__(self, reason: str, detail: str) -> None:
        super().__init__(f"{reason}: {detail}")
        self.reason = reason
        self.detail = detail


Stream = tuple[asyncio.StreamReader, asyncio.StreamWriter]


def _micros_since(start: float) -> int:
    return int((time.perf_counter() - start) * 1_000_000)


async def connect(host: str, port: int, timeout: float) -> tuple[Stream, int]:
    """Open a connection; returns the streams and the connect latency in µs."""
    start = time.perf_counter()
    try:
        reader, writer = await asyncio.wait_for(asyncio.open_connection(host, port, limit=READ_SIZE), timeout)
    except ConnectionRefusedError as exc:
        raise Failure("refused", f"{host}:{port} refused the connection") from exc
    except TimeoutError as exc:
        raise Failure("connect_timeout", f"no connection to {host}:{port} within {timeout:g} s") from exc
    except OSError as exc:
        raise Failure("error", f"connect to {host}:{port}: {exc}") from exc
    sock = writer.get_extra_info("socket")
    if sock is not None:
        sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
    return (reader, writer), _micros_since(start)


async def echo(stream: Stream, payload: bytes, timeout: float, half_close: bool = True) -> tuple[int, int]:
    """Send `payload` and check its echo byte for byte; returns (bytes echoed, first-byte round trip µs).

    With `half_close` the client shuts its sending side down after the payload and then expects the whole
    echo followed by EOF; without it, it reads exactly len(payload) bytes and leaves the connection open.
    """
    reader, writer = stream
    start = time.perf_counter()
    reading = asyncio.ensure_future(_read_echo(reader, payload, timeout, half_close, start))
    try:
        writer.write(payload)
        if half_close:
            writer.write_eof()
        await _drain(writer, timeout)
    except Failure:
        # The reader often knows better why sending stopped (a mismatch, an early EOF).
        if reading.done() and reading.exception() is not None:
            raise reading.exception() from None  # type: ignore[misc]
        reading.cancel()
        raise
    except BaseException:
        reading.cancel()
        raise
    return await reading


async def _read_echo(
    reader: asyncio.StreamReader, payload: bytes, timeout: float, half_close: bool, start: float
) -> tuple[int, int]:
    expected = memoryview(payload)
    pos = 0
    rtt = 0
    while pos < len(payload) or half_close:
        data = await _read(
            reader,
            READ_SIZE if half_close else min(READ_SIZE, len(payload) - pos),
            timeout,
            pos,
            len(payload),
        )
        if not data:
            if pos == 0 and payload:
                raise Failure("closed", f"closed before any of the {len(payload)} bytes was echoed")
            if pos < len(payload):
                raise Failure("short_read", f"EOF after {pos} of {len(payload)} echoed bytes")
            return pos, rtt
        if pos == 0:
            rtt = _micros_since(start)
        if pos + len(data) > len(payload):
            raise Failure(
                "long_read", f"{pos + len(data) - len(payload)} bytes more than the {len(payload)} sent"
            )
        if data != expected[pos : pos + len(data)]:
            offset = pos + next(
                i for i, (a, b) in enumerate(zip(data, expected[pos:], strict=False)) if a != b
            )
            raise Failure("mismatch", f"echo differs at byte {offset} of {len(payload)}")
        pos += len(data)
    return pos, rtt


async def _read(reader: asyncio.StreamReader, n: int, timeout: float, pos: int, total: int) -> bytes:
    try:
        return await asyncio.wait_for(reader.read(n), timeout)
    except TimeoutError as exc:
        raise Failure("timeout", f"no echo for {timeout:g} s after {pos} of {total} bytes") from exc
    except (ConnectionResetError, ConnectionAbortedError, BrokenPipeError) as exc:
        raise Failure("reset", f"connection reset after {pos} of {total} echoed bytes") from exc
    except OSError as exc:
        raise Failure("error", f"read: {exc}") from exc


async def _drain(writer: asyncio.StreamWriter, timeout: float) -> None:
    try:
        await asyncio.wait_for(writer.drain(), timeout)
    except TimeoutError as exc:
        raise Failure("timeout", f"could not send for {timeout:g} s") from exc
    except (ConnectionResetError, ConnectionAbortedError, BrokenPipeError) as exc:
        raise Failure("reset", "connection reset while sending") from exc
    except OSError as exc:
        raise Failure("error", f"write: {exc}") from exc


async def bulk(stream: Stream, prefix: bytes, block: bytes, total: int, timeout: float) -> tuple[int, int]:
    """Send `prefix` then `block` repeated up to `total` bytes, half-close, and compare SHA-256 both ways.

    Returns (bytes echoed, first-byte round trip µs). Hashing instead of comparing keeps memory flat.
    """
    reader, writer = stream
    start = time.perf_counter()
    sent_hash = hashlib.sha256()
    reading = asyncio.ensure_future(_hash_echo(reader, total, timeout, start))
    try:
        remaining = total
        chunk = prefix + block[len(prefix) :]
        while remaining > 0:
            piece = chunk[:remaining]
            sent_hash.update(piece)
            writer.write(piece)
            remaining -= len(piece)
            chunk = block
            await _drain(writer, timeout)
        writer.write_eof()
    except BaseException:
        reading.cancel()
        raise
    received, rtt, echo_hash = await reading
    if received == 0 and total:
        raise Failure("closed", f"closed before any of the {total} bytes was echoed")
    if received != total:
        raise Failure("short_read", f"EOF after {received} of {total} echoed bytes")
    if echo_hash != sent_hash.digest():
        raise Failure("mismatch", f"SHA-256 of the {total} echoed bytes differs from what was sent")
    return received, rtt


async def _hash_echo(
    reader: asyncio.StreamReader, total: int, timeout: float, start: float
) -> tuple[int, int, bytes]:
    h = hashlib.sha256()
    pos = 0
    rtt = 0
    while True:
        data = await _read(reader, READ_SIZE, timeout, pos, total)
        if not data:
            return pos, rtt, h.digest()
        if pos == 0:
            rtt = _micros_since(start)
        h.update(data)
        pos += len(data)
        if pos > total:
            raise Failure("long_read", f"{pos - total} bytes more than the {total} sent")


def reset(writer: asyncio.StreamWriter) -> None:
    """Close with SO_LINGER 0, so the peer sees a RST instead of a FIN."""
    sock = writer.get_extra_info("socket")
    if sock is not None:
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
    writer.transport.abort()


async def close(writer: asyncio.StreamWriter) -> None:
    writer.close()
    # The outcome is already decided; a peer that resets at close changes nothing.
    with contextlib.suppress(OSError, TimeoutError):
        await asyncio.wait_for(writer.wait_closed(), 1.0)
