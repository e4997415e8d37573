"""skiff against HAProxy (1 thread) and the direct path, in one run, on loopback; writes BENCHMARKS.md.

    python bench/run.py --rounds 3 --out bench/BENCHMARKS.md     # full: about 10 minutes
    python bench/run.py --quick                                  # 1 round, 3 s loads, 1,000 idle conns

Backends: nginx (`return 200 "ok"`) for wrk, an iperf3 server for bulk, bench/idle.py for idle connections.
Rounds are interleaved (each load runs against every target in turn) so machine drift hits all alike.
Every process it starts is stopped by PID on exit, failure and Ctrl-C alike; every load is bounded in time.
"""

from __future__ import annotations

import argparse
import datetime
import importlib.metadata
import json
import os
import platform
import resource
import shlex
import signal
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

import bench_pair
import fixtures
import loads
import psutil
import report
from fixtures import BENCH_DIR, Ports, Processes, Target

REPO_DIR = BENCH_DIR.parent
DEFAULT_SKIFF_CMD = f"{REPO_DIR / '.venv/bin/python'} {REPO_DIR / 'supervisor.py'}"
ALL_TARGETS = ("direct", "haproxy", "skiff-w1", "skiff-w2", "floor")
FLOOR_CMD = (str(REPO_DIR / ".venv/bin/python"), str(BENCH_DIR / "floor_relay.py"))
PAIR_DURATION_S = 3  # seconds per paired round (bench_pair.py's default)
PAUSE_S = 1.0  # between loads, so one load's closing sockets do not overlap the next load


@dataclass(frozen=True)
class Settings:
    rounds: int
    duration_s: int
    idle_conns: int
    targets: tuple[str, ...]
    skiff_cmd: tuple[str, ...]
    skiff_name: str
    base_port: int
    out_dir: Path
    out: Path
    pair_rounds: int


def parse_args(argv: list[str]) -> Settings:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--rounds", type=int, default=3)
    p.add_argument("--duration", type=int, default=10, help="seconds per wrk and iperf3 run (default 10)")
    p.add_argument("--idle-conns", type=int, default=9000, help="idle proxied connections (default 9000)")
    p.add_argument("--quick", action="store_true", help="sanity run: 1 round, 3 s loads, 1,000 idle connections")
    p.add_argument("--targets", default=",".join(ALL_TARGETS), help=f"comma-separated subset of {ALL_TARGETS}")
    p.add_argument("--skiff-cmd", default=DEFAULT_SKIFF_CMD, help="command to which `-c CONFIG -w N` is appended")
    p.add_argument("--skiff-name", default="skiff", help="name for skiff in the report, e.g. `standin`")
    p.add_argument("--base-port", type=int, default=27000, help="ports used: base+0..2, +100.., +200.., +300..")
    p.add_argument("--pair-rounds", type=int, default=5,
                   help="paired rounds of skiff -w 1 against the floor for the must (bench_pair.py; 0: none)")
    p.add_argument("--out", type=Path, help="report path (default bench/BENCHMARKS.md; with --quick, in the run dir)")
    a = p.parse_args(argv)
    if a.quick:
        a.rounds, a.duration, a.idle_conns, a.pair_rounds = 1, 3, 1000, min(a.pair_rounds, 1)
    targets = tuple(t.strip() for t in a.targets.split(",") if t.strip())
    unknown = set(targets) - set(ALL_TARGETS)
    if unknown or not targets:
        p.error(f"--targets: unknown {sorted(unknown)}; choose from {ALL_TARGETS}")
    if a.idle_conns > 9000:
        p.error("--idle-conns: at most 9000 (2 fds per proxied connection, hard fd limit 20,000 per process)")
    stamp = datetime.datetime.now().strftime("%Y%m%d-%H%M%S")
    out_dir = BENCH_DIR / "out" / stamp
    out = a.out if a.out is not None else (out_dir / "BENCHMARKS.md" if a.quick else BENCH_DIR / "BENCHMARKS.md")
    return Settings(
        a.rounds, a.duration, a.idle_conns, targets, tuple(shlex.split(a.skiff_cmd)), a.skiff_name,
        a.base_port, out_dir, out, a.pair_rounds,
    )


def port_plan(base: int) -> dict[str, Ports]:
    """Backends on base+0..2; each proxy on its own block of 100."""
    return {name: Ports(base + 100 * i, base + 100 * i + 1, base + 100 * i + 2) for i, name in enumerate(ALL_TARGETS)}


def display_name(target: str, settings: Settings) -> str:
    return target.replace("skiff", settings.skiff_name, 1) if target.startswith("skiff") else target


def raise_nofile_limit() -> None:
    """Soft fd limit up to the hard one, here and (inherited) in every process started from here."""
    _, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    resource.setrlimit(resource.RLIMIT_NOFILE, (hard, hard))


def interrupt_on_signals() -> None:
    """SIGTERM and SIGINT both unwind through the cleanup (SIGINT explicitly: background jobs inherit it ignored)."""

    def handler(signum: int, _frame: object) -> None:
        raise KeyboardInterrupt(f"signal {signum}")

    signal.signal(signal.SIGTERM, handler)
    signal.signal(signal.SIGINT, handler)


def first_line(argv: list[str]) -> str:
    try:
        done = subprocess.run(argv, capture_output=True, text=True, timeout=10, check=False)
    except (OSError, subprocess.TimeoutExpired) as e:
        return f"unavailable ({e})"
    text = (done.stdout + done.stderr).strip()
    return text.splitlines()[0] if text else "unavailable"


def machine_info() -> dict[str, str]:
    cpu = next(
        (ln.split(":", 1)[1].strip() for ln in Path("/proc/cpuinfo").read_text().splitlines()
         if ln.startswith("model name")),
        "unknown",
    )
    return {
        "nproc": str(os.cpu_count()),
        "kernel": platform.release(),
        "CPU": cpu,
        "memory": f"{psutil.virtual_memory().total / 2**30:.0f} GiB",
        "RLIMIT_NOFILE (soft, hard)": str(resource.getrlimit(resource.RLIMIT_NOFILE)),
    }


def versions(settings: Settings) -> dict[str, str]:
    found = {
        "haproxy": first_line(["haproxy", "-v"]),
        "nginx": first_line(["nginx", "-v"]),
        "wrk": first_line(["wrk", "-v"]),
        "iperf3": first_line(["iperf3", "-v"]),
        "python (harness)": sys.version.split()[0],
        "uvloop (harness)": importlib.metadata.version("uvloop"),
    }
    if any(t.startswith("skiff") for t in settings.targets):
        py = settings.skiff_cmd[0]
        found["python (skiff)"] = first_line([py, "-c", "import sys, uvloop; print(sys.version.split()[0], "
                                              "'uvloop', uvloop.__version__)"])
        found["skiff command"] = shlex.join(settings.skiff_cmd)
        found["skiff commit"] = first_line(["git", "-C", str(Path(settings.skiff_cmd[-1]).parent), "rev-parse",
                                            "HEAD"])
    return found


def method(settings: Settings) -> list[str]:
    return [
        f"keep-alive req/s: `wrk -t1 -c50 -d{settings.duration_s}s` to nginx `return 200 \"ok\"` (1 worker).",
        "new conn/s: the same with `-H 'Connection: close'`: one TCP connection (through the proxy: two) per request.",
        f"bulk Gbit/s: `iperf3 -P1` and `-P4`, `-t {settings.duration_s}`, receiver's figure from `-J`.",
        "CPU s/GB: user+system CPU seconds of the proxy's processes (supervisor and workers, from psutil, "
        "reaped children included) over the iperf3 run, divided by the GB (10^9 bytes) the receiver got.",
        f"RSS KiB/idle conn: {settings.idle_conns:,} connections held open through the proxy to an idle server "
        f"(bench/idle.py) by {loads.IDLE_HOLDERS} client processes; the proxy processes' summed **RSS** after "
        "minus before, divided by the count (USS per connection is in the raw JSON). Each idle test gets a freshly "
        "started proxy, since one that held these connections before reuses their freed memory. Kernel socket "
        "memory is not included.",
        "HAProxy: `mode tcp`, `nbthread 1`, `maxconn 9500` (the operator's comparison of issue 14), defaults "
        "otherwise (no splicing); skiff with `-w 1` and `-w 2`; floor: bench/floor_relay.py with one worker, the "
        "least a uvloop Protocol relay does per connection (no balancing, limits or metrics), a reference row "
        "with no goals of its own. Loads go to one target at a time.",
    ]


Load = Callable[[Target], loads.Result]


def load_plan(settings: Settings, procs: Processes, idle_pid: int) -> list[tuple[str, bool, Load]]:
    """(name, proxied targets only, load) in the order each round runs them."""
    d = settings.duration_s
    return [
        ("wrk-keepalive", False, lambda t: loads.run_wrk(t, d, close=False, metric="keepalive_rps")),
        ("wrk-close", False, lambda t: loads.run_wrk(t, d, close=True, metric="newconn_rps")),
        ("iperf3-P1", False, lambda t: loads.run_iperf3(t, d, streams=1)),
        ("iperf3-P4", False, lambda t: loads.run_iperf3(t, d, streams=4)),
        ("idle", True, lambda t: loads.run_idle(procs, t, idle_pid, settings.idle_conns)),
    ]


def target_alive(target: Target) -> bool:
    if target.pid is None:
        return True
    try:
        return bool(psutil.Process(target.pid).status() != psutil.STATUS_ZOMBIE)
    except psutil.NoSuchProcess:
        return False


Starter = Callable[[], Target]


def start_all(
    settings: Settings, procs: Processes, tmp: Path, configs: dict[str, str]
) -> tuple[list[Target], dict[str, Starter], int]:
    """Backends, then every target; returns the targets, a way to start each proxy afresh, the idle server's PID."""
    plan = port_plan(settings.base_port)
    backends = plan["direct"]
    fixtures.require_free([p for name in ("direct", *settings.targets) for p in plan[name].all()])
    fixtures.start_nginx(procs, tmp, backends.http, configs)
    fixtures.start_iperf3_server(procs, backends.bulk)
    idle_pid = fixtures.start_idle_server(procs, backends.idle)
    targets: list[Target] = []
    starters: dict[str, Starter] = {}
    for name in settings.targets:
        if name == "direct":
            targets.append(Target("direct", backends, None))
            continue
        starter = proxy_starter(settings, procs, tmp, name, plan[name], backends, configs)
        target = starter()
        starters[target.name] = starter
        targets.append(target)
    return targets, starters, idle_pid


def proxy_starter(
    settings: Settings, procs: Processes, tmp: Path, name: str, ports: Ports, backends: Ports, configs: dict[str, str]
) -> Starter:
    if name == "haproxy":
        return lambda: fixtures.start_haproxy(procs, tmp, ports, backends, configs)
    if name == "floor":
        return lambda: fixtures.start_skiff(procs, tmp, list(FLOOR_CMD), 1, ports, backends, configs, name="floor")
    workers = int(name.removeprefix("skiff-w"))

    def start() -> Target:
        t = fixtures.start_skiff(procs, tmp, list(settings.skiff_cmd), workers, ports, backends, configs)
        return Target(display_name(name, settings), t.ports, t.pid)

    return start


def run_rounds(
    settings: Settings, procs: Processes, targets: list[Target], starters: dict[str, Starter], idle_pid: int,
    commands: list[str], errors: list[str],
) -> list[report.Sample]:
    samples: list[report.Sample] = []
    for rnd in range(1, settings.rounds + 1):
        for test, proxied_only, load in load_plan(settings, procs, idle_pid):
            for i, target in enumerate(targets):
                if proxied_only and target.pid is None:
                    continue
                label = f"round {rnd} {test} {target.name}"
                if not target_alive(target):
                    errors.append(f"{label}: skipped, the proxy process {target.pid} is gone")
                    continue
                if test == "idle" and target.pid is not None:
                    # A fresh process for every idle test: one that held 9,000 connections in an earlier round
                    # reuses the memory they freed (round 2 measured ~0.05 KiB per connection for HAProxy).
                    procs.stop_pid(target.pid)
                    target = targets[i] = starters[target.name]()
                print(f"bench: {label} ...", end=" ", flush=True)
                try:
                    result = load(target)
                except loads.LoadError as e:
                    errors.append(f"{label}: {e}")
                    print(f"FAILED: {e}", flush=True)
                    continue
                finally:
                    time.sleep(PAUSE_S)
                if result.command not in commands:
                    commands.append(result.command)
                save_raw(settings.out_dir, rnd, test, target.name, result)
                print(", ".join(f"{k}={v:.3f}" for k, v in result.values.items()), flush=True)
                samples += [report.Sample(rnd, target.name, k, v) for k, v in result.values.items()]
    return samples


def paired_must(settings: Settings, errors: list[str]) -> bench_pair.Pair | None:
    """The must (skiff -w 1 against the floor) measured paired: both loaded at once on one pinned core, so the
    machine's drift, which moves sequential rounds by 15 %, moves both alike (bench_pair.py)."""
    wanted = {"skiff-w1", "floor"} <= set(settings.targets)
    if not wanted or settings.pair_rounds < 1 or settings.skiff_cmd != tuple(shlex.split(DEFAULT_SKIFF_CMD)):
        return None
    print(f"bench: the must, paired: skiff -w 1 and the floor at once, {settings.pair_rounds} rounds", flush=True)
    try:
        return bench_pair.measure(("skiff", "floor"), 1, settings.pair_rounds, PAIR_DURATION_S, settings.base_port,
                                  settings.out_dir)
    except (fixtures.FixtureError, loads.LoadError, SystemExit, subprocess.SubprocessError) as e:
        errors.append(f"paired must: {e}")
        return None


def save_raw(out_dir: Path, rnd: int, test: str, target: str, result: loads.Result) -> None:
    doc = {"round": rnd, "test": test, "target": target, "command": result.command, "values": result.values,
           "raw": result.raw}
    (out_dir / f"r{rnd}-{test}-{target}.json").write_text(json.dumps(doc, indent=1))


def main(argv: list[str]) -> int:
    settings = parse_args(argv)
    if any(t.startswith("skiff") for t in settings.targets) and not Path(settings.skiff_cmd[-1]).exists():
        print(f"bench: skiff not found: {settings.skiff_cmd[-1]} (use --skiff-cmd or --targets)", file=sys.stderr)
        return 2
    raise_nofile_limit()
    interrupt_on_signals()
    settings.out_dir.mkdir(parents=True)
    started, t0 = datetime.datetime.now().astimezone(), time.monotonic()
    procs = Processes(settings.out_dir)
    configs: dict[str, str] = {}
    errors: list[str] = []
    load_commands: list[str] = []
    try:
        with tempfile.TemporaryDirectory(prefix="skiff-bench-") as tmp:
            targets, starters, idle_pid = start_all(settings, procs, Path(tmp), configs)
            samples = run_rounds(settings, procs, targets, starters, idle_pid, load_commands, errors)
            procs.stop_all()
        pair = paired_must(settings, errors)
    except fixtures.FixtureError as e:
        print(f"bench: {e}", file=sys.stderr)
        return 1
    except KeyboardInterrupt:
        print("\nbench: interrupted; stopping everything it started", file=sys.stderr)
        return 130
    finally:
        procs.stop_all()
    run: dict[str, Any] = {
        "started": started.isoformat(timespec="seconds"),
        "finished": datetime.datetime.now().astimezone().isoformat(timespec="seconds"),
        "elapsed_s": time.monotonic() - t0,
        "rounds": settings.rounds, "duration_s": settings.duration_s, "idle_conns": settings.idle_conns,
        "out_dir": str(settings.out_dir.relative_to(REPO_DIR)),
        "targets": [t.name for t in targets],
        "samples": [asdict(s) for s in samples],
        "errors": errors,
        "method": method(settings),
        "machine": machine_info(),
        "versions": versions(settings),
        "commands": list(dict.fromkeys([shlex.join([sys.executable, *sys.argv]), *procs.commands, *load_commands])),
        "configs": configs,
        "pair": None if pair is None else {"names": list(pair.names), "rows": pair.rows,
                                           "duration_s": PAIR_DURATION_S},
    }
    (settings.out_dir / "results.json").write_text(json.dumps(run, indent=1))
    analysis = BENCH_DIR / "ANALYSIS.md"  # hand-written: where the time goes for goals not met
    settings.out.write_text(report.render(run) + ("\n" + analysis.read_text() if analysis.exists() else ""))
    print(f"bench: wrote {settings.out} and {settings.out_dir}/ ({len(errors)} errors)")
    return 1 if errors else 0


if __name__ == "__main__":
    raise SystemExit(main(sys.argv[1:]))
