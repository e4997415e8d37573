"""The relay, byte for byte: half-close, integrity, reset propagation, flow control, idle timeout, Nagle.

Each scenario runs the real supervisor against `tester.echo` or against a target of our own (`peers.py`) that
reports what it saw on its side of the proxy.
"""

from __future__ import annotations

import hashlib
import queue
import random
import socket
import statistics
import threading
import time

import psutil

from tests.integration.peers import (
    MB,
    ThreadServer,
    close_with_reset,
    outcome_of_recv,
    recv_exactly,
    roundtrip_concurrently,
)
from tests.support import app, echo_roundtrip, free_ports, read_all, wait_for


def test_half_close_tiny_and_1mb(start_echo, start_skiff) -> None:  # type: ignore[no-untyped-def]
    """1. skiff in front of an echo target. 2. For a 1-byte, a 5-byte and a 1 MB payload: send it, shut down
    the write side, read to EOF. 3. The whole payload comes back, then EOF (the client's FIN did not end the
    return direction early)."""
    port, target = free_ports(2)
    start_echo([target])
    start_skiff([app("echo", [port], [f"127.0.0.1:{target}"])])
    for payload in (b"x", b"hello"):
        assert echo_roundtrip(port, payload) == payload
    big = random.Random(1).randbytes(MB)
    assert roundtrip_concurrently(port, big) == big


def test_half_close_answer_after_client_eof(processes, start_skiff) -> None:  # type: ignore[no-untyped-def]
    """1. A target that reads until EOF and only then answers (with a digest of what it read) and closes.
    2. The client sends 200 kB in pieces and shuts down its write side. 3. The digest arrives after the
    client's FIN, and then EOF: the client→target direction was half-closed, target→client kept flowing."""
    port, target_port = free_ports(2)

    def digest_after_eof(conn: socket.socket) -> None:
        conn.sendall(hashlib.sha256(read_all(conn)).hexdigest().encode())

    target = ThreadServer(target_port, digest_after_eof)
    processes.append(target)
    start_skiff([app("digest", [port], [f"127.0.0.1:{target_port}"])])
    payload = random.Random(2).randbytes(200_000)
    with socket.create_connection(("127.0.0.1", port), timeout=10) as sock:
        for start in range(0, len(payload), 10_000):
            sock.sendall(payload[start:start + 10_000])
        sock.shutdown(socket.SHUT_WR)
        assert read_all(sock) == hashlib.sha256(payload).hexdigest().encode()
    assert not target.errors


def test_half_close_by_the_target_first(processes, start_skiff) -> None:  # type: ignore[no-untyped-def]
    """1. A target that sends a banner, shuts down its write side, then reads what the client sends until EOF.
    2. The client reads banner and EOF, then sends a request and shuts down. 3. The target receives the whole
    request after its own FIN went through the proxy."""
    port, target_port = free_ports(2)
    got: queue.Queue[bytes] = queue.Queue()

    def banner_then_listen(conn: socket.socket) -> None:
        conn.sendall(b"banner")
        conn.shutdown(socket.SHUT_WR)
        got.put(read_all(conn))

    target = ThreadServer(target_port, banner_then_listen)
    processes.append(target)
    start_skiff([app("banner", [port], [f"127.0.0.1:{target_port}"])])
    with socket.create_connection(("127.0.0.1", port), timeout=10) as sock:
        assert read_all(sock) == b"banner"
        sock.sendall(b"request after the target's EOF")
        sock.shutdown(socket.SHUT_WR)
        assert got.get(timeout=10) == b"request after the target's EOF"
        assert read_all(sock) == b""
    assert not target.errors


def test_50mb_both_ways_arrive_intact(start_echo, start_skiff) -> None:  # type: ignore[no-untyped-def]
    """1. skiff in front of an echo target. 2. One connection: a thread sends 50 MB of random bytes while the
    main thread reads the echo concurrently. 3. The sha256 of what came back equals that of what was sent."""
    port, target = free_ports(2)
    start_echo([target])
    start_skiff([app("echo", [port], [f"127.0.0.1:{target}"])], workers=1)
    payload = random.Random(3).randbytes(50 * MB)
    received = roundtrip_concurrently(port, payload, timeout=60)
    assert len(received) == len(payload)
    assert hashlib.sha256(received).digest() == hashlib.sha256(payload).digest()


def test_client_reset_reaches_the_target_as_a_reset(processes, start_skiff) -> None:  # type: ignore[no-untyped-def]
    """1. A target that echoes one message, then records what its next read sees. 2. The client does one
    round trip, then closes with SO_LINGER 0 (an RST). 3. The target sees a reset, not an orderly EOF."""
    port, target_port = free_ports(2)
    seen: queue.Queue[str] = queue.Queue()

    def echo_once_then_observe(conn: socket.socket) -> None:
        conn.sendall(conn.recv(100))
        seen.put(outcome_of_recv(conn))

    target = ThreadServer(target_port, echo_once_then_observe)
    processes.append(target)
    start_skiff([app("observe", [port], [f"127.0.0.1:{target_port}"])])
    sock = socket.create_connection(("127.0.0.1", port), timeout=10)
    sock.sendall(b"hi")
    assert recv_exactly(sock, 2) == b"hi"
    close_with_reset(sock)
    assert seen.get(timeout=10) == "reset"


def test_target_reset_reaches_the_client_as_a_reset(processes, start_skiff) -> None:  # type: ignore[no-untyped-def]
    """1. A target that echoes one message, waits for a second one, then closes with SO_LINGER 0.
    2. The client does one round trip, sends the second message. 3. The client's next read raises
    ConnectionResetError (the proxy passed the RST on instead of turning it into an EOF)."""
    port, target_port = free_ports(2)

    def echo_once_then_reset(conn: socket.socket) -> None:
        conn.sendall(conn.recv(100))
        conn.recv(100)
        close_with_reset(conn)

    target = ThreadServer(target_port, echo_once_then_reset)
    processes.append(target)
    start_skiff([app("resetter", [port], [f"127.0.0.1:{target_port}"])])
    with socket.create_connection(("127.0.0.1", port), timeout=10) as sock:
        sock.sendall(b"hi")
        assert recv_exactly(sock, 2) == b"hi"
        sock.sendall(b"now")
        assert outcome_of_recv(sock) == "reset"


def worker_rss(pids: list[int]) -> int:
    return sum(psutil.Process(pid).memory_info().rss for pid in pids)


def peak_rss_until_stalled(pids: list[int], sent: list[int], peak: int) -> tuple[int, int]:
    """Sample the workers' RSS until `sent[0]` makes no progress for 1 s (at most 15 s): (peak, bytes sent)."""
    last, unchanged_since = -1, time.monotonic()
    deadline = time.monotonic() + 15
    while time.monotonic() < deadline:
        peak = max(peak, worker_rss(pids))
        if sent[0] != last:
            last, unchanged_since = sent[0], time.monotonic()
        elif time.monotonic() - unchanged_since >= 1.0:
            break
        time.sleep(0.05)  # sampling RSS, not waiting for an event
    return peak, sent[0]


def test_slow_reader_keeps_worker_memory_bounded(processes, start_skiff) -> None:  # type: ignore[no-untyped-def]
    """1. A target that writes 300 MB as fast as it can to whoever connects, counting what the kernel took.
    2. A client connects through skiff (-w 1) and reads nothing until the target's sending stalls (no progress
    for 1 s; at most 15 s). 3. The target stalled well short of 300 MB (back-pressure reached it) and the
    worker's RSS grew by less than 30 MB. 4. The client then reads everything: exactly 300 MB, then EOF."""
    total = 300 * MB
    port, target_port = free_ports(2)
    sent = [0]
    chunk = b"\xa5" * MB

    def flood(conn: socket.socket) -> None:
        conn.settimeout(60)
        for _ in range(total // MB):
            conn.sendall(chunk)
            sent[0] += MB

    target = ThreadServer(target_port, flood)
    processes.append(target)
    skiff = start_skiff([app("flood", [port], [f"127.0.0.1:{target_port}"])], workers=1)
    pids = [p.pid for p in skiff.workers()]
    assert len(pids) == 1
    before = worker_rss(pids)
    peak = before
    with socket.create_connection(("127.0.0.1", port), timeout=30) as sock:
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 256 * 1024)
        wait_for(lambda: sent[0] > 0, 10, "the target to start sending")
        peak, stalled_at = peak_rss_until_stalled(pids, sent, peak)
        assert stalled_at < 150 * MB, f"the target sent {stalled_at / MB:.0f} MB to a client that read nothing"
        growth = peak - before
        assert growth < 30 * MB, f"worker RSS grew by {growth / MB:.1f} MB while the client did not read"
        received = 0
        while chunk_read := sock.recv(1 << 18):
            received += len(chunk_read)
    assert received == total
    assert not target.errors


def test_slow_target_keeps_worker_memory_bounded(processes, start_skiff) -> None:  # type: ignore[no-untyped-def]
    """The other direction. 1. A target that reads nothing until told to (an event), then reads to EOF and
    reports the byte count. 2. A client sends 300 MB from a thread as fast as it can through skiff (-w 1).
    3. The client's sending stalls well short of 300 MB (no progress for 1 s; at most 15 s) and the worker's RSS
    grew by less than 30 MB. 4. The target starts reading: it gets exactly 300 MB."""
    total = 300 * MB
    port, target_port = free_ports(2)
    read_now = threading.Event()
    counted: queue.Queue[int] = queue.Queue()

    def slow_sink(conn: socket.socket) -> None:
        conn.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 256 * 1024)
        read_now.wait(30)
        size = 0
        while chunk := conn.recv(1 << 18):
            size += len(chunk)
        counted.put(size)

    target = ThreadServer(target_port, slow_sink)
    processes.append(target)
    skiff = start_skiff([app("sink", [port], [f"127.0.0.1:{target_port}"])], workers=1)
    pids = [p.pid for p in skiff.workers()]
    before = peak = worker_rss(pids)
    sent = [0]
    errors: list[BaseException] = []
    with socket.create_connection(("127.0.0.1", port), timeout=60) as sock:
        chunk = b"\x5a" * MB

        def send() -> None:
            try:
                for _ in range(total // MB):
                    sock.sendall(chunk)
                    sent[0] += MB
                sock.shutdown(socket.SHUT_WR)
            except BaseException as exc:  # reported below
                errors.append(exc)

        sender = threading.Thread(target=send, daemon=True)
        sender.start()
        try:
            peak, stalled_at = peak_rss_until_stalled(pids, sent, peak)
        finally:
            read_now.set()
        assert stalled_at < 150 * MB, f"the client sent {stalled_at / MB:.0f} MB to a target that read nothing"
        growth = peak - before
        assert growth < 30 * MB, f"worker RSS grew by {growth / MB:.1f} MB while the target did not read"
        assert counted.get(timeout=60) == total
        sender.join(10)
    assert not errors, errors
    assert not target.errors


def test_idle_timeout_closes_a_silent_connection_and_only_that_one(start_echo, start_skiff) -> None:  # type: ignore[no-untyped-def]
    """1. Two apps over one echo target: "short" with IdleTimeout 0.5 s, "long" with the default (an hour).
    2. One connection to each; one round trip each; then silence. 3. "short" is closed (EOF) between 0.4 and
    2 s after its last byte. 4. One second later "long" still echoes."""
    short_port, long_port, target = free_ports(3)
    start_echo([target])
    start_skiff([app("short", [short_port], [f"127.0.0.1:{target}"], IdleTimeout=0.5),
                 app("long", [long_port], [f"127.0.0.1:{target}"])])
    with socket.create_connection(("127.0.0.1", short_port), timeout=5) as short, \
            socket.create_connection(("127.0.0.1", long_port), timeout=5) as long:
        for sock in (short, long):
            sock.sendall(b"ping")
            assert recv_exactly(sock, 4) == b"ping"
        quiet_since = time.monotonic()
        assert outcome_of_recv(short) == "eof"
        closed_after = time.monotonic() - quiet_since
        assert 0.4 <= closed_after <= 2.0, closed_after
        long.settimeout(1.0)
        assert outcome_of_recv(long) == "timeout"  # nothing arrives, not even an EOF
        long.settimeout(5)
        long.sendall(b"still here")
        assert recv_exactly(long, 10) == b"still here"


def test_small_writes_are_not_held_back_by_nagle(processes, start_skiff) -> None:  # type: ignore[no-untyped-def]
    """1. A target that waits for a whole 2-byte request, then answers in two 1-byte writes a moment apart
    (the write-write-read pattern that Nagle plus delayed ACKs stalls by ~40 ms per step).
    2. 200 rounds in which the client also writes its request as two 1-byte writes a moment apart.
    3. The median round takes under 20 ms and all 200 under 10 s: neither hop of the proxy holds a small
    segment back waiting for an ACK."""
    port, target_port = free_ports(2)
    rounds = 200

    def answer_in_pieces(conn: socket.socket) -> None:
        conn.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        for _ in range(rounds):
            recv_exactly(conn, 2)
            conn.sendall(b"o")
            time.sleep(0.002)  # shapes the traffic into two segments
            conn.sendall(b"k")

    target = ThreadServer(target_port, answer_in_pieces)
    processes.append(target)
    start_skiff([app("chatty", [port], [f"127.0.0.1:{target_port}"])], workers=1)
    durations = []
    with socket.create_connection(("127.0.0.1", port), timeout=5) as sock:
        sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        started = time.monotonic()
        for _ in range(rounds):
            t0 = time.monotonic()
            sock.sendall(b"p")
            time.sleep(0.002)  # shapes the traffic into two segments
            sock.sendall(b"q")
            assert recv_exactly(sock, 2) == b"ok"
            durations.append(time.monotonic() - t0)
        total = time.monotonic() - started
    median = statistics.median(durations)
    assert median < 0.020, f"median round {median * 1000:.1f} ms: small segments are being delayed"
    assert total < 10, total
    assert not target.errors
