"""Two proxies measured at the same time, on the same core: a ratio that the machine's drift cannot move.

    python bench/bench_pair.py skiff floor                 # this checkout's skiff (-w 1) against the floor relay
    python bench/bench_pair.py skiff ref:main --rounds 7   # against a git ref's skiff (git archive)
    python bench/bench_pair.py skiff skiff                 # an A/A run: how much two equal targets differ

Sequential rounds (bench_conn.py) see this shared machine change speed by ±15 % within a minute, which buries a
5 % change. Here both proxies are pinned to the last CPU and loaded at once (`wrk -t1 -c50`, `Connection:
close`, one wrk each, wrk and nginx pinned to the other CPUs), so both saturate that one CPU under the same
conditions and the ratio of their connection rates is the inverse ratio of their CPU per connection. Each round
reports both rates, their ratio and each proxy's CPU µs per connection (user + system of its process tree);
the medians follow. An A/A run on 2026-12-02 measured 0.986-1.007 (median 0.996) over 5 rounds.
"""

from __future__ import annotations

import argparse
import os
import re
import statistics
import subprocess
import sys
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path

import fixtures
import loads
import psutil
from bench_conn import PYTHON, REPO_DIR, cpu_split, export_ref, start_relay
from fixtures import BENCH_DIR, Ports, Processes, Target

CPUS = sorted(os.sched_getaffinity(0))
PROXY_CPUS = str(CPUS[-1])
LOAD_CPUS = ",".join(str(c) for c in CPUS[:-1]) or PROXY_CPUS
REQUESTS = re.compile(r"(\d+) requests in")


def command(spec: str, tmp: Path, workers: int) -> tuple[str, list[str]]:
    """A target spec (floor, skiff, ref:GIT-REF, dir:PATH) as (name, argv)."""
    kind, _, where = spec.partition(":")
    if kind == "floor":
        return "floor", [PYTHON, str(BENCH_DIR / "floor_relay.py")]
    if kind == "skiff":
        return f"skiff-w{workers}", [PYTHON, str(REPO_DIR / "supervisor.py")]
    if kind == "ref" and where:
        into = tmp / f"ref-{len(list(tmp.iterdir()))}"
        into.mkdir()
        return f"{export_ref(where, into)}-w{workers}", [PYTHON, str(into / "supervisor.py")]
    if kind == "dir" and where:
        return f"dir-w{workers}", [PYTHON, str(Path(where).resolve() / "supervisor.py")]
    raise SystemExit(f"bench_pair: unknown target {spec!r} (floor, skiff, ref:GIT-REF, dir:PATH)")


def pin_tree(pid: int, cpus: str) -> None:
    subprocess.run(["taskset", "-a", "-c", "-p", cpus, str(pid)], capture_output=True, check=True)
    for child in psutil.Process(pid).children(recursive=True):
        subprocess.run(["taskset", "-a", "-c", "-p", cpus, str(child.pid)], capture_output=True, check=False)


def one_round(pair: list[Target], duration: int) -> list[tuple[float, float]]:
    """Both loads at once: (connections per second, CPU µs per connection) for each target."""
    before = [cpu_split(t.pid) for t in pair if t.pid is not None]
    wrks = [subprocess.Popen(["taskset", "-c", LOAD_CPUS, "wrk", "-t1", "-c50", f"-d{duration}s", "-H",
                              "Connection: close", f"http://127.0.0.1:{t.ports.http}/"],
                             stdout=subprocess.PIPE, text=True) for t in pair]
    outs = [w.communicate(timeout=duration + loads.SLACK_S)[0] for w in wrks]
    after = [cpu_split(t.pid) for t in pair if t.pid is not None]
    result = []
    for out, b, a in zip(outs, before, after, strict=True):
        m = REQUESTS.search(out)
        if m is None:
            raise SystemExit(f"bench_pair: wrk printed no request count:\n{out}")
        done = int(m.group(1))
        result.append((done / duration, sum(x - y for x, y in zip(a, b, strict=True)) / max(done, 1) * 1e6))
    return result


@dataclass(frozen=True)
class Pair:
    """Two targets' paired rounds: per round (rate a, CPU µs/conn a, rate b, CPU µs/conn b)."""

    names: tuple[str, str]
    rows: list[tuple[float, float, float, float]]

    @property
    def ratios(self) -> list[float]:
        return [a / b for a, _, b, _ in self.rows]

    def summary(self) -> str:
        med = [statistics.median(r[i] for r in self.rows) for i in range(4)]
        a, b = self.names
        ratios = self.ratios
        return (f"median of {len(self.rows)}: {a} {med[0]:,.0f}/s {med[1]:.1f} µs/conn; {b} {med[2]:,.0f}/s "
                f"{med[3]:.1f} µs/conn; rate ratio {a}/{b} {statistics.median(ratios):.3f} "
                f"(range {min(ratios):.3f}-{max(ratios):.3f})")


def measure(specs: tuple[str, str], workers: int, rounds: int, duration: int, base_port: int,
            out_dir: Path) -> Pair:
    """Start nginx and both targets, run the paired rounds, stop everything it started (on failure too)."""
    procs = Processes(out_dir)
    try:
        with tempfile.TemporaryDirectory(prefix="skiff-pair-") as tmp_name:
            tmp = Path(tmp_name)
            backends = Ports(base_port, base_port + 1, base_port + 2)
            fixtures.start_nginx(procs, tmp, backends.http, {})
            pin_tree(procs.started[-1][1].pid, LOAD_CPUS)
            pair: list[Target] = []
            for i, spec in enumerate(specs, start=1):
                name, cmd = command(spec, tmp, workers)
                if any(t.name == name for t in pair):
                    name += "'"
                ports = Ports(base_port + 100 * i, base_port + 100 * i + 1, base_port + 100 * i + 2)
                fixtures.require_free(list(ports.all()))
                pair.append(start_relay(procs, tmp, name, ["taskset", "-c", PROXY_CPUS, *cmd],
                                        1 if spec == "floor" else workers, ports, backends, {}))
            time.sleep(1.0)
            rows: list[tuple[float, float, float, float]] = []
            for rnd in range(rounds):
                (rate_a, cpu_a), (rate_b, cpu_b) = one_round(pair, duration)
                rows.append((rate_a, cpu_a, rate_b, cpu_b))
                print(f"round {rnd + 1}: {pair[0].name} {rate_a:,.0f}/s {cpu_a:.1f} µs/conn   "
                      f"{pair[1].name} {rate_b:,.0f}/s {cpu_b:.1f} µs/conn   ratio {rate_a / rate_b:.3f}", flush=True)
                time.sleep(0.5)
            return Pair((pair[0].name, pair[1].name), rows)
    finally:
        procs.stop_all()


def main(argv: list[str]) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("a")
    p.add_argument("b")
    p.add_argument("--workers", type=int, default=1, help="-w for skiff, ref: and dir: targets (default 1)")
    p.add_argument("--rounds", type=int, default=5)
    p.add_argument("--duration", type=int, default=3)
    p.add_argument("--base-port", type=int, default=27000)
    args = p.parse_args(argv)
    out_dir = BENCH_DIR / "out" / f"pair-{time.strftime('%Y%m%d-%H%M%S')}"
    out_dir.mkdir(parents=True)
    try:
        pair = measure((args.a, args.b), args.workers, args.rounds, args.duration, args.base_port, out_dir)
    except KeyboardInterrupt:
        print("bench_pair: interrupted; stopping everything it started", file=sys.stderr)
        return 130
    print(pair.summary())
    return 0


if __name__ == "__main__":
    raise SystemExit(main(sys.argv[1:]))
