"""What the supervisor tells people about itself: /metrics, /healthz, /status, the status page (/ and /events,
control/page.py and control/events.py) and the SIGUSR1 status line.

Reads the supervisor's state; changes none of it. psutil observes the workers here (RSS, CPU); it never drives
control flow. Per-app figures come from the shared counter table (proxy/counters.py): /status reads the few
columns it shows on the loop; /metrics is rendered in a child (control/metrics.py).
"""

from __future__ import annotations

import datetime
import selectors
import time
from pathlib import Path
from typing import TYPE_CHECKING, Any

import orjson
import psutil
from prometheus_client import CONTENT_TYPE_LATEST

from control.events import MAX_STREAMS, EventStream
from control.handle import WorkerState
from control.http import MAX_CONNECTIONS, HttpServer, render
from control.metrics import Job, MetricsCache
from control.page import PageModel
from proxy import failpoints
from proxy.counters import TLS_KEY, CellMap
from proxy.exposition import TOTAL, AppCells, ProcessInfo, current_apps, listing, status_apps
from proxy.exposition import render as render_metrics
from proxy.tlsexposition import tls_families

if TYPE_CHECKING:
    from control.arbiter import Supervisor

PAGE = Path(__file__).with_name("page.html")


def rfc3339(epoch: float) -> str:
    return datetime.datetime.fromtimestamp(epoch, datetime.UTC).isoformat(timespec="milliseconds").replace(
        "+00:00", "Z")


class Observer:
    def __init__(self, supervisor: Supervisor) -> None:
        self.supervisor = supervisor
        self.metrics: MetricsCache | None = None
        self.http: HttpServer | None = None
        self.events: EventStream | None = None
        self.page = b""
        self.listed: tuple[CellMap | None, list[AppCells]] = (None, [])  # current_apps of the last cell map

    def serve(self, address: str, selector: selectors.BaseSelector,
              max_connections: int = MAX_CONNECTIONS, max_streams: int = MAX_STREAMS) -> HttpServer:
        """The HTTP server in the supervisor's wait point (raises HttpError when it cannot listen)."""
        self.page = PAGE.read_bytes()
        self.metrics = MetricsCache(selector, self.metrics_job)
        self.events = EventStream(selector, PageModel(self.supervisor, self.current_apps), max_streams)
        self.http = HttpServer(address, selector, self.serve_http, {"/metrics": self.metrics}, max_connections,
                               {"/events": self.events})
        self.events.start(time.monotonic())
        return self.http

    def serve_http(self, path: str) -> tuple[int, str, bytes]:
        if path == "/healthz":
            problem = self.health_problem()
            return (503, "text/plain", f"unhealthy: {problem}\n".encode()) if problem else (200, "text/plain", b"ok\n")
        if path in ("/", "/index.html"):
            return 200, "text/html; charset=utf-8", self.page
        if path == "/status":
            return 200, "application/json", orjson.dumps(self.status(), option=orjson.OPT_INDENT_2)
        return 404, "text/plain", b"not found: try /, /metrics, /healthz or /status\n"

    def health_problem(self) -> str | None:
        """None when every worker slot serves the current version, else why not."""
        s = self.supervisor
        version = s.snapshot.version
        for slot in range(s.options.workers):
            handle = s.handles.get(slot)
            if handle is None:
                return f"worker {slot} is not running"
            if handle.state is not WorkerState.READY:
                return f"worker {slot} is {handle.state.value}"
            if handle.acked_version != version:
                return f"worker {slot} serves config v{handle.acked_version}, not v{version}"
        return None

    def worker_usage(self) -> dict[int, tuple[float, float]]:
        """slot -> (RSS bytes, CPU seconds)."""
        usage = {}
        for slot, handle in self.supervisor.handles.items():
            try:
                process = psutil.Process(handle.pid)
                times = process.cpu_times()
                usage[slot] = (float(process.memory_info().rss), times.user + times.system)
            except psutil.Error:
                continue
        return usage

    def process_info(self) -> ProcessInfo:
        s = self.supervisor
        status = s.reload_status
        return ProcessInfo(
            version=s.snapshot.version, last_reload_ok=status.ok, last_reload_time=status.at,
            reloads_ok=status.reloads, reloads_failed=status.failures, worker_restarts=s.worker_restarts,
            workers_ready=sum(1 for h in s.handles.values()
                              if h.state is WorkerState.READY and h.acked_version == s.snapshot.version),
            workers_wanted=s.options.workers,
            steering=s.listeners.counters(),
            metrics_renders=self.metrics.renders if self.metrics is not None else 0,
            http_rejected=self.http.rejected if self.http is not None else 0,
        )

    def metrics_job(self) -> Job:
        """Taken in the supervisor when a render starts; the returned job runs in the render child, where the
        config, the cell map and the process figures are this moment's (copy-on-write) and the table is live."""
        s = self.supervisor
        info = self.process_info()  # the BPF counters are read here: the child has no descriptors
        cells, table, current = s.cells, s.counters, self.current_apps()
        source_families = s.source.metrics_text()
        tls_apps = frozenset(a.name for a in s.snapshot.config.apps if a.hostnames)  # TLS: workers/tls.py
        expiry, orders, unrouted = s.certs.expiry(s.snapshot.config, s.snapshot.certs), dict(s.certs.orders), \
            cells.cells.get(TLS_KEY)

        def job() -> bytes:
            reading = table.read(cells.fresh)
            apps = listing(current, cells, reading.counts.__getitem__)
            info.worker_usage = [(slot, rss, cpu) for slot, (rss, cpu) in sorted(self.worker_usage().items())]
            if failpoints.active("metrics-render"):
                raise RuntimeError("failpoint metrics-render: rendering /metrics fails on purpose")
            tls = tls_families(apps, tls_apps, unrouted, reading, expiry, orders) if tls_apps else b""
            return render(200, CONTENT_TYPE_LATEST, render_metrics(apps, reading, info) + tls + source_families)

        return job

    def current_apps(self) -> list[AppCells]:
        """The current config's apps and cells; a reload makes a new cell map, which is when this changes."""
        s = self.supervisor
        if self.listed[0] is not s.cells:
            self.listed = (s.cells, current_apps(s.snapshot.config, s.cells))
        return self.listed[1]

    def status(self) -> dict[str, Any]:
        s = self.supervisor
        info = self.process_info()
        reading = s.counters.read(s.cells.fresh, fields=(TOTAL,))
        apps = status_apps(listing(self.current_apps(), s.cells, reading.counts.__getitem__), reading)
        usage = self.worker_usage()
        status = s.reload_status
        return {
            "version": s.snapshot.version,
            "digest": s.snapshot.digest,
            "healthy": self.health_problem() is None,
            "steering": s.options.steering,
            "bpf": info.steering or None,
            "time": rfc3339(time.time()),
            "last_reload": {"ok": status.ok, "at": status.at, "at_rfc3339": rfc3339(status.at),
                            "error": status.error, "reloads": status.reloads, "failures": status.failures},
            "worker_restarts": s.worker_restarts,
            "config_source": s.source.status(),
            "metrics_renders": info.metrics_renders,
            "http_rejected": info.http_rejected,
            "status_page": None if self.events is None else {
                "viewers": len(self.events.viewers), "rejected": self.events.rejected,
                "dropped": self.events.dropped},
            "workers": [
                {"slot": h.slot, "pid": h.pid, "state": h.state.value, "version": h.acked_version,
                 "rss_bytes": usage.get(h.slot, (0.0, 0.0))[0], "cpu_seconds": usage.get(h.slot, (0.0, 0.0))[1]}
                for h in sorted(s.handles.values(), key=lambda h: h.slot)
            ],
            "apps": apps,
        }

    def status_line(self) -> str:
        s = self.supervisor
        status = s.reload_status
        parts = [f"config v{s.snapshot.version}", "last reload " + ("ok" if status.ok else f"FAILED: {status.error}")]
        counters = s.listeners.counters()
        if counters:
            parts.append("bpf " + " ".join(f"{k} {v}" for k, v in counters.items()))
        usage = self.worker_usage()
        for slot in range(s.options.workers):
            handle = s.handles.get(slot)
            if handle is None:
                parts.append(f"worker {slot} down")
                continue
            shown = f"rss {usage[slot][0] / 2**20:.1f} MiB cpu {usage[slot][1]:.2f} s" if slot in usage else "gone"
            parts.append(f"worker {slot} pid {handle.pid} {handle.state.value} v{handle.acked_version} {shown}")
        return "status: " + "; ".join(parts)
