"""The loads and what is measured during them: wrk, iperf3 with the proxy's CPU time, and idle connections.

Each `run_*` function drives one bounded load against one target and returns a `Result`: the headline
values (metric key → number) plus the raw output, which run.py saves as JSON next to the report.
"""

from __future__ import annotations

import json
import re
import shlex
import subprocess
import sys
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

import psutil
from fixtures import BENCH_DIR, Processes, Target

SLACK_S = 20.0  # on top of a load's duration before it counts as hung and is killed
IDLE_SETTLE_S = 1.0
DRAIN_TIMEOUT_S = 10.0
IDLE_HOLDERS = 3  # client processes for the idle test: 9,000 sockets stay far below 20,000 fds each


@dataclass
class Result:
    command: str
    values: dict[str, float] = field(default_factory=dict)
    raw: dict[str, Any] = field(default_factory=dict)


class LoadError(RuntimeError):
    """A load failed or produced output we cannot read; the round goes on without that value."""


def run_bounded(argv: list[str], timeout_s: float) -> subprocess.CompletedProcess[str]:
    try:
        return subprocess.run(argv, capture_output=True, text=True, timeout=timeout_s, check=False)
    except subprocess.TimeoutExpired as e:
        raise LoadError(f"{shlex.join(argv)} did not finish within {timeout_s:.0f}s") from e


# wrk ---------------------------------------------------------------------------------------------------------

_WRK_RPS = re.compile(r"^Requests/sec:\s+([\d.]+)", re.M)
_WRK_REQUESTS = re.compile(r"^\s*(\d+) requests in ([\d.]+)(\w+),", re.M)
_WRK_SOCKET_ERRORS = re.compile(r"Socket errors: connect (\d+), read (\d+), write (\d+), timeout (\d+)")
_WRK_NON2XX = re.compile(r"Non-2xx or 3xx responses: (\d+)")


def parse_wrk(stdout: str) -> dict[str, Any]:
    rps = _WRK_RPS.search(stdout)
    if rps is None:
        raise LoadError(f"no Requests/sec in wrk output:\n{stdout}")
    parsed: dict[str, Any] = {"requests_per_s": float(rps.group(1))}
    if (m := _WRK_REQUESTS.search(stdout)) is not None:
        parsed["requests"] = int(m.group(1))
    errors = _WRK_SOCKET_ERRORS.search(stdout)
    parsed["socket_errors"] = dict(
        zip(("connect", "read", "write", "timeout"), (int(g) for g in errors.groups()), strict=True)
    ) if errors else {}
    non2xx = _WRK_NON2XX.search(stdout)
    parsed["non_2xx"] = int(non2xx.group(1)) if non2xx else 0
    return parsed


def run_wrk(target: Target, duration_s: int, close: bool, metric: str) -> Result:
    argv = ["wrk", "-t1", "-c50", f"-d{duration_s}s"]
    if close:
        argv += ["-H", "Connection: close"]
    argv.append(f"http://127.0.0.1:{target.ports.http}/")
    done = run_bounded(argv, duration_s + SLACK_S)
    if done.returncode != 0:
        raise LoadError(f"wrk exited {done.returncode}: {done.stderr.strip()}")
    parsed = parse_wrk(done.stdout)
    if parsed["non_2xx"]:
        raise LoadError(f"wrk saw {parsed['non_2xx']} non-2xx responses through {target.name}")
    return Result(shlex.join(argv), {metric: parsed["requests_per_s"]}, {"stdout": done.stdout, **parsed})


# CPU of a proxy ----------------------------------------------------------------------------------------------

def cpu_snapshot(pid: int) -> dict[int, float]:
    """user+system seconds of the process and each live descendant, plus its reaped children under key -1."""
    root = psutil.Process(pid)
    times = root.cpu_times()
    snapshot = {pid: times.user + times.system, -1: times.children_user + times.children_system}
    for child in root.children(recursive=True):
        try:
            t = child.cpu_times()
        except psutil.NoSuchProcess:
            continue
        snapshot[child.pid] = t.user + t.system
    return snapshot


def cpu_seconds_between(before: dict[int, float], after: dict[int, float]) -> float:
    # A process that appeared meanwhile counts from zero; one that was reaped meanwhile shows up under -1.
    return sum(after[pid] - before.get(pid, 0.0) for pid in after)


# iperf3 ------------------------------------------------------------------------------------------------------

def run_iperf3(target: Target, duration_s: int, streams: int) -> Result:
    argv = ["iperf3", "-c", "127.0.0.1", "-p", str(target.ports.bulk), f"-P{streams}", "-t", str(duration_s), "-J"]
    before = cpu_snapshot(target.pid) if target.pid is not None else None
    done = run_bounded(argv, duration_s + SLACK_S)
    after = cpu_snapshot(target.pid) if target.pid is not None else None
    try:
        report = json.loads(done.stdout)
    except json.JSONDecodeError as e:
        raise LoadError(f"iperf3 printed no JSON (exit {done.returncode}): {done.stderr.strip()}") from e
    if "error" in report:
        raise LoadError(f"iperf3: {report['error']}")
    received = report["end"]["sum_received"]
    key = f"bulk_p{streams}"
    values = {f"{key}_gbps": received["bits_per_second"] / 1e9}
    raw: dict[str, Any] = {"iperf3": report, "bytes_received": received["bytes"]}
    if before is not None and after is not None:
        cpu_s = cpu_seconds_between(before, after)
        values[f"{key}_cpu_s_per_gb"] = cpu_s / (received["bytes"] / 1e9)
        raw["proxy_cpu_s"] = cpu_s
    return Result(shlex.join(argv), values, raw)


# idle connections --------------------------------------------------------------------------------------------

def memory_of_tree(pid: int) -> tuple[int, int, int]:
    """Total RSS and USS in bytes over the process and its descendants, and how many processes that is."""
    root = psutil.Process(pid)
    rss = uss = count = 0
    for proc in [root, *root.children(recursive=True)]:
        try:
            info = proc.memory_full_info()
        except psutil.NoSuchProcess:
            continue
        rss, uss, count = rss + info.rss, uss + info.uss, count + 1
    return rss, uss, count


def other_fds(pid: int) -> int:
    """The idle server's fds that are not connections (listener, epoll, pipes...): read once, it is slow."""
    proc = psutil.Process(pid)
    connections = sum(1 for c in proc.net_connections("tcp") if c.status != psutil.CONN_LISTEN)
    return int(proc.num_fds()) - connections


def wait_for_fds(pid: int, done: Callable[[int], bool], want: str, timeout_s: float) -> None:
    """Wait, within a deadline, until the idle server's fd count satisfies `done` (cheap to read, unlike sockets)."""
    deadline = time.monotonic() + timeout_s
    while not done(n := int(psutil.Process(pid).num_fds())):
        if time.monotonic() > deadline:
            raise LoadError(f"idle server has {n} fds open, wanted {want}, after {timeout_s:.0f}s")
        time.sleep(0.1)


def run_idle(procs: Processes, target: Target, idle_server_pid: int, count: int) -> Result:
    """Open `count` connections through the proxy to the idle server; RSS of the proxy tree after minus before."""
    assert target.pid is not None
    shares = [count // IDLE_HOLDERS + (1 if i < count % IDLE_HOLDERS else 0) for i in range(IDLE_HOLDERS)]
    argvs = [
        [sys.executable, str(BENCH_DIR / "idle.py"), "hold", f"127.0.0.1:{target.ports.idle}", str(n)] for n in shares
    ]
    # The previous target's connections should be gone, or they would count for this one. Any that a leaky
    # proxy never closes become part of the baseline (and are reported) rather than failing every later test.
    base = other_fds(idle_server_pid)
    try:
        wait_for_fds(idle_server_pid, lambda n: n <= base, f"{base} before the test", timeout_s=DRAIN_TIMEOUT_S)
    except LoadError:
        stale = int(psutil.Process(idle_server_pid).num_fds()) - base
        print(f"[{stale} stale connections at the idle server, left by an earlier test]", end=" ", flush=True)
        base += stale
    rss0, uss0, nprocs = memory_of_tree(target.pid)
    holders = [procs.start_piped(f"idle-hold-{i}", argv) for i, argv in enumerate(argvs)]
    try:
        held = sum(read_ready(h, timeout_s=60.0) for h in holders)
        if held != count:
            raise LoadError(f"holders opened {held} of {count} connections through {target.name}")
        wait_for_fds(idle_server_pid, lambda n: n >= base + count, f"{base} + {count:,}", timeout_s=30.0)
        time.sleep(IDLE_SETTLE_S)  # let the proxy finish the allocations that follow its upstream connects
        rss1, uss1, _ = memory_of_tree(target.pid)
    finally:
        for h in holders:
            procs.stop_piped(h)
    values = {"idle_rss_kib_per_conn": (rss1 - rss0) / count / 1024}
    raw = {
        "connections": count, "proxy_processes": nprocs, "rss_before": rss0, "rss_after": rss1,
        "uss_before": uss0, "uss_after": uss1, "uss_kib_per_conn": (uss1 - uss0) / count / 1024,
    }
    return Result(" & ".join(shlex.join(a) for a in argvs), values, raw)


def read_ready(holder: subprocess.Popen[bytes], timeout_s: float) -> int:
    """The holder's `ready N` line. The read is bounded by a timer that kills the holder if it hangs."""
    assert holder.stdout is not None
    timer = threading.Timer(timeout_s, holder.kill)
    timer.start()
    try:
        line = holder.stdout.readline().decode().strip()
    finally:
        timer.cancel()
    if not line.startswith("ready "):
        raise LoadError(f"idle holder {holder.pid} said {line!r} (exit {holder.poll()})")
    return int(line.split()[1])

