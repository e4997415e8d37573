"""The connection-rate benchmark: a judgement in minutes, for one change at a time.

    python bench/bench_conn.py                       # HAProxy, floor, skiff -w1, -w2: 3 rounds x 5 s each load
    python bench/bench_conn.py --ab 57eafaf          # plus the same loads through that git ref's skiff (-w 1)
    python bench/bench_conn.py --ab main --ab-workers 1,2 --rounds 5

wrk -t1 -c50 to one nginx through each proxy, `Connection: close` (new connections/s) and keep-alive (req/s).
Rounds are interleaved and the target order rotates each round, so drift and the other users of the machine
hit every target alike; medians are reported with the spread. For each proxy the CPU it spent during the
close load is divided by the connections wrk completed (µs per connection, supervisor apart from workers),
and the kernel's ListenOverflows (TcpExt, what `nstat` shows) is read before and after every load.
The A/B ref is exported with `git archive` into a temporary directory and run with this checkout's venv.
"""

from __future__ import annotations

import argparse
import json
import resource
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import fixtures
import loads
import psutil
from fixtures import BENCH_DIR, Ports, Processes, Target

REPO_DIR = BENCH_DIR.parent
PYTHON = str(REPO_DIR / ".venv/bin/python")
PAUSE_S = 1.0


def listen_overflows() -> int:
    """TcpExt ListenOverflows from /proc/net/netstat (the counter `nstat` reports)."""
    lines = Path("/proc/net/netstat").read_text().splitlines()
    for names, values in zip(lines[::2], lines[1::2], strict=False):
        if names.startswith("TcpExt:"):
            return int(dict(zip(names.split()[1:], values.split()[1:], strict=True))["ListenOverflows"])
    return 0


def cpu_split(pid: int) -> tuple[float, float, float]:
    """CPU seconds: the root process (user+system); its descendants', reaped ones included, user and system."""
    root = psutil.Process(pid)
    t = root.cpu_times()
    user, system = t.children_user, t.children_system
    for child in root.children(recursive=True):
        try:
            c = child.cpu_times()
        except psutil.NoSuchProcess:
            continue
        user, system = user + c.user, system + c.system
    return t.user + t.system, user, system


def export_ref(ref: str, into: Path) -> str:
    """The ref's tree in `into` (git archive: no worktree, no checkout of ours touched); its commit."""
    commit = subprocess.run(["git", "-C", str(REPO_DIR), "rev-parse", "--short", ref], capture_output=True,
                            text=True, check=True).stdout.strip()
    archive = subprocess.Popen(["git", "-C", str(REPO_DIR), "archive", commit], stdout=subprocess.PIPE)
    subprocess.run(["tar", "-x", "-C", str(into)], stdin=archive.stdout, check=True)
    if archive.wait() != 0:
        raise SystemExit(f"bench_conn: git archive {ref} failed")
    return commit


def start_relay(procs: Processes, tmp: Path, name: str, argv: list[str], workers: int, ports: Ports,
                backends: Ports, configs: dict[str, str]) -> Target:
    conf = tmp / f"{name}.json"
    conf.write_text(fixtures.skiff_config(ports, backends))
    configs[name] = conf.read_text()
    proc = procs.start(name, [*argv, "-c", str(conf), "-w", str(workers)])
    fixtures.wait_listening(procs, name, proc, (ports.http,))
    return Target(name, ports, proc.pid)


def main(argv: list[str]) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--rounds", type=int, default=3)
    p.add_argument("--duration", type=int, default=5)
    p.add_argument("--ab", help="git ref whose skiff runs as another target (e.g. main, 57eafaf)")
    p.add_argument("--ab-dir", type=Path, help="a tree with a supervisor.py to run as target `dir-wN` (e.g. a build)")
    p.add_argument("--ab-workers", default="1", help="worker counts for the A/B ref (default 1)")
    p.add_argument("--targets", default="haproxy,floor,skiff-w1,skiff-w2")
    p.add_argument("--loads", default="close,keepalive")
    p.add_argument("--base-port", type=int, default=28000)
    p.add_argument("--json", type=Path, help="also write every sample here")
    a = p.parse_args(argv)
    _, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    resource.setrlimit(resource.RLIMIT_NOFILE, (hard, hard))
    stamp = time.strftime("%Y%m%d-%H%M%S")
    out_dir = BENCH_DIR / "out" / f"conn-{stamp}"
    out_dir.mkdir(parents=True)
    procs = Processes(out_dir)
    configs: dict[str, str] = {}
    names = [t for t in a.targets.split(",") if t]
    samples: dict[tuple[str, str], list[float]] = {}
    cpu: dict[tuple[str, str], list[tuple[float, ...]]] = {}
    overflows: dict[str, int] = {}
    try:
        with tempfile.TemporaryDirectory(prefix="skiff-conn-") as tmp_name:
            tmp = Path(tmp_name)
            backends = Ports(a.base_port, a.base_port + 1, a.base_port + 2)
            fixtures.start_nginx(procs, tmp, backends.http, configs)
            targets: list[Target] = []
            if a.ab:
                ref_dir = tmp / "ref"
                ref_dir.mkdir()
                commit = export_ref(a.ab, ref_dir)
                names += [f"{commit}-w{w}" for w in a.ab_workers.split(",")]
            if a.ab_dir:
                names += [f"dir-w{w}" for w in a.ab_workers.split(",")]
            for i, name in enumerate(names, start=1):
                ports = Ports(a.base_port + 100 * i, a.base_port + 100 * i + 1, a.base_port + 100 * i + 2)
                fixtures.require_free([ports.http])
                if name == "haproxy":
                    targets.append(fixtures.start_haproxy(procs, tmp, ports, backends, configs))
                    continue
                workers = int(name.rpartition("-w")[2]) if name.rpartition("-w")[2].isdigit() else 1
                if name in ("floor", "floor-raw"):
                    cmd = [PYTHON, str(BENCH_DIR / ("floor_relay.py" if name == "floor" else "floor_raw.py"))]
                elif name.startswith("dir-w"):
                    cmd = [PYTHON, str(a.ab_dir.resolve() / "supervisor.py")]
                elif name.startswith("skiff"):
                    cmd = [PYTHON, str(REPO_DIR / "supervisor.py")]
                else:
                    cmd = [PYTHON, str(tmp / "ref" / "supervisor.py")]
                targets.append(start_relay(procs, tmp, name, cmd, workers, ports, backends, configs))
            time.sleep(1.0)
            for rnd in range(a.rounds):
                order = targets[rnd % len(targets):] + targets[:rnd % len(targets)]
                for load in a.loads.split(","):
                    for target in order:
                        assert target.pid is not None
                        before = cpu_split(target.pid)
                        ovf = listen_overflows()
                        try:
                            result = loads.run_wrk(target, a.duration, close=load == "close", metric=load)
                        except loads.LoadError as e:
                            print(f"round {rnd + 1} {load} {target.name}: FAILED {e}", flush=True)
                            continue
                        finally:
                            time.sleep(PAUSE_S)
                        after = cpu_split(target.pid)
                        overflows[target.name] = overflows.get(target.name, 0) + listen_overflows() - ovf
                        rate = result.values[load]
                        samples.setdefault((target.name, load), []).append(rate)
                        done = rate * a.duration  # connections (close) or requests (keep-alive)
                        cpu.setdefault((target.name, load), []).append(
                            tuple((x - y) / done * 1e6 for x, y in zip(after, before, strict=True)))
                        print(f"round {rnd + 1} {load:9} {target.name:14} {rate:10.0f}", flush=True)
    except KeyboardInterrupt:
        print("bench_conn: interrupted; stopping everything it started", file=sys.stderr)
        return 130
    finally:
        procs.stop_all()
    print(render(names, a.loads.split(","), samples, cpu, overflows))
    if a.json:
        doc = {f"{t} {lo}": v for (t, lo), v in samples.items()} | {f"cpu {t} {lo}": c for (t, lo), c in cpu.items()}
        a.json.write_text(json.dumps(doc, indent=1))
    return 0


def render(names: list[str], load_names: list[str], samples: dict[tuple[str, str], list[float]],
           cpu: dict[tuple[str, str], list[tuple[float, ...]]], overflows: dict[str, int]) -> str:
    """Per load: the rate, its ratio to HAProxy, and CPU µs per connection (close) or request (keep-alive):
    the root process (supervisor); the workers' (or HAProxy's) user + system."""
    head = "| target | " + " | ".join(f"{lo} (median, min-max) | x HAProxy | CPU µs: root; user + sys"
                                       for lo in load_names)
    lines = [head + " | ListenOverflows |", "|" + "---|" * (3 * len(load_names) + 2)]
    for name in names:
        cells = [name]
        for lo in load_names:
            vals = samples.get((name, lo), [])
            ref = samples.get(("haproxy", lo), [])
            if not vals:
                cells += ["-", "-", "-"]
                continue
            med = statistics.median(vals)
            cells.append(f"{med:,.0f} ({min(vals):,.0f}-{max(vals):,.0f})")
            cells.append(f"{med / statistics.median(ref):.2f}" if ref else "-")
            per = cpu[(name, lo)]
            root, user, system = (statistics.median(c[i] for c in per) for i in range(3))
            cells.append(f"{root:.1f}; {user:.1f} + {system:.1f} = {user + system:.1f}")
        cells.append(str(overflows.get(name, 0)))
        lines.append("| " + " | ".join(cells) + " |")
    return "\n".join(lines)


if __name__ == "__main__":
    raise SystemExit(main(sys.argv[1:]))
