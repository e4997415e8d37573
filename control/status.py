"""What the supervisor tells people about itself: /metrics, /healthz, /status and the SIGUSR1 status line.

Reads the supervisor's state; changes none of it. psutil observes the workers here (RSS, CPU); it never drives
control flow.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

import orjson
import psutil
from prometheus_client import CONTENT_TYPE_LATEST, generate_latest

from control.handle import WorkerState
from control.metrics import AppReport, ProcessInfo, registry_for, summarize
from proxy import failpoints

if TYPE_CHECKING:
    from control.arbiter import Supervisor


class Observer:
    def __init__(self, supervisor: Supervisor) -> None:
        self.supervisor = supervisor
        self.registry = registry_for(self)

    def serve_http(self, path: str) -> tuple[int, str, bytes]:
        if path == "/metrics":
            if failpoints.active("metrics-render"):
                raise RuntimeError("failpoint metrics-render: rendering /metrics fails on purpose")
            return 200, CONTENT_TYPE_LATEST, generate_latest(self.registry)
        if path == "/healthz":
            problem = self.health_problem()
            return (503, "text/plain", f"unhealthy: {problem}\n".encode()) if problem else (200, "text/plain", b"ok\n")
        if path == "/status":
            return 200, "application/json", orjson.dumps(self.status(), option=orjson.OPT_INDENT_2)
        return 404, "text/plain", b"not found: try /metrics, /healthz or /status\n"

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

    def metrics_view(self) -> tuple[dict[str, AppReport], ProcessInfo]:
        s = self.supervisor
        live = [h.stats["apps"] for h in s.handles.values() if isinstance(h.stats.get("apps"), dict)]
        apps = summarize(s.retired, live, [a.name for a in s.snapshot.config.apps])  # type: ignore[arg-type]
        status = s.reload_status
        info = ProcessInfo(
            version=s.snapshot.version, last_reload_ok=status.ok, last_reload_time=status.at,
            reloads_ok=status.reloads, reloads_failed=status.failures, worker_restarts=s.worker_restarts,
            workers_ready=sum(1 for h in s.handles.values()
                              if h.state is WorkerState.READY and h.acked_version == s.snapshot.version),
            workers_wanted=s.options.workers,
            steering=s.listeners.counters(),
            worker_usage=[(slot, rss, cpu) for slot, (rss, cpu) in sorted(self.worker_usage().items())],
        )
        return apps, info

    def status(self) -> dict[str, Any]:
        s = self.supervisor
        apps, info = self.metrics_view()
        usage = self.worker_usage()
        status = s.reload_status
        return {
            "version": s.snapshot.version,
            "digest": s.snapshot.digest,
            "healthy": self.health_problem() is None,
            "steering": s.options.steering,
            "bpf": info.steering or None,
            "last_reload": {"ok": status.ok, "at": status.at, "error": status.error, "reloads": status.reloads,
                            "failures": status.failures},
            "worker_restarts": s.worker_restarts,
            "config_source": s.source.status(),
            "workers": [
                {"slot": h.slot, "pid": h.pid, "state": h.state.value, "version": h.acked_version,
                 "rss_bytes": usage.get(h.slot, (0.0, 0.0))[0], "cpu_seconds": usage.get(h.slot, (0.0, 0.0))[1]}
                for h in sorted(s.handles.values(), key=lambda h: h.slot)
            ],
            "apps": {
                name: {"active": app["active"], "total": app.get("total", 0),
                       "targets": {t: {"up": v["up"], "active": v["active"]} for t, v in app["live_targets"].items()}}
                for name, app in apps.items()
            },
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
