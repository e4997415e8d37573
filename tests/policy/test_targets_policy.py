"""What targets get: PROXY headers (v1, v2, on replays too), active health checks, half-close timeouts."""

from __future__ import annotations

import re
import socket
import time
from collections.abc import Callable
from typing import Any

import pytest

from tests.policy.targets import Target
from tests.support import app, echo_roundtrip, free_ports, wait_for


@pytest.mark.parametrize("version", ["v1", "v2"])
def test_proxy_protocol_carries_client_and_destination(start_skiff: Callable[..., Any], version: str) -> None:
    """1. An app with ProxyProtocol; its target parses the header. 2. A client sends and reads its echo. 3. The
    header names the client's own address and port and the proxy's address and port the client dialled."""
    listen, port = free_ports(2)
    target = Target(port, proxy=True)
    try:
        start_skiff([app("pp", [listen], [f"127.0.0.1:{port}"], ProxyProtocol=version)])
        with socket.create_connection(("127.0.0.1", listen), timeout=5) as sock:
            client = sock.getsockname()
            sock.sendall(b"hello")
            sock.shutdown(socket.SHUT_WR)
            assert sock.recv(100) == b"hello"
        wait_for(lambda: target.headers, 5, "the header")
        header = target.headers[0]
        assert header.version == version
        assert header.source == (client[0], client[1])
        assert header.destination == ("127.0.0.1", listen)
        assert not target.errors
    finally:
        target.stop()


def test_proxy_header_goes_first_on_a_replayed_connection(start_skiff: Callable[..., Any]) -> None:
    """1. An app with RetryOnReset and two targets: one resets every connection before answering, one echoes;
    both parse a v2 header. 2. A
    client held on the good target makes P2C prefer the resetting one. 3. New clients all get their echo: the
    reset target saw the header then the bytes, and the replay to the good target carried the header again."""
    listen, bad_port, good_port = free_ports(3)
    bad = Target(bad_port, mode="reset", proxy=True)
    good = Target(good_port, mode="echo", proxy=True)
    try:
        start_skiff([app("replay", [listen], [f"127.0.0.1:{bad_port}", f"127.0.0.1:{good_port}"],
                         ProxyProtocol="v2", RetryOnReset=True)])
        anchor = socket.create_connection(("127.0.0.1", listen), timeout=5)
        anchor.sendall(b"a")
        assert anchor.recv(1) == b"a"
        # A worker whose anchor attempt met the resetting target first has it marked down for its backoff, so
        # keep sending clients (bounded) until one of them is replayed from the resetting target.
        clients = 0
        deadline = time.monotonic() + 10
        while clients < 4 or not any(data.startswith(b"replayed-") for data in bad.received):
            assert time.monotonic() < deadline and clients < 2000, f"no client was replayed ({bad.received})"
            payload = f"replayed-{clients}".encode()
            assert echo_roundtrip(listen, payload) == payload
            clients += 1
        anchor.close()
        assert bad.accepted >= 1, "the resetting target was never tried"
        assert all(h.version == "v2" and h.source is not None for h in bad.headers)
        assert len(good.headers) == 1 + clients and not good.errors
    finally:
        bad.stop()
        good.stop()


def test_a_target_that_reads_then_resets_never_gets_the_request_twice(start_skiff: Callable[..., Any]) -> None:
    """1. An app without RetryOnReset and two targets: one reads the request, then resets without answering (it
    acted and crashed); one echoes. 2. A client held on the good target makes P2C prefer the resetting one.
    3. Each new client that lands on the resetting target sees its connection reset, and the good target never
    receives that client's request: no request is sent twice."""
    listen, bad_port, good_port = free_ports(3)
    bad = Target(bad_port, mode="reset")
    good = Target(good_port, mode="echo")
    try:
        start_skiff([app("once", [listen], [f"127.0.0.1:{bad_port}", f"127.0.0.1:{good_port}"])])
        anchor = None
        for _ in range(20):  # a client may land on the resetting target: that is the point, so try again
            sock = socket.create_connection(("127.0.0.1", listen), timeout=5)
            try:
                sock.sendall(b"a")
                if sock.recv(1) == b"a":
                    anchor = sock
                    break
            except ConnectionError:
                pass
            sock.close()
        assert anchor is not None, "no client reached the echoing target"
        outcomes = []
        for i in range(4):
            payload = f"payment-{i}".encode()
            try:
                outcomes.append(echo_roundtrip(listen, payload))
            except ConnectionError:
                outcomes.append(b"reset")
        anchor.close()
        assert bad.accepted >= 1, "the resetting target was never tried"
        seen_by_bad = {data for data in bad.received if data.startswith(b"payment-")}
        assert seen_by_bad, "the resetting target read nothing"
        for data in seen_by_bad:
            # The only way to an echo is the good target: an answered request would have been sent twice.
            assert outcomes[int(data.split(b"-")[1])] == b"reset", f"{data!r} was answered by a second target"
        assert not good.errors
    finally:
        bad.stop()
        good.stop()


def test_health_checks_take_a_target_out_and_put_it_back(start_skiff: Callable[..., Any]) -> None:
    """1. Two targets with HealthCheck (0.2 s, Rise 2, Fall 2), two workers, no client traffic. 2. Checks reach
    each target once per interval in all (one worker checks each target, not every worker). 3. One target stops
    listening: one line says it failed its checks; clients are all served by the other. 4. It listens again:
    one line says it is back, and clients reach it again."""
    listen, p1, p2 = free_ports(3)
    flaky, steady = Target(p1), Target(p2)
    try:
        skiff = start_skiff([app("checked", [listen], [f"127.0.0.1:{p1}", f"127.0.0.1:{p2}"],
                                 HealthCheck={"Interval": 0.2, "Timeout": 0.1, "Rise": 2, "Fall": 2})])
        before, started = steady.accepted, time.monotonic()
        time.sleep(2.0)
        checks = (steady.accepted - before) / ((time.monotonic() - started) / 0.2)
        assert 0.6 <= checks <= 1.4, f"{checks:.2f} checks per interval (2 workers each checking would be 2)"
        flaky.close_listener()
        skiff.wait_log(rf"target 127.0.0.1:{p1} of app checked failed 2 health checks \(refused\): out of rotation")
        served = steady.accepted
        for i in range(10):
            assert echo_roundtrip(listen, b"x%d" % i) == b"x%d" % i
        assert steady.accepted - served >= 10
        flaky.start()
        skiff.wait_log(rf"target 127.0.0.1:{p1} of app checked passed 2 health checks: back in rotation")
        before = flaky.accepted
        for _ in range(20):
            assert echo_roundtrip(listen, b"y") == b"y"
        assert flaky.accepted - before >= 3  # back in rotation (health checks add a few too)
        assert len(re.findall("out of rotation", skiff.log)) == 1
    finally:
        flaky.stop()
        steady.stop()


def test_half_close_timeout_closes_a_lingering_connection(start_skiff: Callable[..., Any]) -> None:
    """1. A target that echoes but never closes after the client's EOF; app A has HalfCloseTimeout 0.5, app B
    none. 2. Each client sends, half-closes and reads. 3. A's client gets its echo then EOF within about 0.5 s;
    B's is still open after 1.5 s."""
    a_port, b_port, port = free_ports(3)
    target = Target(port, mode="hold")
    try:
        start_skiff([app("a", [a_port], [f"127.0.0.1:{port}"], HalfCloseTimeout=0.5),
                     app("b", [b_port], [f"127.0.0.1:{port}"])])
        results = {}
        for name, listen in (("a", a_port), ("b", b_port)):
            with socket.create_connection(("127.0.0.1", listen), timeout=1.5) as sock:
                sock.sendall(b"bye")
                sock.shutdown(socket.SHUT_WR)
                started = time.monotonic()
                got = b""
                try:
                    while chunk := sock.recv(100):
                        got += chunk
                    results[name] = (got, time.monotonic() - started)
                except TimeoutError:
                    results[name] = (got, None)
        got, elapsed = results["a"]
        assert got == b"bye" and elapsed is not None and 0.3 <= elapsed <= 1.2, results
        assert results["b"] == (b"bye", None)
    finally:
        target.stop()
