"""The supervisor dies or stops: workers drain what they hold, never force it closed (only a repeated signal does).

Real processes and real signals: skiff under test, an echo target, clients that keep echoing through it.
"""

from __future__ import annotations

import contextlib
import os
import signal
import time
from collections.abc import Callable
from typing import Any

import psutil

from tests.faults.held import Held, hold
from tests.support import Skiff, app, free_ports, wait_for


def _kill_leftovers(pids: list[int]) -> None:
    for pid in pids:
        with contextlib.suppress(ProcessLookupError):
            os.kill(pid, signal.SIGKILL)


def _keep_echoing(held: list[Held], seconds: float) -> None:
    deadline = time.monotonic() + seconds
    while time.monotonic() < deadline:
        for h in held:
            h.echo()
        time.sleep(0.2)


def _gone(pids: list[int]) -> bool:
    return not any(psutil.pid_exists(p) and psutil.Process(p).status() != psutil.STATUS_ZOMBIE for p in pids)


def _kill_supervisor_while_held(skiff: Skiff, port: int, count: int, seconds: float,
                                first: Callable[[], None]) -> None:
    """Hold `count` connections, do `first`, SIGKILL the supervisor; every held connection must keep echoing for
    `seconds`, then end in order, and the workers must leave once their connections are done."""
    workers = [w.pid for w in skiff.workers()]
    held = hold(port, count)
    try:
        first()
        skiff.proc.send_signal(signal.SIGKILL)
        skiff.proc.wait(5)
        _keep_echoing(held, seconds)
        for h in held:
            assert h.finish() == b""
        wait_for(lambda: _gone(workers), 10, "workers to leave once their connections are done")
    finally:
        for h in held:
            h.close()
        _kill_leftovers(workers)


def test_supervisor_killed_costs_no_open_connection(
        start_echo: Callable[[list[int]], Any], start_skiff: Callable[..., Skiff]) -> None:
    """1. skiff -w 2 with --metrics; 6 clients hold connections and echo. 2. SIGKILL the supervisor (the OOM
    killer's way). 3. For 3 s (three of the old stats intervals) every held connection keeps echoing. 4. Each
    client half-closes and gets an orderly end, not a reset. 5. The workers exit once their connections are done."""
    target, port, metrics = free_ports(3)
    start_echo([target])
    skiff = start_skiff([app("a", [port], [f"127.0.0.1:{target}"])], "--metrics", f"127.0.0.1:{metrics}")
    _kill_supervisor_while_held(skiff, port, 6, seconds=3.0, first=lambda: None)


def test_drain_then_supervisor_death_does_not_force(
        start_echo: Callable[[list[int]], Any], start_skiff: Callable[..., Skiff]) -> None:
    """1. 4 clients hold connections. 2. SIGTERM: the supervisor tells the workers to drain (grace 5 s). 3. The
    supervisor is SIGKILLed mid-drain: its channel closes. 4. A drain is not escalated by a channel EOF: the held
    connections keep echoing for 2 s and end in order."""
    target, port = free_ports(2)
    start_echo([target])
    skiff = start_skiff([app("a", [port], [f"127.0.0.1:{target}"])])

    def drain_first() -> None:
        skiff.signal(signal.SIGTERM)
        skiff.wait_log("stopping; draining")

    _kill_supervisor_while_held(skiff, port, 4, seconds=2.0, first=drain_first)


def test_second_sigterm_forces(start_echo: Callable[[list[int]], Any], start_skiff: Callable[..., Skiff]) -> None:
    """1. A client holds a connection. 2. SIGTERM: draining, the connection still echoes. 3. SIGTERM again: the
    operator insists, the workers are killed at once and the supervisor exits non-zero."""
    target, port = free_ports(2)
    start_echo([target])
    skiff = start_skiff([app("a", [port], [f"127.0.0.1:{target}"])])
    held = hold(port, 1)
    try:
        skiff.signal(signal.SIGTERM)
        skiff.wait_log("stopping; draining")
        held[0].echo()
        skiff.signal(signal.SIGTERM)
        assert skiff.proc.wait(10) == 1
        assert "SIGTERM again: killing workers now" in skiff.log
    finally:
        held[0].close()
