"""What a /metrics scrape costs the supervisor's loop, and what crosses the worker channels per second.

Starts skiff (from this checkout, or `--root` another one, e.g. an export of an older commit) with `--apps` apps
of `--targets` targets each, `-w --workers`, and `--metrics`; drives one connection through every app so every
counter has a value; then measures, on the supervisor process only (a render child's CPU is reported apart):

1. channel: bytes the supervisor reads per second while nothing is scraped (`rchar` in /proc/PID/io; the
   worker channels are all it reads then).
2. fresh scrapes: `--scrapes` scrapes, each more than a second after the last (so none is served from a
   cache): the supervisor's own CPU seconds per scrape, the wall time of a scrape, and the longest delay a
   /healthz probe (every 5 ms, another connection) saw while a scrape ran. The supervisor has one loop, so the
   probe's delay is what a scrape costs everything else the supervisor does. Then /status the same way.
3. loop under load: `--scrapers` clients scraping back to back for `--seconds`: scrapes done, supervisor CPU
   per scrape, /healthz p50/max, and a held connection's echo p50/max through the proxy.

    python bench/scrape_cost.py                        # this checkout, 2,000 apps x 3 targets, 2 workers
    python bench/scrape_cost.py --root /tmp/skiff-old  # the same against another tree (same venv)

Traffic goes to 127.0.0.1 only; every process started here is stopped by PID at the end.
"""

from __future__ import annotations

import argparse
import contextlib
import random
import re
import shutil
import signal
import socket
import statistics
import subprocess
import sys
import tempfile
import threading
import time
from collections.abc import Iterator
from pathlib import Path

import orjson
import psutil

HERE = Path(__file__).resolve().parent.parent
READY_TIMEOUT = 120.0


def free_ports(n: int) -> list[int]:
    """`n` ports below the ephemeral range (other processes' outgoing connections take ports from it), each
    free right now, from a random start."""
    ports: list[int] = []
    port = random.randrange(10000, 20000)
    while len(ports) < n and port < 32000:
        with socket.socket() as s:
            try:
                s.bind(("127.0.0.1", port))
                ports.append(port)
            except OSError:
                pass
        port += 1
    if len(ports) < n:
        raise SystemExit(f"not {n} free ports below 32000")
    return ports


def http_get(port: int, path: str, timeout: float = 30.0) -> tuple[int, bytes]:
    with socket.create_connection(("127.0.0.1", port), timeout=timeout) as sock:
        sock.sendall(f"GET {path} HTTP/1.0\r\n\r\n".encode())
        chunks = []
        while chunk := sock.recv(1 << 20):
            chunks.append(chunk)
    raw = b"".join(chunks)
    head, _, body = raw.partition(b"\r\n\r\n")
    status = int(head.split(b" ", 2)[1]) if head else 0
    return status, body


def own_cpu(proc: psutil.Process) -> float:
    times = proc.cpu_times()
    return times.user + times.system


def child_cpu(proc: psutil.Process) -> float:
    times = proc.cpu_times()
    return times.children_user + times.children_system


class Prober:
    """/healthz every `interval` s on its own connections; records each answer's latency and when it was sent."""

    def __init__(self, port: int, interval: float = 0.005) -> None:
        self.port = port
        self.interval = interval
        self.samples: list[tuple[float, float]] = []  # (sent at, seconds)
        self.failures = 0
        self.stopped = threading.Event()
        self.thread = threading.Thread(target=self.run, daemon=True)

    def run(self) -> None:
        while not self.stopped.is_set():
            started = time.monotonic()
            try:
                status, _ = http_get(self.port, "/healthz", timeout=10)
                if status != 200:
                    self.failures += 1
            except OSError:
                self.failures += 1
            self.samples.append((started, time.monotonic() - started))
            self.stopped.wait(self.interval)

    def between(self, start: float, end: float) -> list[float]:
        return [s for t, s in self.samples if start <= t <= end]


class Echoer:
    """One held connection through the proxy, echoing a byte every `interval` s."""

    def __init__(self, port: int, interval: float = 0.005) -> None:
        self.sock = socket.create_connection(("127.0.0.1", port), timeout=10)
        self.interval = interval
        self.samples: list[float] = []
        self.failures = 0
        self.stopped = threading.Event()
        self.thread = threading.Thread(target=self.run, daemon=True)

    def run(self) -> None:
        while not self.stopped.is_set():
            started = time.monotonic()
            try:
                self.sock.sendall(b"x")
                if self.sock.recv(1) != b"x":
                    self.failures += 1
            except OSError:
                self.failures += 1
                return
            self.samples.append(time.monotonic() - started)
            self.stopped.wait(self.interval)


def ms(values: list[float], q: float) -> float:
    if not values:
        return float("nan")
    ordered = sorted(values)
    return 1000 * ordered[min(len(ordered) - 1, int(q * len(ordered)))]


@contextlib.contextmanager
def started(argv: list[str], cwd: Path, log: Path) -> Iterator[subprocess.Popen[bytes]]:
    with open(log, "wb") as out:
        proc = subprocess.Popen(argv, cwd=cwd, stdout=out, stderr=subprocess.STDOUT)
    try:
        yield proc
    finally:
        if proc.poll() is None:
            proc.send_signal(signal.SIGTERM)
            try:
                proc.wait(30)
            except subprocess.TimeoutExpired:
                for child in psutil.Process(proc.pid).children(recursive=True):
                    with contextlib.suppress(psutil.Error):
                        child.kill()
                proc.kill()
                proc.wait()


def wait_for_line(log: Path, text: str, proc: subprocess.Popen[bytes], timeout: float) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if text in log.read_text(errors="replace"):
            return
        if proc.poll() is not None:
            raise SystemExit(f"exited ({proc.returncode}) before {text!r}:\n{log.read_text()[-2000:]}")
        time.sleep(0.1)
    raise SystemExit(f"timed out waiting for {text!r}")


def channel_bytes_per_second(pid: int, out: Path, seconds: float) -> float | str:
    """What the supervisor receives per second with nothing scraped: all of it comes over the worker channels
    (socket reads do not show in /proc/PID/io, so strace counts the recvfrom results)."""
    if shutil.which("strace") is None:
        return "n/a (no strace)"
    tracer = subprocess.Popen(["strace", "-qq", "-e", "trace=recvfrom,recvmsg", "-o", str(out), "-p", str(pid)],
                              stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    time.sleep(seconds)
    tracer.send_signal(signal.SIGINT)
    tracer.wait(10)
    received = sum(int(m.group(1)) for m in re.finditer(r"= (\d+)$", out.read_text(), re.M))
    return round(received / seconds)


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--root", type=Path, default=HERE, help="the skiff tree to run (default: this one)")
    parser.add_argument("--apps", type=int, default=2000)
    parser.add_argument("--targets", type=int, default=3)
    parser.add_argument("--workers", type=int, default=2)
    parser.add_argument("--scrapes", type=int, default=5, help="fresh (uncached) scrapes to time")
    parser.add_argument("--scrapers", type=int, default=4, help="clients scraping back to back")
    parser.add_argument("--seconds", type=float, default=10.0, help="how long the back-to-back scrapers run")
    args = parser.parse_args()

    every = free_ports(args.targets + args.apps + 1)  # one call: each port distinct
    targets, ports, metrics = every[:args.targets], every[args.targets:-1], every[-1]
    with tempfile.TemporaryDirectory(prefix="skiff-scrape-") as tmp:
        work = Path(tmp)
        config = work / "config.json"
        config.write_bytes(orjson.dumps({"Apps": [
            {"Name": f"app-{i:05d}", "Ports": [port], "Targets": [f"127.0.0.1:{t}" for t in targets]}
            for i, port in enumerate(ports)]}))
        echo_argv = [sys.executable, "-m", "tester.echo", *(f"127.0.0.1:{t}" for t in targets)]
        skiff_argv = [sys.executable, str(args.root / "supervisor.py"), "-c", str(config), "-w", str(args.workers),
                      "--bind", "127.0.0.1", "--grace", "5", "--no-watch", "--metrics", f"127.0.0.1:{metrics}"]
        with started(echo_argv, HERE, work / "echo.log"), \
                started(skiff_argv, args.root, work / "skiff.log") as skiff:
            wait_for_line(work / "skiff.log", "ready: config v1", skiff, READY_TIMEOUT)
            supervisor = psutil.Process(skiff.pid)
            failed = 0
            for port in ports:  # one connection per app: every app's counters have a value
                try:
                    with socket.create_connection(("127.0.0.1", port), timeout=2) as sock:
                        sock.sendall(b"hello")
                        sock.shutdown(socket.SHUT_WR)
                        while sock.recv(4096):
                            pass
                except OSError:
                    failed += 1
            time.sleep(2.0)  # the last counters settle (and, before, reach the supervisor)
            report: dict[str, object] = {"root": str(args.root), "apps": args.apps, "targets": args.targets,
                                         "workers": args.workers, "warm_up_failures": failed}

            # 1. channel bytes per second, nothing scraped
            report["channel_bytes_per_s"] = channel_bytes_per_second(skiff.pid, work / "strace.log", 5.0)

            # 2. fresh scrapes, one at a time, each with a /healthz prober running beside it
            prober = Prober(metrics)
            prober.thread.start()
            time.sleep(0.5)
            cpu, walls, delays, sizes, child = [], [], [], [], []
            for _ in range(args.scrapes):
                time.sleep(1.2)
                c0, k0, t0 = own_cpu(supervisor), child_cpu(supervisor), time.monotonic()
                status, body = http_get(metrics, "/metrics")
                t1 = time.monotonic()
                time.sleep(0.05)  # a reaped render child's CPU shows in children_*
                assert status == 200, status
                cpu.append(own_cpu(supervisor) - c0)
                child.append(child_cpu(supervisor) - k0)
                walls.append(t1 - t0)
                sizes.append(len(body))
                delays.append(max(prober.between(t0, t1), default=0.0))
            prober.stopped.set()
            prober.thread.join()
            report["fresh_scrape"] = {
                "body_bytes": sizes[-1],
                # CPU times tick in 10 ms: a mean over the scrapes, not a median of ticks
                "supervisor_cpu_ms_mean": round(1000 * sum(cpu) / len(cpu), 1),
                "render_child_cpu_ms_mean": round(1000 * sum(child) / len(child), 1),
                "wall_ms_median": round(1000 * statistics.median(walls), 1),
                "healthz_worst_ms_during_scrape_median": round(1000 * statistics.median(delays), 1),
                "healthz_worst_ms_during_scrape_max": round(1000 * max(delays), 1),
            }

            # 2b. /status, one at a time: it is answered on the loop
            status_wall = []
            c0 = own_cpu(supervisor)
            for _ in range(20):
                t0 = time.monotonic()
                assert http_get(metrics, "/status")[0] == 200
                status_wall.append(time.monotonic() - t0)
            report["status"] = {"supervisor_cpu_ms_mean": round(1000 * (own_cpu(supervisor) - c0) / 20, 1),
                                "wall_ms_median": round(1000 * statistics.median(status_wall), 1)}

            # 3. back-to-back scrapers, /healthz and a held connection beside them
            baseline = Prober(metrics)
            baseline.thread.start()
            time.sleep(2.0)
            baseline.stopped.set()
            baseline.thread.join()
            done = [0]
            stop = threading.Event()

            def scrape_loop() -> None:
                while not stop.is_set():
                    if http_get(metrics, "/metrics")[0] == 200:
                        done[0] += 1

            prober = Prober(metrics)
            echoer = Echoer(ports[0])
            scrapers = [threading.Thread(target=scrape_loop, daemon=True) for _ in range(args.scrapers)]
            c0, k0 = own_cpu(supervisor), child_cpu(supervisor)
            for thread in (prober.thread, echoer.thread, *scrapers):
                thread.start()
            time.sleep(args.seconds)
            stop.set()
            prober.stopped.set()
            echoer.stopped.set()
            for thread in (prober.thread, echoer.thread, *scrapers):
                thread.join(60)
            spent = own_cpu(supervisor) - c0
            healthz = [s for _, s in prober.samples]
            base = [s for _, s in baseline.samples]
            report["scrapers"] = {
                "scrapers": args.scrapers, "seconds": args.seconds, "scrapes": done[0],
                "supervisor_cpu_ms_per_scrape": round(1000 * spent / max(done[0], 1), 1),
                "supervisor_cpu_share": round(spent / args.seconds, 2),
                "render_child_cpu_s": round(child_cpu(supervisor) - k0, 2),
                "healthz_idle_ms_p50_max": [round(ms(base, 0.5), 1), round(ms(base, 1.0), 1)],
                "healthz_ms_p50_max": [round(ms(healthz, 0.5), 1), round(ms(healthz, 1.0), 1)],
                "healthz_answers": len(healthz), "healthz_failures": prober.failures,
                "echo_ms_p50_max": [round(ms(echoer.samples, 0.5), 1), round(ms(echoer.samples, 1.0), 1)],
                "echoes": len(echoer.samples), "echo_failures": echoer.failures,
            }
            echoer.sock.close()
            status, body = http_get(metrics, "/metrics")
            renders = [line for line in body.decode().splitlines() if line.startswith("skiff_metrics_renders_total")]
            report["renders_total"] = renders[0].split()[-1] if renders else "n/a"
    print(orjson.dumps(report, option=orjson.OPT_INDENT_2).decode())
    return 0


if __name__ == "__main__":
    signal.signal(signal.SIGTERM, lambda signum, frame: sys.exit(1))  # stop what was started, then leave
    sys.exit(main())
