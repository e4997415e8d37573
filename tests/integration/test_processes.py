"""Processes and signals: titles, a killed worker's queue served by its replacement, draining on SIGTERM,
forced stop, a worker that cannot boot, the SIGUSR1 status line."""

from __future__ import annotations

import os
import re
import select
import signal
import socket
import threading
import time
import urllib.request
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field

import psutil
import pytest

from tests.integration.peers import outcome_of_recv, recv_exactly
from tests.support import Skiff, app, can_connect, echo_roundtrip, free_ports, read_all, wait_for, write_config


def exit_code(skiff: Skiff, timeout: float = 10.0) -> int:
    """Wait for the supervisor to exit by itself; its whole log is collected before this returns."""
    skiff.proc.wait(timeout)
    return skiff.stop()


def cmdline(pid: int) -> str:
    return " ".join(psutil.Process(pid).cmdline())


@pytest.fixture
def echo_app(start_echo):  # type: ignore[no-untyped-def]
    """One app on one port in front of one echo target; returns (port, apps)."""
    port, target = free_ports(2)
    start_echo([target])
    return port, [app("echo", [port], [f"127.0.0.1:{target}"])]


def test_process_titles(echo_app, start_skiff) -> None:  # type: ignore[no-untyped-def]
    """1. skiff with two workers. 2. The supervisor's command line reads "skiff: supervisor (config v1,
    2 workers)". 3. Its two children read "skiff: worker 0 (config v1)" and "skiff: worker 1 (config v1)"."""
    _, apps = echo_app
    skiff = start_skiff(apps, workers=2)
    assert "skiff: supervisor (config v1, 2 workers)" in cmdline(skiff.proc.pid)
    titles = sorted(cmdline(child.pid) for child in skiff.workers())
    assert len(titles) == 2, titles
    assert "skiff: worker 0 (config v1)" in titles[0]
    assert "skiff: worker 1 (config v1)" in titles[1]


def open_and_send(port: int, count: int) -> list[tuple[socket.socket, bytes]]:
    """`count` clients that each connect, send a payload and shut down their write side."""
    clients = []
    for i in range(count):
        sock = socket.create_connection(("127.0.0.1", port), timeout=10)
        payload = f"queued client {i} ".encode() * 50
        sock.sendall(payload)
        sock.shutdown(socket.SHUT_WR)
        clients.append((sock, payload))
    return clients


def answered(clients: list[tuple[socket.socket, bytes]], wait: float) -> int:
    readable, _, _ = select.select([sock for sock, _ in clients], [], [], wait)
    return len(readable)


def assert_all_echoed(clients: list[tuple[socket.socket, bytes]]) -> None:
    failures = []
    for i, (sock, payload) in enumerate(clients):
        try:
            got = read_all(sock)
            if got != payload:
                failures.append(f"client {i}: {len(got)} of {len(payload)} bytes")
        except OSError as exc:
            failures.append(f"client {i}: {exc!r}")
        finally:
            sock.close()
    assert not failures, failures


def test_killed_worker_queue_is_served_by_its_replacement(echo_app, start_skiff) -> None:  # type: ignore[no-untyped-def]
    """1. skiff with one worker; SIGSTOP it. 2. 50 clients connect and send a payload: the kernel queues them on
    the listening socket the supervisor owns; none is answered. 3. SIGKILL the worker. 4. The log says it was
    killed and respawned; a new worker pid serves slot 0. 5. Every one of the 50 gets its full echo; none is
    reset."""
    port, apps = echo_app
    skiff = start_skiff(apps, workers=1)
    old = skiff.worker_pid(0)
    os.kill(old, signal.SIGSTOP)
    clients = open_and_send(port, 50)
    assert answered(clients, 0.3) == 0, "a stopped worker answered"
    os.kill(old, signal.SIGKILL)
    skiff.wait_log(rf"worker 0 \(pid {old}\) was killed by SIGKILL; respawning")
    assert_all_echoed(clients)
    assert skiff.worker_pid(0) != old


@dataclass
class LoopRecord:
    """What a background closed-loop client saw: round trips that worked, and failures with their start time."""

    ok: int = 0
    failures: list[tuple[float, str]] = field(default_factory=list)

    def failures_started_after(self, moment: float) -> list[str]:
        return [what for started, what in self.failures if started >= moment]


@contextmanager
def closed_loop_client(port: int, limit: int = 5000) -> Iterator[LoopRecord]:
    """A client in the background doing one echo round trip after another (at most `limit`)."""
    record = LoopRecord()
    stop = threading.Event()

    def run() -> None:
        for i in range(limit):
            if stop.is_set():
                return
            payload = f"loop {i}".encode()
            started = time.monotonic()
            try:
                got = echo_roundtrip(port, payload, timeout=10)
                if got == payload:
                    record.ok += 1
                else:
                    record.failures.append((started, f"{i}: got {got!r}"))
            except OSError as exc:
                record.failures.append((started, f"{i}: {exc!r}"))

    thread = threading.Thread(target=run, daemon=True)
    thread.start()
    try:
        yield record
    finally:
        stop.set()
        thread.join(15)


def test_killed_worker_under_load_loses_nothing(echo_app, start_skiff) -> None:  # type: ignore[no-untyped-def]
    """1. skiff with two workers and a background client doing round trips in a closed loop. 2. SIGSTOP worker
    0; 50 clients connect and send (reuseport spreads them: worker 1 answers its share, worker 0's share
    waits in its queue). 3. SIGKILL worker 0; the log says it is respawned. 4. All 50 get their full echo.
    5. The background client kept going after the respawn, and no connection it started after the SIGSTOP
    failed. Only the one round trip in flight at the SIGSTOP may have failed, if worker 0 had accepted it:
    that is the one connection the killed worker held."""
    port, apps = echo_app
    skiff = start_skiff(apps, workers=2)
    with closed_loop_client(port) as loop:
        wait_for(lambda: loop.ok >= 20, 10, "the background client to get going")
        old = skiff.worker_pid(0)
        stopped_at = time.monotonic()
        os.kill(old, signal.SIGSTOP)
        clients = open_and_send(port, 50)
        waiting = 50 - answered(clients, 0.5)
        assert waiting > 0, "no client was queued for the stopped worker"
        os.kill(old, signal.SIGKILL)
        skiff.wait_log(rf"worker 0 \(pid {old}\) was killed by SIGKILL; respawning")
        assert_all_echoed(clients)
        after_respawn = loop.ok
        wait_for(lambda: loop.ok >= after_respawn + 20, 10, "the background client to go on after the respawn")
    assert loop.failures_started_after(stopped_at) == []
    assert len(loop.failures) <= 1, loop.failures


def test_sigterm_drains_open_connections_and_refuses_new_ones(echo_app, start_skiff) -> None:  # type: ignore[no-untyped-def]
    """1. skiff with --grace 30 and one connection doing a round trip. 2. SIGTERM. 3. Within 1.5 s new
    connections are refused. 4. The open connection still echoes, several times; the supervisor is still up.
    5. The client closes; the supervisor exits 0 within 3 s (not at the end of the grace period)."""
    port, apps = echo_app
    skiff = start_skiff(apps, "--grace", "30", workers=2)
    with socket.create_connection(("127.0.0.1", port), timeout=5) as held:
        held.sendall(b"before")
        assert recv_exactly(held, 6) == b"before"
        skiff.signal(signal.SIGTERM)
        skiff.wait_log(r"SIGTERM: stopping")
        wait_for(lambda: not can_connect(port), 1.5, "new connections to be refused")
        for i in range(5):
            message = f"after {i}".encode()
            held.sendall(message)
            assert recv_exactly(held, len(message)) == message
        assert skiff.proc.poll() is None
        held.shutdown(socket.SHUT_WR)
        assert read_all(held) == b""
    closed_at = time.monotonic()
    assert exit_code(skiff) == 0, skiff.log
    assert time.monotonic() - closed_at < 3.0
    assert "stopped (exit code 0)" in skiff.log
    assert "Traceback" not in skiff.log, skiff.log


def test_grace_period_ends_held_connections(echo_app, start_skiff) -> None:  # type: ignore[no-untyped-def]
    """1. skiff with --grace 1 and one connection held open after a round trip. 2. SIGTERM. 3. The held
    connection is closed (EOF or reset) between 0.8 and 3 s later. 4. The supervisor exits 0."""
    port, apps = echo_app
    skiff = start_skiff(apps, "--grace", "1", workers=2)
    with socket.create_connection(("127.0.0.1", port), timeout=10) as held:
        held.sendall(b"hold")
        assert recv_exactly(held, 4) == b"hold"
        skiff.signal(signal.SIGTERM)
        sent_at = time.monotonic()
        assert outcome_of_recv(held) in {"eof", "reset"}
        closed_after = time.monotonic() - sent_at
    assert 0.8 <= closed_after <= 3.0, closed_after
    assert exit_code(skiff) == 0, skiff.log
    assert "Traceback" not in skiff.log, skiff.log


def test_second_sigterm_forces_exit(echo_app, start_skiff) -> None:  # type: ignore[no-untyped-def]
    """1. skiff with --grace 30 and one connection held open. 2. SIGTERM; the log says it is stopping.
    3. A second SIGTERM. 4. The supervisor exits with code 1 within 3 s and the held connection is closed."""
    port, apps = echo_app
    skiff = start_skiff(apps, "--grace", "30", workers=2)
    with socket.create_connection(("127.0.0.1", port), timeout=10) as held:
        held.sendall(b"hold")
        assert recv_exactly(held, 4) == b"hold"
        skiff.signal(signal.SIGTERM)
        skiff.wait_log(r"SIGTERM: stopping")
        skiff.signal(signal.SIGTERM)
        started = time.monotonic()
        assert exit_code(skiff) == 1, skiff.log
        assert time.monotonic() - started < 3.0
        assert outcome_of_recv(held) in {"eof", "reset"}
    skiff.wait_log(r"SIGTERM again: killing workers now")
    skiff.wait_log(r"stopped \(exit code 1\)")
    assert "Traceback" not in skiff.log, skiff.log


def boot_failing_skiff(config_path, apps, workers: int) -> Skiff:  # type: ignore[no-untyped-def]
    write_config(config_path, apps)
    return Skiff(config_path, workers=workers, env={"SKIFF_FAILPOINT": "worker-boot"}, wait_ready=False)


def test_worker_that_cannot_boot_stops_the_supervisor(echo_app, config_path, processes) -> None:  # type: ignore[no-untyped-def]
    """1. Start skiff (one worker) with SKIFF_FAILPOINT=worker-boot: the worker fails at every boot. 2. The
    supervisor retries with growing delays (0.1, 0.2, 0.4, 0.8 s), then exits with code 2 within 10 s.
    3. The log says worker 0 failed to boot 5 times in a row, never claims to be ready, has no traceback."""
    _, apps = echo_app
    skiff = boot_failing_skiff(config_path, apps, workers=1)
    processes.append(skiff)
    assert exit_code(skiff) == 2, skiff.log
    assert "worker 0 failed to boot 5 times in a row" in skiff.log, skiff.log
    for delay in ("0.1", "0.2", "0.4", "0.8"):
        assert f"before it was ready; retrying in {delay} s" in skiff.log, skiff.log
    assert "ready: config" not in skiff.log
    assert "Traceback" not in skiff.log, skiff.log


def test_workers_that_cannot_boot_together_stop_the_supervisor_cleanly(echo_app, config_path, processes) -> None:  # type: ignore[no-untyped-def]
    """Regression: workers exiting together once crashed the supervisor (a channel reaped earlier in the same
    wake-up was read again: ValueError, exit 1). 1. Three times: start skiff with four workers and
    SKIFF_FAILPOINT=worker-boot, so four workers die at the same moment, boot after boot. 2. Each time the
    supervisor exits with code 2 within 10 s, with the "failed to boot 5 times in a row" line and no
    traceback."""
    _, apps = echo_app
    for _ in range(3):
        skiff = boot_failing_skiff(config_path, apps, workers=4)
        processes.append(skiff)
        code = exit_code(skiff)
        assert "Traceback" not in skiff.log, skiff.log
        assert code == 2
        assert "failed to boot 5 times in a row" in skiff.log, skiff.log


def test_sigusr1_logs_status_with_rss_and_cpu_per_worker(echo_app, start_skiff) -> None:  # type: ignore[no-untyped-def]
    """1. skiff with two workers. 2. SIGUSR1. 3. One `status:` line names config v1 and, for each worker, its
    real pid, its state, its RSS and its CPU time."""
    _, apps = echo_app
    skiff = start_skiff(apps, workers=2)
    pids = [skiff.worker_pid(0), skiff.worker_pid(1)]
    skiff.signal(signal.SIGUSR1)
    line = skiff.wait_log(r"status: .*").group(0)
    assert line.startswith("status: config v1"), line
    for slot, pid in enumerate(pids):
        assert f"worker {slot} pid {pid} ready v1 rss " in line, line
    for rss, cpu in re.findall(r"rss ([\d.]+) MiB cpu ([\d.]+) s", line):
        assert float(rss) > 1.0 and float(cpu) >= 0.0
    assert skiff.proc.poll() is None


def test_worker_dying_again_and_again_is_respawned_with_backoff(echo_app, start_skiff) -> None:  # type: ignore[no-untyped-def]
    """1. Worker 0 is killed right after each respawn, four times. 2. The first respawns are immediate, then
    the supervisor backs off (and says so) instead of respawning in a tight loop. 3. It still serves."""
    port, apps = echo_app
    [metrics] = free_ports(1)
    skiff = start_skiff(apps, "--metrics", f"127.0.0.1:{metrics}")
    for n in range(1, 5):
        # Kill it once it is ready: a worker killed while it still boots is a boot failure, not a crash.
        wait_for(lambda: _healthy(metrics), 10, f"worker 0 to be ready before kill {n}")
        pid = skiff.worker_pid(0)
        os.kill(pid, signal.SIGKILL)
        skiff.wait_log(rf"worker 0 \(pid {pid}\) was killed by SIGKILL; respawning")
        wait_for(lambda p=pid: _slot_pid(skiff, 0) not in (None, p), 5, f"respawn {n}")
    assert re.search(r"respawning in \d\.\d s \(\d quick exits in a row\)", skiff.log), skiff.log
    wait_for(lambda: _slot_pid(skiff, 0) is not None, 5, "the last respawn")
    assert echo_roundtrip(port, b"still") == b"still"


def _healthy(metrics_port: int) -> bool:
    try:
        with urllib.request.urlopen(f"http://127.0.0.1:{metrics_port}/healthz", timeout=2) as response:
            return bool(response.status == 200)
    except OSError:
        return False


def _slot_pid(skiff: Skiff, slot: int) -> int | None:
    try:
        return skiff.worker_pid(slot)
    except AssertionError:
        return None
