"""The channel outbox: order, coalescing, the limit, descriptors sent once; and writing it to a real socket that
its peer does not read (it never blocks)."""

from __future__ import annotations

import os
import socket

from proxy.framing import FrameDecoder, encode
from proxy.outbox import Outbox
from workers.channel import write_some


def _drain(box: Outbox) -> bytes:
    out = b""
    while (head := box.head()) is not None:
        data, _ = head
        step = max(1, len(data) // 2)
        out += bytes(data[:step])
        box.sent(step)
    return out


def test_frames_leave_in_order_and_partially() -> None:
    box = Outbox()
    assert box.push(b"abc") and box.push(b"defg")
    assert box.size == 7
    assert _drain(box) == b"abcdefg"
    assert not box and box.size == 0


def test_coalesced_frames_do_not_queue_behind_themselves() -> None:
    box = Outbox()
    assert box.push(b"ping1", coalesce="ping")
    assert box.push(b"ping2", coalesce="ping")  # skipped: one ping is already waiting
    assert box.push(b"snap")
    assert _drain(box) == b"ping1snap"
    assert box.push(b"ping3", coalesce="ping")  # the first one went: a new one may queue
    assert _drain(box) == b"ping3"


def test_over_the_limit_is_refused_not_queued() -> None:
    box = Outbox(limit=10)
    assert box.push(b"12345678")
    assert not box.push(b"abc")
    assert box.size == 8


def test_descriptors_go_with_the_first_byte_once() -> None:
    box = Outbox()
    box.push(b"hello", fds=(7, 8))
    _, fds = box.head()  # type: ignore[misc]
    assert fds == (7, 8)
    assert box.sent(2) == (7, 8)
    assert box.head() == (memoryview(b"hello")[2:], ())  # type: ignore[comparison-overlap]
    assert box.sent(3) == ()
    box.push(b"x", fds=(9,))
    assert box.clear() == [9]


def test_writing_to_a_peer_that_does_not_read_never_blocks() -> None:
    """1. A real socketpair; our end is non-blocking; the peer reads nothing. 2. 4 MiB of frames: write_some
    returns False once the socket is full, without blocking. 3. The peer reads everything: every frame arrives
    whole and in order, and a passed descriptor arrives as a working copy."""
    ours, peer = socket.socketpair()
    ours.setblocking(False)
    box = Outbox()
    frames = [encode({"t": "snapshot", "n": i, "pad": "x" * 65536}) for i in range(64)]
    r, w = os.pipe()
    try:
        box.push(encode({"t": "sockets"}), fds=(os.dup(w),))
        for frame in frames:
            assert box.push(frame)
        assert write_some(ours, box) is False
        decoder, received, fds = FrameDecoder(), [], []
        while len(received) < 65:
            data, got, _flags, _addr = socket.recv_fds(peer, 1 << 20, 4)
            fds += got
            received += decoder.feed(data)
            write_some(ours, box)
        assert [m["t"] for m in received] == ["sockets"] + ["snapshot"] * 64
        assert [m.get("n") for m in received[1:]] == list(range(64))
        assert len(fds) == 1
        os.write(fds[0], b"!")
        assert os.read(r, 1) == b"!"
        os.close(fds[0])
        assert not box
    finally:
        for fd in (r, w):
            os.close(fd)
        ours.close()
        peer.close()
