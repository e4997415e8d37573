"""What the status page costs the supervisor's loop: CPU per second with 0 and with `--viewers` /events streams.

Starts skiff from this checkout with `--apps` apps of `--targets` targets each (2,000 x 3 by default) and
`--metrics`, then measures the supervisor process only, each phase for `--seconds`:

1. idle: no viewer (the model still ticks once a second, reading only the gauges).
2. viewers: `--viewers` clients hold /events open; no traffic (deltas carry only the time).
3. viewers + traffic: the same while a client opens `--rate` connections a second spread over every app, so
   each delta carries a few hundred changed cells.

For each: supervisor CPU ms per second, the longest /healthz answer seen meanwhile (the loop's stall), and the
bytes a viewer received per second; plus the snapshot's size and what a new viewer costs.

    python bench/page_cost.py            # prints one JSON report

Traffic goes to 127.0.0.1 only; every process started here is stopped by PID at the end.
"""

from __future__ import annotations

import argparse
import socket
import sys
import tempfile
import threading
import time
from pathlib import Path

import orjson
import psutil
from scrape_cost import HERE, READY_TIMEOUT, Prober, free_ports, own_cpu, started, wait_for_line


class Viewer:
    """A raw /events client counting what it receives."""

    def __init__(self, port: int) -> None:
        self.sock = socket.create_connection(("127.0.0.1", port), timeout=30)
        self.sock.sendall(b"GET /events HTTP/1.0\r\n\r\n")
        self.received = 0
        self.snapshot_at: float | None = None
        self.started = time.monotonic()
        self.stopped = threading.Event()
        self.thread = threading.Thread(target=self.run, daemon=True)
        self.thread.start()

    def run(self) -> None:
        seen = b""
        while not self.stopped.is_set():
            try:
                chunk = self.sock.recv(1 << 20)
            except OSError:
                return
            if not chunk:
                return
            self.received += len(chunk)
            if self.snapshot_at is None:
                seen = (seen + chunk)[-1 << 22:]
                if b"event: delta" in seen:  # the snapshot is whole once the first delta follows it
                    self.snapshot_at = time.monotonic()

    def close(self) -> None:
        self.stopped.set()
        self.sock.close()
        self.thread.join(5)


def traffic(ports: list[int], rate: float, stop: threading.Event) -> None:
    i = 0
    while not stop.is_set():
        started_at = time.monotonic()
        try:
            with socket.create_connection(("127.0.0.1", ports[i % len(ports)]), timeout=2) as sock:
                sock.sendall(b"hello")
                sock.shutdown(socket.SHUT_WR)
                while sock.recv(4096):
                    pass
        except OSError:
            pass
        i += 37  # hop across the apps
        stop.wait(max(0.0, 1 / rate - (time.monotonic() - started_at)))


def phase(supervisor: psutil.Process, metrics: int, seconds: float, viewers: list[Viewer]) -> dict[str, float]:
    prober = Prober(metrics, interval=0.02)
    received = sum(v.received for v in viewers)
    c0, t0 = own_cpu(supervisor), time.monotonic()
    prober.thread.start()
    time.sleep(seconds)
    prober.stopped.set()
    prober.thread.join()
    spent, wall = own_cpu(supervisor) - c0, time.monotonic() - t0
    got = sum(v.received for v in viewers) - received
    return {"supervisor_cpu_ms_per_s": round(1000 * spent / wall, 1),
            "healthz_max_ms": round(1000 * max((s for _, s in prober.samples), default=0.0), 1),
            "bytes_per_viewer_per_s": round(got / wall / len(viewers)) if viewers else 0}


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--apps", type=int, default=2000)
    parser.add_argument("--targets", type=int, default=3)
    parser.add_argument("--workers", type=int, default=2)
    parser.add_argument("--viewers", type=int, default=10)
    parser.add_argument("--rate", type=float, default=200.0, help="connections a second in phase 3")
    parser.add_argument("--seconds", type=float, default=10.0)
    args = parser.parse_args()

    every = free_ports(args.targets + args.apps + 1)
    targets, ports, metrics = every[:args.targets], every[args.targets:-1], every[-1]
    with tempfile.TemporaryDirectory(prefix="skiff-page-") as tmp:
        work = Path(tmp)
        config = work / "config.json"
        config.write_bytes(orjson.dumps({"Apps": [
            {"Name": f"app-{i:05d}", "Ports": [port], "Targets": [f"127.0.0.1:{t}" for t in targets]}
            for i, port in enumerate(ports)]}))
        echo_argv = [sys.executable, "-m", "tester.echo", *(f"127.0.0.1:{t}" for t in targets)]
        skiff_argv = [sys.executable, str(HERE / "supervisor.py"), "-c", str(config), "-w", str(args.workers),
                      "--bind", "127.0.0.1", "--grace", "5", "--no-watch", "--metrics", f"127.0.0.1:{metrics}"]
        with started(echo_argv, HERE, work / "echo.log"), started(skiff_argv, HERE, work / "skiff.log") as skiff:
            wait_for_line(work / "skiff.log", "ready: config v1", skiff, READY_TIMEOUT)
            supervisor = psutil.Process(skiff.pid)
            time.sleep(2.0)
            report: dict[str, object] = {"apps": args.apps, "targets": args.targets, "workers": args.workers,
                                         "viewers": args.viewers, "seconds": args.seconds}
            report["idle"] = phase(supervisor, metrics, args.seconds, [])

            c0 = own_cpu(supervisor)
            first = Viewer(metrics)
            while first.snapshot_at is None and time.monotonic() - first.started < 30:
                time.sleep(0.05)
            report["first_viewer"] = {"snapshot_bytes": first.received,
                                      "supervisor_cpu_ms": round(1000 * (own_cpu(supervisor) - c0), 1)}
            viewers = [first, *(Viewer(metrics) for _ in range(args.viewers - 1))]
            time.sleep(3.0)  # every viewer has its snapshot
            report["viewers_no_traffic"] = phase(supervisor, metrics, args.seconds, viewers)

            stop = threading.Event()
            sender = threading.Thread(target=traffic, args=(ports, args.rate, stop), daemon=True)
            sender.start()
            time.sleep(1.0)
            report["viewers_with_traffic"] = phase(supervisor, metrics, args.seconds, viewers)
            stop.set()
            sender.join(10)
            for viewer in viewers:
                viewer.close()
    print(orjson.dumps(report, option=orjson.OPT_INDENT_2).decode())
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
