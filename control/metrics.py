"""Metrics: the workers' counters summed into one view, rendered as Prometheus text.

Workers push plain counters over their channel; the supervisor keeps the last report of each live worker and,
when a worker exits, folds its counters into `retired` so totals never go backwards across respawns.
`merge_counters` is pure and tested with plain values.
"""

from __future__ import annotations

import copy
from collections.abc import Iterable, Iterator
from dataclasses import dataclass, field
from typing import Any

from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily, HistogramMetricFamily, Metric
from prometheus_client.registry import Collector, CollectorRegistry

from workers.routes import CONNECT_BUCKETS

AppReport = dict[str, Any]
# Counters that only go up (summed and kept across worker exits), as opposed to gauges (live workers only).
APP_COUNTERS = ("total", "failed", "failovers", "refused", "bytes_in", "bytes_out")


def merge_counters(into: dict[str, AppReport], apps: dict[str, AppReport]) -> None:
    """Add one worker's monotonic counters (per app and target) into `into`."""
    for name, app in apps.items():
        total = into.setdefault(name, {"connect": {"buckets": [0] * (len(CONNECT_BUCKETS) + 1), "sum": 0.0},
                                       "targets": {}})
        for key in APP_COUNTERS:
            total[key] = total.get(key, 0) + app.get(key, 0)
        buckets = total["connect"]["buckets"]
        for i, n in enumerate(app["connect"]["buckets"]):
            buckets[i] += n
        total["connect"]["sum"] += app["connect"]["sum"]
        for target, t in app["targets"].items():
            tt = total["targets"].setdefault(target, {"total": 0, "errors": {}})
            tt["total"] += t["total"]
            for reason, n in t["errors"].items():
                tt["errors"][reason] = tt["errors"].get(reason, 0) + n


@dataclass
class ProcessInfo:
    """What the supervisor knows of itself, for the per-process metrics."""

    version: int = 1
    last_reload_ok: bool = True
    last_reload_time: float = 0.0
    reloads_ok: int = 0
    reloads_failed: int = 0
    worker_restarts: int = 0
    workers_ready: int = 0
    workers_wanted: int = 0
    steering: dict[str, int] = field(default_factory=dict)
    worker_usage: list[tuple[int, float, float]] = field(default_factory=list)  # slot, rss bytes, cpu seconds


def summarize(retired: dict[str, AppReport], live: Iterable[dict[str, AppReport]],
              current_apps: Iterable[str]) -> dict[str, AppReport]:
    """Per app: counters (retired + live) and gauges (live), limited to the apps of the current config plus any
    app that still has open connections."""
    counters = copy.deepcopy(retired)
    gauges: dict[str, AppReport] = {}
    reports = list(live)
    for apps in reports:
        merge_counters(counters, apps)
        for name, app in apps.items():
            g = gauges.setdefault(name, {"active": 0, "targets": {}})
            g["active"] += app.get("active", 0)
            for target, t in app["targets"].items():
                gt = g["targets"].setdefault(target, {"active": 0, "up": True})
                gt["active"] += t["active"]
                gt["up"] = gt["up"] and t["up"]
    wanted = set(current_apps) | {n for n, g in gauges.items() if g["active"]}
    result = {}
    for name in sorted(wanted):
        app = counters.get(name) or {"connect": {"buckets": [0] * (len(CONNECT_BUCKETS) + 1), "sum": 0.0},
                                     "targets": {}}
        gauge = gauges.get(name, {"active": 0, "targets": {}})
        result[name] = {**app, "active": gauge["active"], "live_targets": gauge["targets"]}
    return result


class SkiffCollector(Collector):
    def __init__(self, source: Any) -> None:
        self.source = source  # has .metrics_view() -> (apps summary, ProcessInfo)

    def collect(self) -> Iterator[Metric]:
        apps, info = self.source.metrics_view()
        yield from app_metrics(apps)
        yield from process_metrics(info)


def app_metrics(apps: dict[str, AppReport]) -> Iterator[Metric]:
    active = GaugeMetricFamily("skiff_connections_active", "Client connections open now", labels=["app"])
    total = CounterMetricFamily("skiff_connections", "Client connections accepted", labels=["app"])
    failed = CounterMetricFamily("skiff_connections_failed",
                                 "Client connections closed because every target failed", labels=["app"])
    failovers = CounterMetricFamily("skiff_failovers", "Connect attempts that moved on to another target",
                                    labels=["app"])
    refused = CounterMetricFamily("skiff_connections_refused",
                                  "Client connections closed at once by a limit (HardLimit, every target at MaxConns)",
                                  labels=["app"])
    received = CounterMetricFamily("skiff_received_bytes", "Bytes received from clients", labels=["app"])
    sent = CounterMetricFamily("skiff_sent_bytes", "Bytes sent to clients", labels=["app"])
    latency = HistogramMetricFamily("skiff_connect_duration_seconds",
                                    "From accept to a connected target (failovers included)", labels=["app"])
    t_active = GaugeMetricFamily("skiff_target_connections_active", "Connections open to a target now",
                                 labels=["app", "target"])
    t_total = CounterMetricFamily("skiff_target_connections", "Successful connects to a target",
                                  labels=["app", "target"])
    t_failures = CounterMetricFamily("skiff_target_connect_failures", "Failed connects to a target by reason",
                                     labels=["app", "target", "reason"])
    t_up = GaugeMetricFamily("skiff_target_up", "1 unless a worker's last connect to the target failed",
                             labels=["app", "target"])
    for name, app in apps.items():
        active.add_metric([name], app["active"])
        total.add_metric([name], app.get("total", 0))
        failed.add_metric([name], app.get("failed", 0))
        failovers.add_metric([name], app.get("failovers", 0))
        refused.add_metric([name], app.get("refused", 0))
        received.add_metric([name], app.get("bytes_in", 0))
        sent.add_metric([name], app.get("bytes_out", 0))
        cumulative, running = [], 0
        for bound, n in zip([*map(str, CONNECT_BUCKETS), "+Inf"], app["connect"]["buckets"], strict=True):
            running += n
            cumulative.append((bound, running))
        latency.add_metric([name], cumulative, app["connect"]["sum"])
        targets = set(app["targets"]) | set(app["live_targets"])
        for target in sorted(targets):
            counted = app["targets"].get(target, {"total": 0, "errors": {}})
            live = app["live_targets"].get(target, {"active": 0, "up": True})
            t_active.add_metric([name, target], live["active"])
            t_total.add_metric([name, target], counted["total"])
            t_up.add_metric([name, target], 1 if live["up"] else 0)
            for reason, n in sorted(counted["errors"].items()):
                t_failures.add_metric([name, target, reason], n)
    yield from (active, total, failed, failovers, refused, received, sent, latency, t_active, t_total, t_failures, t_up)


def process_metrics(info: ProcessInfo) -> Iterator[Metric]:
    yield GaugeMetricFamily("skiff_config_version", "Version of the config being served", value=info.version)
    yield GaugeMetricFamily("skiff_config_last_reload_success", "1 if the last reload was applied, 0 if it failed",
                            value=1 if info.last_reload_ok else 0)
    yield GaugeMetricFamily("skiff_config_last_reload_timestamp_seconds", "When the last reload was tried",
                            value=info.last_reload_time)
    reloads = CounterMetricFamily("skiff_config_reloads", "Reloads tried, by result", labels=["result"])
    reloads.add_metric(["success"], info.reloads_ok)
    reloads.add_metric(["failure"], info.reloads_failed)
    yield reloads
    yield CounterMetricFamily("skiff_worker_restarts", "Workers that exited unexpectedly and were respawned",
                              value=info.worker_restarts)
    yield GaugeMetricFamily("skiff_workers_ready", "Workers serving the current config", value=info.workers_ready)
    yield GaugeMetricFamily("skiff_workers", "Workers configured (-w)", value=info.workers_wanted)
    rss = GaugeMetricFamily("skiff_worker_resident_memory_bytes", "Worker RSS", labels=["worker"])
    cpu = CounterMetricFamily("skiff_worker_cpu_seconds", "Worker CPU time (user + system)", labels=["worker"])
    for slot, rss_bytes, cpu_seconds in info.worker_usage:
        rss.add_metric([str(slot)], rss_bytes)
        cpu.add_metric([str(slot)], cpu_seconds)
    yield rss
    yield cpu
    if info.steering:
        steering = CounterMetricFamily("skiff_bpf_lookups", "BPF sk_lookup outcomes for configured ports",
                                       labels=["outcome"])
        for outcome, n in info.steering.items():
            steering.add_metric([outcome], n)
        yield steering


def registry_for(source: Any) -> CollectorRegistry:
    registry = CollectorRegistry(auto_describe=False)
    registry.register(SkiffCollector(source))
    return registry
