"""Failover: a client only fails when every target of its app failed for its connection.

Refused, blackholed (iptables DROP on lo) and unresolvable targets are skipped for a good one; a target marked
down is tried again after its backoff; with no target left the client is closed at once, not left hanging.
"""

from __future__ import annotations

import os
import random
import shutil
import socket
import statistics
import subprocess
import time
from collections.abc import Iterator

import pytest

from tests.integration.peers import MB, ThreadServer, close_with_reset, outcome_of_recv, roundtrip_concurrently
from tests.support import app, echo_roundtrip, free_ports, read_all, wait_for


def timed_roundtrips(port: int, count: int) -> list[float]:
    durations = []
    for i in range(count):
        payload = f"conn {i}".encode()
        started = time.monotonic()
        assert echo_roundtrip(port, payload, timeout=5) == payload, f"connection {i} failed"
        durations.append(time.monotonic() - started)
    return durations


def test_refused_target_is_skipped(start_echo, start_skiff) -> None:  # type: ignore[no-untyped-def]
    """1. An app with a target nothing listens on and a good echo target. 2. 100 connections, one after another.
    3. Every one echoes. 4. The log says the refused target is down."""
    port, dead, good = free_ports(3)
    start_echo([good])
    skiff = start_skiff([app("web", [port], [f"127.0.0.1:{dead}", f"127.0.0.1:{good}"])])
    timed_roundtrips(port, 100)
    skiff.wait_log(rf"target 127\.0\.0\.1:{dead} of app web is down \(refused")


@pytest.fixture
def blackhole() -> Iterator[int]:
    """A port whose SYNs are dropped on lo: connects to it time out. The rule is removed even if the test fails."""
    if shutil.which("iptables") is None:
        pytest.skip("iptables is not installed, so a blackholed target cannot be made")
    if os.geteuid() != 0:
        pytest.skip("adding an iptables rule needs root")
    (port,) = free_ports(1)
    rule = ["INPUT", "-i", "lo", "-p", "tcp", "--dport", str(port), "-j", "DROP"]
    added = subprocess.run(["iptables", "-I", *rule], capture_output=True, text=True, timeout=10)
    if added.returncode != 0:
        pytest.skip(f"iptables cannot add a rule here: {added.stderr.strip()}")
    try:
        yield port
    finally:
        subprocess.run(["iptables", "-D", *rule], capture_output=True, timeout=10, check=True)


def test_blackholed_target_costs_the_connect_timeout_once(blackhole: int, start_echo, start_skiff) -> None:  # type: ignore[no-untyped-def]
    """1. A port whose SYNs are dropped, and a good echo target, in one app with ConnectTimeout 0.3 s; one
    worker. 2. 30 connections, one after another. 3. Every one echoes. 4. Some connection paid about the
    timeout (0.25-1.5 s: the per-app timeout, not the 2 s default) and the log says the target is down
    (timeout). 5. Once marked down it is skipped: the median of the last 20 connections is under 0.3 s."""
    port, good = free_ports(2)
    start_echo([good])
    skiff = start_skiff([app("web", [port], [f"127.0.0.1:{blackhole}", f"127.0.0.1:{good}"], ConnectTimeout=0.3)],
                        workers=1)
    durations = timed_roundtrips(port, 30)
    slowest = max(durations)
    assert 0.25 <= slowest <= 1.5, durations
    skiff.wait_log(rf"target 127\.0\.0\.1:{blackhole} of app web is down \(timeout")
    assert statistics.median(durations[-20:]) < 0.3, durations


def test_bytes_sent_before_failover_are_not_lost(blackhole: int, start_echo, start_skiff) -> None:  # type: ignore[no-untyped-def]
    """1. An app with a blackholed target and a good echo target, ConnectTimeout 0.3 s; one worker.
    2. Clients, one after another until one of them has waited for the blackholed target and failed over, send
    1 MB at once (more than skiff buffers before an upstream exists) and half-close, while reading the echo.
    3. Every client gets its exact 1 MB back, the one that failed over included."""
    port, good = free_ports(2)
    start_echo([good])
    skiff = start_skiff([app("web", [port], [f"127.0.0.1:{blackhole}", f"127.0.0.1:{good}"], ConnectTimeout=0.3)],
                        workers=1)
    payload = random.Random(4).randbytes(MB)
    slowest = 0.0
    for _ in range(20):  # P2C picks the blackholed target first half the time; stop once one connection did
        started = time.monotonic()
        assert roundtrip_concurrently(port, payload) == payload
        slowest = max(slowest, time.monotonic() - started)
        if "is down" in skiff.log:
            break
    assert slowest >= 0.25, "no connection waited for the blackholed target"
    skiff.wait_log(rf"target 127\.0\.0\.1:{blackhole} of app web is down \(timeout")


def test_unresolvable_target_is_skipped(start_echo, start_skiff) -> None:  # type: ignore[no-untyped-def]
    """1. An app with `nonexistent.skiff.invalid:PORT` and a good echo target. 2. 100 connections.
    3. Every one echoes. 4. The log says the name is down because of DNS."""
    port, unused, good = free_ports(3)
    start_echo([good])
    skiff = start_skiff([app("web", [port], [f"nonexistent.skiff.invalid:{unused}", f"127.0.0.1:{good}"])])
    timed_roundtrips(port, 100)
    skiff.wait_log(rf"target nonexistent\.skiff\.invalid:{unused} of app web is down \(dns")


def test_all_targets_down_closes_the_client_promptly(start_skiff) -> None:  # type: ignore[no-untyped-def]
    """1. An app whose two targets both refuse. 2. A client connects and sends a request. 3. Within 2 s it sees
    EOF or a reset (not a hang, not data). 4. The log says each target is down. 5. A second client is turned
    away just as promptly."""
    port, dead1, dead2 = free_ports(3)
    skiff = start_skiff([app("web", [port], [f"127.0.0.1:{dead1}", f"127.0.0.1:{dead2}"])], workers=1)
    for _ in range(2):
        started = time.monotonic()
        with socket.create_connection(("127.0.0.1", port), timeout=5) as sock:
            sock.sendall(b"anyone?")
            assert outcome_of_recv(sock) in {"eof", "reset"}
        assert time.monotonic() - started < 2.0
    for dead in (dead1, dead2):
        skiff.wait_log(rf"target 127\.0\.0\.1:{dead} of app web is down")


def test_target_that_comes_back_gets_traffic_again(start_echo, start_skiff, processes) -> None:  # type: ignore[no-untyped-def]
    """1. An app with target A (nothing listening yet) and a good echo target B; one worker. 2. Connections
    until the log says A is down. 3. A starts listening (a server of ours that counts connections and answers
    "A"). 4. Connections keep coming (one per 50 ms, at most 8 s): after its backoff A gets traffic again, and
    the log says it is up. Every client meanwhile got an answer."""
    port, a_port, b_port = free_ports(3)
    start_echo([b_port])
    skiff = start_skiff([app("web", [port], [f"127.0.0.1:{a_port}", f"127.0.0.1:{b_port}"])], workers=1)
    wait_for(lambda: echo_roundtrip(port, b"x") == b"x" and "is down" in skiff.log, 5, "A to be marked down",
             interval=0.01)
    down_at = time.monotonic()

    def answer_a(conn: socket.socket) -> None:
        read_all(conn)
        conn.sendall(b"A")

    a = ThreadServer(a_port, answer_a)
    processes.append(a)

    def one_connection() -> bool:
        answer = echo_roundtrip(port, b"x")
        assert answer in {b"x", b"A"}, answer
        return a.accepted > 0

    wait_for(one_connection, 8, "A to get traffic again", interval=0.05)
    back_after = time.monotonic() - down_at
    skiff.wait_log(rf"target 127\.0\.0\.1:{a_port} of app web is up")
    assert back_after >= 0.5, f"A got traffic {back_after:.2f} s after being marked down: no backoff?"
    assert not a.errors


def test_target_that_resets_on_accept_costs_no_client(start_echo, start_skiff, processes) -> None:  # type: ignore[no-untyped-def]
    """1. An app with RetryOnReset: one target accepts and resets at once, before reading; another echoes.
    2. 100 clients each send and half-close. 3. Every client gets its echo: whatever error the reset surfaces
    as in skiff (a reset on read, a broken pipe on write, a failed shutdown), it is a failure before the answer
    and the bytes go to the other target."""
    good, bad = free_ports(2)
    [port] = free_ports(1)
    start_echo([good])
    resetter = ThreadServer(bad, close_with_reset)
    processes.append(resetter)
    skiff = start_skiff([app("x", [port], [f"127.0.0.1:{bad}", f"127.0.0.1:{good}"], ConnectTimeout=1,
                             RetryOnReset=True)], workers=1)
    for i in range(100):
        payload = f"client {i} ".encode() * 50
        assert echo_roundtrip(port, payload) == payload, i
    assert resetter.accepted >= 1, "the resetting target was never tried"
    assert "Traceback" not in skiff.log
