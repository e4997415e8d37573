"""What metrics cost and how current they are: counters in shared memory, one render per second, capped HTTP.

The costs themselves (milliseconds on the supervisor's loop per scrape at 2,000 apps x 3 targets) are measured by
bench/scrape_cost.py, not asserted here; these tests check the structure that bounds them.
"""

from __future__ import annotations

import os
import signal
import socket
import threading
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest
from prometheus_client.parser import text_string_to_metric_families

from tests.ops.test_ops import fetch, metric, scrape
from tests.support import app, echo_roundtrip, free_ports, wait_for, write_config


def test_counters_reach_metrics_without_a_message_from_the_worker(start_echo: Callable[..., Any],
                                                                   start_skiff: Callable[..., Any]) -> None:
    """1. One worker; a held connection echoes 300 bytes: its bytes show while it is open (the idle sweep
    counts them). 2. Ten round trips of 100 bytes, then the worker is SIGSTOPped at once, so it can send
    nothing more. 3. /metrics still shows all eleven connections and their bytes: they were counted in the
    shared table as they happened, not reported later."""
    [target] = free_ports(1)
    port, metrics_port = free_ports(2)
    start_echo([target])
    skiff = start_skiff([app("alpha", [port], [f"127.0.0.1:{target}"])], "--metrics", f"127.0.0.1:{metrics_port}",
                        workers=1)
    held = socket.create_connection(("127.0.0.1", port), timeout=5)
    worker = skiff.worker_pid(0)
    try:
        held.sendall(b"y" * 300)
        got = b""
        while len(got) < 300:
            got += held.recv(300 - len(got))
        wait_for(lambda: metric(scrape(metrics_port), "skiff_received_bytes_total", app="alpha") == 300, 10,
                 "an open connection's bytes to be counted")
        for _ in range(10):
            assert echo_roundtrip(port, b"z" * 100) == b"z" * 100
        os.kill(worker, signal.SIGSTOP)

        def counted() -> bool:
            text = scrape(metrics_port)
            return (metric(text, "skiff_connections_total", app="alpha") == 11
                    and metric(text, "skiff_received_bytes_total", app="alpha") == 1300
                    and metric(text, "skiff_sent_bytes_total", app="alpha") == 1300)

        wait_for(counted, 10, "the stopped worker's connections in /metrics")
        text = scrape(metrics_port)
        assert metric(text, "skiff_connections_active", app="alpha") == 1
        assert metric(text, "skiff_connect_duration_seconds_count", app="alpha") == 11
    finally:
        os.kill(worker, signal.SIGCONT)
        held.close()


def test_scrapers_share_renders_and_the_loop_keeps_answering(start_echo: Callable[..., Any],
                                                             start_skiff: Callable[..., Any]) -> None:
    """1. 100 apps x 3 targets, two workers, a held connection. 2. Four clients scrape /metrics back to back
    while the test, 40 times, echoes on the held connection and asks /healthz: every echo comes back and every
    /healthz is 200. 3. Every scrape got valid Prometheus text, and the supervisor rendered at most once per
    second over the whole time (skiff_metrics_renders_total): the other scrapes shared a render."""
    targets = free_ports(3)
    *ports, metrics_port = free_ports(101)
    start_echo(targets)
    start_skiff([app(f"app-{i:03d}", [p], [f"127.0.0.1:{t}" for t in targets]) for i, p in enumerate(ports)],
                "--metrics", f"127.0.0.1:{metrics_port}")
    first = metric(scrape(metrics_port), "skiff_metrics_renders_total")
    assert first is not None
    started = time.monotonic()
    stop = threading.Event()
    results: list[tuple[int, bytes]] = []

    def scraper() -> None:
        while not stop.is_set() and len(results) < 2000:
            results.append(fetch(metrics_port, "/metrics"))

    threads = [threading.Thread(target=scraper) for _ in range(4)]
    for thread in threads:
        thread.start()
    held = socket.create_connection(("127.0.0.1", ports[0]), timeout=10)
    try:
        for i in range(40):
            held.sendall(bytes([i]))
            assert held.recv(1) == bytes([i])
            assert fetch(metrics_port, "/healthz") == (200, b"ok\n")
            time.sleep(0.05)  # pacing: the check spans a few render periods
    finally:
        stop.set()
        for thread in threads:
            thread.join(30)
        held.close()
    elapsed = time.monotonic() - started
    last = metric(scrape(metrics_port), "skiff_metrics_renders_total")
    assert last is not None
    assert len(results) >= 4 and all(status == 200 for status, _ in results)
    for _, body in results[:: max(1, len(results) // 5)]:
        names = {f.name for f in text_string_to_metric_families(body.decode())}
        assert "skiff_connections" in names and "skiff_target_up" in names
    # One render per second at most, plus the one the final scrape may have started.
    assert last - first <= elapsed + 2, (first, last, elapsed, len(results))
    assert len(results) > last - first, "scrapes shared renders"


@pytest.mark.parametrize("cap", [None, 3])
def test_http_connections_are_capped(start_echo: Callable[..., Any], start_skiff: Callable[..., Any],
                                     cap: int | None) -> None:
    """1. As many idle HTTP connections are open as the cap allows (64 by default, or
    --metrics-max-connections). 2. One more is closed at once. 3. Once the idle ones are gone, /healthz answers
    and /metrics counts the one rejected connection."""
    [target] = free_ports(1)
    port, metrics_port = free_ports(2)
    start_echo([target])
    start_skiff([app("alpha", [port], [f"127.0.0.1:{target}"])], "--metrics", f"127.0.0.1:{metrics_port}",
                *(["--metrics-max-connections", str(cap)] if cap else []))
    idle = [socket.create_connection(("127.0.0.1", metrics_port), timeout=5) for _ in range(cap or 64)]
    try:
        extra = socket.create_connection(("127.0.0.1", metrics_port), timeout=5)
        try:
            extra.sendall(b"GET /healthz HTTP/1.0\r\n\r\n")
            try:
                answer = extra.recv(4096)
            except ConnectionResetError:
                answer = b""
            assert answer == b"", answer  # closed unanswered, well before the 10 s an idle connection gets
        finally:
            extra.close()
    finally:
        for sock in idle:
            sock.close()

    def answered(path: str) -> bytes | None:
        try:  # until the supervisor has seen the idle ones go, a new one may still be over the cap
            status, body = fetch(metrics_port, path)
        except OSError:
            return None
        return body if status == 200 else None

    wait_for(lambda: answered("/healthz") == b"ok\n", 10, "/healthz once the idle connections left")
    wait_for(lambda: (metric((answered("/metrics") or b"").decode(), "skiff_http_connections_rejected_total")
                      or 0) >= 1, 5, "the rejected connection to be counted")


def test_a_reused_cell_counts_from_zero(start_echo: Callable[..., Any], start_skiff: Callable[..., Any],
                                        config_path: Path) -> None:
    """1. App `old` serves five connections. 2. A reload removes it; once every worker has applied that, a
    reload adds app `new`, which gets old's cells back (settled and empty). 3. /metrics shows `new` at zero:
    a name never inherits another's totals."""
    [target] = free_ports(1)
    keep, gone, metrics_port = free_ports(3)
    start_echo([target])
    keeper = app("keep", [keep], [f"127.0.0.1:{target}"])
    skiff = start_skiff([keeper, app("old", [gone], [f"127.0.0.1:{target}"])],
                        "--metrics", f"127.0.0.1:{metrics_port}")
    for _ in range(5):
        assert echo_roundtrip(gone) == b"ping"
    wait_for(lambda: metric(scrape(metrics_port), "skiff_connections_total", app="old") == 5, 5, "old's five")
    write_config(config_path, [keeper])
    skiff.wait_log(r"config v2 applied by 2/2 workers")
    write_config(config_path, [keeper, app("new", [gone], [f"127.0.0.1:{target}"])])
    skiff.wait_log(r"config v3 applied by 2/2 workers")

    def shown() -> bool:
        return metric(scrape(metrics_port), "skiff_config_version") == 3

    wait_for(shown, 5, "/metrics to show config v3")
    text = scrape(metrics_port)
    assert metric(text, "skiff_connections_total", app="old") is None
    assert metric(text, "skiff_connections_total", app="new") == 0
    assert metric(text, "skiff_connect_duration_seconds_count", app="new") == 0
    assert metric(text, "skiff_target_connections_total", app="new", target=f"127.0.0.1:{target}") == 0
    assert echo_roundtrip(gone) == b"ping"
    wait_for(lambda: metric(scrape(metrics_port), "skiff_connections_total", app="new") == 1, 5, "new's first")
