"""Exception barriers: a fault in one callback costs that callback's work, never the supervisor or a worker's
other connections. Faults come from the failpoint mechanism (proxy/failpoints.py), switched on by a file."""

from __future__ import annotations

import contextlib
import os
import signal
import socket
import urllib.error
import urllib.request
from collections.abc import Callable
from pathlib import Path
from typing import Any

from tests.faults.held import hold
from tests.support import Skiff, app, echo_roundtrip, free_ports, read_all, wait_for, write_config


def _get(port: int, path: str) -> int:
    try:
        with urllib.request.urlopen(f"http://127.0.0.1:{port}{path}", timeout=5) as response:
            return int(response.status)
    except urllib.error.HTTPError as error:
        return int(error.code)


def test_failed_fork_is_retried(start_echo: Callable[[list[int]], Any], start_skiff: Callable[..., Skiff],
                                tmp_path: Path) -> None:
    """1. skiff -w 2 serves; forks fail while a failpoint file exists (as under a process limit). 2. Worker 0
    is killed: its respawn fails, one line each try, with backoff; the supervisor keeps running. 3. The file
    goes: worker 0 is back and /healthz says ok."""
    flag = tmp_path / "fork-fails"
    target, port, metrics = free_ports(3)
    start_echo([target])
    skiff = start_skiff([app("a", [port], [f"127.0.0.1:{target}"])], "--metrics", f"127.0.0.1:{metrics}",
                        env={"SKIFF_FAILPOINT": f"supervisor-fork:{flag}"})
    flag.touch()
    os.kill(skiff.worker_pid(0), signal.SIGKILL)
    skiff.wait_log(r"cannot start worker 0: failpoint supervisor-fork", count=3, timeout=10)
    assert skiff.proc.poll() is None
    assert _get(metrics, "/healthz") == 503
    flag.unlink()
    wait_for(lambda: _get(metrics, "/healthz") == 200, 15, "worker 0 to be back")
    assert echo_roundtrip(port) == b"ping"


def test_boot_failures_after_ready_do_not_stop_a_serving_supervisor(
        start_echo: Callable[[list[int]], Any], start_skiff: Callable[..., Skiff], tmp_path: Path) -> None:
    """1. skiff -w 2 serves. 2. Boots fail while a failpoint file exists; worker 0 is killed and fails to boot
    six times in a row (past the five that stop a supervisor that never served). 3. The supervisor keeps
    serving with worker 1. 4. The file goes: worker 0 boots."""
    flag = tmp_path / "boot-fails"
    target, port = free_ports(2)
    start_echo([target])
    skiff = start_skiff([app("a", [port], [f"127.0.0.1:{target}"])],
                        env={"SKIFF_FAILPOINT": f"worker-boot:{flag}"})
    flag.touch()
    os.kill(skiff.worker_pid(0), signal.SIGKILL)
    skiff.wait_log(r"worker 0 \(pid \d+\) exited with code 3 before it was ready", count=6, timeout=30)
    assert skiff.proc.poll() is None
    flag.unlink()
    wait_for(lambda: _has_worker(skiff, 0), 15, "worker 0 to boot")
    assert echo_roundtrip(port) == b"ping"


def _has_worker(skiff: Skiff, slot: int) -> bool:
    with contextlib.suppress(AssertionError):
        return skiff.worker_pid(slot) > 0
    return False


def test_failed_snapshot_apply_exits_and_respawns(
        start_echo: Callable[[list[int]], Any], start_skiff: Callable[..., Skiff], config_path: Path,
        tmp_path: Path) -> None:
    """1. skiff -w 2 serves port A. 2. Applying a snapshot raises while a failpoint file exists. 3. A reload
    adds port B: each worker logs the traceback once and exits before acknowledging; its replacement starts on
    the new config. 4. Port B is served and the reload counts as applied by both workers."""
    flag = tmp_path / "apply-fails"
    target, port_a, port_b = free_ports(3)
    start_echo([target])
    skiff = start_skiff([app("a", [port_a], [f"127.0.0.1:{target}"])],
                        env={"SKIFF_FAILPOINT": f"worker-apply:{flag}"})
    flag.touch()
    write_config(config_path, [app("a", [port_a, port_b], [f"127.0.0.1:{target}"])])
    skiff.wait_log(r"the control path failed; exiting to be respawned", count=2)
    skiff.wait_log(r"config v2 applied by 2/2 workers")
    assert "failpoint worker-apply" in skiff.log  # the traceback names the fault
    for _ in range(10):
        assert echo_roundtrip(port_b) == b"ping"


def test_broken_metrics_page_costs_one_request(
        start_echo: Callable[[list[int]], Any], start_skiff: Callable[..., Skiff]) -> None:
    """1. skiff with --metrics, rendering /metrics raises (failpoint). 2. GET /metrics: 503, the traceback
    logged. 3. The supervisor keeps running: /healthz answers 200 and traffic flows."""
    target, port, metrics = free_ports(3)
    start_echo([target])
    skiff = start_skiff([app("a", [port], [f"127.0.0.1:{target}"])], "--metrics", f"127.0.0.1:{metrics}",
                        env={"SKIFF_FAILPOINT": "metrics-render"})
    assert _get(metrics, "/metrics") == 503
    assert _get(metrics, "/healthz") == 200
    assert echo_roundtrip(port) == b"ping"
    skiff.wait_log("failpoint metrics-render: rendering /metrics fails on purpose")


def test_a_failing_connection_callback_costs_that_connection_only(
        start_echo: Callable[[list[int]], Any], start_skiff: Callable[..., Skiff], tmp_path: Path) -> None:
    """1. skiff -w 1 serves; a client holds a connection. 2. While a failpoint file exists, the data callback of
    every new connection raises: 30 such clients each lose their own connection (closed, never answered). 3. The
    worker is the same process, the held connection still echoes, and the log has one traceback (the rest are
    counted, not logged). 4. The file goes: new clients are served."""
    flag = tmp_path / "callback-fails"
    target, port = free_ports(2)
    start_echo([target])
    skiff = start_skiff([app("a", [port], [f"127.0.0.1:{target}"])], workers=1,
                        env={"SKIFF_FAILPOINT": f"relay-callback:{flag}"})
    worker = skiff.worker_pid(0)
    held = hold(port, 1)[0]
    try:
        flag.touch()
        for i in range(30):
            with socket.create_connection(("127.0.0.1", port), timeout=5) as sock:
                sock.sendall(f"doomed {i}".encode())
                try:
                    assert read_all(sock) == b""
                except ConnectionResetError:
                    pass
        held.echo()
        assert skiff.worker_pid(0) == worker
        assert skiff.log.count("a connection callback failed") == 1, skiff.log
        assert skiff.log.count("RuntimeError: failpoint relay-callback") == 1, skiff.log
        flag.unlink()
        assert echo_roundtrip(port) == b"ping"
        held.echo()
    finally:
        held.close()
