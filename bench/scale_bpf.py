"""Scale of BPF steering against one socket per port: start time and reload latency with thousands of ports.

Runs `supervisor.py -w 2` (each scenario --repeat times, medians shown) in a fresh network namespace of its own
(127.0.0.1 only), with named echo targets on two local ports, and prints a markdown table. Not part of the test
suite; needs root, bpffs and sk_lookup.

    .venv/bin/python bench/scale_bpf.py    # bpf: 10, 1,000, 5,000, 10,000 ports; reuseport: 10, 1,000, 5,000

Per scenario: N ports in N/10 apps (10 ports each); start (process start -> `ready:` line); then a reload that
removes half the ports and adds as many new ones, triggered by SIGHUP (`--no-watch`, so the trigger instant is
known): time to the `config v2 applied by 2/2 workers in X ms` line (and X itself), and time until a newly added
port serves a full round trip. Afterwards an added port serves and a removed one is refused, and `ss -ltn` shows
how many listening sockets skiff holds (bpf: 2 whatever N; reuseport: 2 per port).
"""

from __future__ import annotations

import argparse
import contextlib
import signal
import socket
import statistics
import subprocess
import sys
import tempfile
import time
import uuid
from dataclasses import dataclass
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
sys.path[:0] = [str(REPO), str(REPO / "tests" / "bpf")]

from netns_client import NamedTargets, Namespace, Process, Supervisor, split_reply, stop_all, write_config  # noqa: E402

TARGET_PORTS = {"echo-1": 30001, "echo-2": 30002}  # below the ephemeral range: never the steering port
FIRST_PORT = 10000  # the first config's ports: FIRST_PORT ..; a reload adds ports from ADDED_PORT on
ADDED_PORT = 20000
READY_TIMEOUT = 180.0
RELOAD_TIMEOUT = 120.0


@dataclass
class Result:
    mode: str
    ports: int
    start_s: float = 0.0
    skiff_listeners: int = 0
    apply_s: float = 0.0
    apply_logged_ms: float = 0.0
    serve_s: float = 0.0
    added_serves: bool = False
    removed_refused: bool = False
    error: str = ""


def apps_for(ports: list[int]) -> list[tuple[str, list[int], list[str]]]:
    targets = [f"127.0.0.1:{p}" for p in TARGET_PORTS.values()]
    return [(f"app-{i // 10:05d}", ports[i:i + 10], targets) for i in range(0, len(ports), 10)]


def first_roundtrip(ns: Namespace, port: int, since: float, within: float) -> float:
    """Seconds from `since` until port serves a whole round trip; polls with fresh sockets (bounded)."""
    pool: list[socket.socket] = []
    deadline = since + within
    for _ in range(200_000):
        if time.monotonic() > deadline:
            break
        if not pool:
            pool = ns.sockets(500)
        sock = pool.pop()
        sock.settimeout(max(0.1, deadline - time.monotonic()))
        try:
            sock.connect(("127.0.0.1", port))
            sock.sendall(b"probe")
            sock.shutdown(1)
            data = b""
            while chunk := sock.recv(4096):
                data += chunk
            if split_reply(data)[1] == b"probe":
                return time.monotonic() - since
        except OSError:
            pass
        finally:
            sock.close()
    for sock in pool:
        sock.close()
    raise TimeoutError(f"port {port} did not serve within {within} s")


def run(ns: Namespace, mode: str, count: int, pin_root: Path, workdir: Path) -> Result:
    result = Result(mode, count)
    config = workdir / f"{mode}-{count}.json"
    old = list(range(FIRST_PORT, FIRST_PORT + count))
    removed, kept = old[: count // 2], old[count // 2:]
    added = list(range(ADDED_PORT, ADDED_PORT + len(removed)))
    write_config(config, apps_for(old))
    args = ["-w", "2", "--bind", "127.0.0.1", "--grace", "2", "--no-watch", "--steering", mode]
    if mode == "bpf":
        args += ["--instance", f"scale-{uuid.uuid4().hex[:8]}", "--bpf-pin-root", str(pin_root)]
    proxy = Supervisor(ns, config, *args, wait_ready=False)
    try:
        ready_at, _ = proxy.wait_log(r"ready: config v1", timeout=READY_TIMEOUT)
        result.start_s = ready_at - proxy.started
        result.skiff_listeners = sum(1 for _, port in ns.listening() if port not in TARGET_PORTS.values())

        write_config(config, apps_for(kept + added))
        probe = added[-1]
        sent = time.monotonic()
        proxy.proc.send_signal(signal.SIGHUP)
        result.serve_s = first_roundtrip(ns, probe, sent, RELOAD_TIMEOUT)
        applied_at, match = proxy.wait_log(r"config v2 applied by 2/2 workers in (\d+) ms", timeout=RELOAD_TIMEOUT)
        result.apply_s = applied_at - sent
        result.apply_logged_ms = float(match.group(1))

        result.added_serves = ns.roundtrip(added[0], b"added")[1] == b"added"
        result.removed_refused = ns.outcome(removed[0]) == "refused"
    except (AssertionError, OSError) as exc:
        result.error = str(exc).splitlines()[0][:200]
    finally:
        proxy.stop(timeout=60)
    return result


def median_of(runs: list[Result]) -> Result:
    """Per-field medians of repeated runs; the first failure, if any run failed."""
    failed = [r for r in runs if r.error]
    if failed:
        return failed[0]

    def mid(values: list[float]) -> float:
        return statistics.median(values)

    return Result(runs[0].mode, runs[0].ports, mid([r.start_s for r in runs]), runs[-1].skiff_listeners,
                  mid([r.apply_s for r in runs]), mid([r.apply_logged_ms for r in runs]),
                  mid([r.serve_s for r in runs]), all(r.added_serves for r in runs),
                  all(r.removed_refused for r in runs))


def table(results: list[Result]) -> str:
    rows = [
        "| mode | ports | start → ready | skiff listeners | reload (-half/+half) SIGHUP → applied line "
        "| applied line says | SIGHUP → added port serves | added serves / removed refused |",
        "|---|---:|---:|---:|---:|---:|---:|---|",
    ]
    for r in results:
        if r.error:
            rows.append(f"| {r.mode} | {r.ports:,} | FAILED: {r.error} | | | | | |")
            continue
        rows.append(
            f"| {r.mode} | {r.ports:,} | {r.start_s * 1000:,.0f} ms | {r.skiff_listeners:,} | "
            f"{r.apply_s * 1000:,.0f} ms | {r.apply_logged_ms:,.0f} ms | {r.serve_s * 1000:,.0f} ms | "
            f"{'yes' if r.added_serves else 'NO'} / {'yes' if r.removed_refused else 'NO'} |"
        )
    return "\n".join(rows)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--bpf", type=int, nargs="*", default=[10, 1000, 5000, 10000])
    parser.add_argument("--reuseport", type=int, nargs="*", default=[10, 1000, 5000])
    parser.add_argument("--repeat", type=int, default=3, help="runs per scenario; the table shows medians")
    args = parser.parse_args(argv)

    subprocess.run(["make", "-s", "-C", str(REPO / "bpf")], check=True, timeout=60)
    name = f"skiff-scale-{uuid.uuid4().hex[:8]}"
    workdir = Path(tempfile.mkdtemp(prefix="skiff-scale-"))
    pin_root = workdir / "bpffs"
    pin_root.mkdir()
    started: list[Process] = []
    results: list[Result] = []
    mounted = False
    subprocess.run(["ip", "netns", "add", name], check=True, timeout=10)
    try:
        subprocess.run(["ip", "-n", name, "link", "set", "lo", "up"], check=True, timeout=10)
        subprocess.run(["mount", "-t", "bpf", "bpf", str(pin_root)], check=True, timeout=10)
        mounted = True
        ns = Namespace(name)
        started.append(NamedTargets(ns, TARGET_PORTS))
        for mode, counts in (("bpf", args.bpf), ("reuseport", args.reuseport)):
            for count in counts:
                runs = []
                for _ in range(max(1, min(args.repeat, 10))):
                    runs.append(run(ns, mode, count, pin_root, workdir))
                    print(f"{mode} {count}: {runs[-1]}", file=sys.stderr, flush=True)
                results.append(median_of(runs))
    finally:
        stop_all(started)
        if mounted:
            subprocess.run(["umount", "-l", str(pin_root)], check=False, timeout=10)
        subprocess.run(["ip", "netns", "del", name], check=False, timeout=10)
        with contextlib.suppress(OSError):
            for path in workdir.glob("*.json"):
                path.unlink()
            pin_root.rmdir()
            workdir.rmdir()
    print(table(results))
    return 0 if results and not any(r.error for r in results) else 1


if __name__ == "__main__":
    sys.exit(main())
