"""The metrics as Prometheus text, written straight from a table reading (pure: plain values in, bytes out).

prometheus_client builds an object per sample, which cost ~0.5 s at 2,000 apps x 3 targets; formatting lines
from the summed columns costs a fraction of that, and it runs in a render child anyway (control/metrics.py).
Names, labels, help texts and types are the operator's contract: they match what prometheus_client wrote
before (tests/ops checks the names, tests/ops/test_exposition.py parses the text with prometheus_client).
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field

from proxy.config import Config
from proxy.counters import APP_SCALARS, BUCKETS, CONNECT_BUCKETS, FIRST_BUCKET, REASONS, CellMap, Reading

TOTAL, FAILED, FAILOVERS, REFUSED, BYTES_IN, BYTES_OUT, CONNECT_NS = range(len(APP_SCALARS))
CONNECTS = 0  # a target's record: connects, then failures by reason
BOUNDS = [repr(b) for b in CONNECT_BUCKETS] + ["+Inf"]


@dataclass(frozen=True, slots=True)
class AppCells:
    """An app to show, with its cell and its targets' (name, cell)."""

    name: str
    cell: int
    targets: tuple[tuple[str, int], ...]


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
    metrics_renders: int = 0
    http_rejected: int = 0


def current_apps(config: Config, cells: CellMap) -> list[AppCells]:
    """The apps of `config` with their cells, by name (the same for as long as the config and its map stay)."""
    shown = []
    for app in config.apps:
        targets = sorted((str(t), cells.cells[f"{app.name}\n{t}"]) for t in app.targets)
        shown.append(AppCells(app.name, cells.cells[app.name], tuple(targets)))
    return sorted(shown, key=lambda a: a.name)


def listing(current: list[AppCells], cells: CellMap, active: Callable[[int], int]) -> list[AppCells]:
    """The apps of the current config, plus any app that left it but still has open connections, by name."""
    gone = {key: cell for cell, key in cells.departed.items()}
    departed = []
    for key, cell in gone.items():
        if "\n" not in key and key not in cells.cells and active(cell):
            targets = sorted((k.split("\n", 1)[1], c) for k, c in gone.items() if k.startswith(key + "\n"))
            departed.append(AppCells(key, cell, tuple(targets)))
    return sorted(current + departed, key=lambda a: a.name) if departed else current


def escape(value: str) -> str:
    return value.replace("\\", "\\\\").replace("\n", "\\n").replace('"', '\\"')


class _Family:
    __slots__ = ("lines",)

    def __init__(self, name: str, kind: str, help_text: str) -> None:
        self.lines = [f"# HELP {name} {help_text}", f"# TYPE {name} {kind}"]


def render(apps: list[AppCells], reading: Reading, info: ProcessInfo) -> bytes:
    active = _Family("skiff_connections_active", "gauge", "Client connections open now")
    total = _Family("skiff_connections_total", "counter", "Client connections accepted")
    failed = _Family("skiff_connections_failed_total", "counter",
                     "Client connections closed because every target failed")
    failovers = _Family("skiff_failovers_total", "counter", "Connect attempts that moved on to another target")
    refused = _Family("skiff_connections_refused_total", "counter",
                      "Client connections closed at once by a limit (HardLimit, every target at MaxConns)")
    received = _Family("skiff_received_bytes_total", "counter", "Bytes received from clients")
    sent = _Family("skiff_sent_bytes_total", "counter", "Bytes sent to clients")
    latency = _Family("skiff_connect_duration_seconds", "histogram",
                      "From accept to a connected target (failovers included)")
    t_active = _Family("skiff_target_connections_active", "gauge", "Connections open to a target now")
    t_total = _Family("skiff_target_connections_total", "counter", "Successful connects to a target")
    t_failures = _Family("skiff_target_connect_failures_total", "counter", "Failed connects to a target by reason")
    t_up = _Family("skiff_target_up", "gauge", "1 unless a worker's last connect to the target failed")
    counts, width, records = reading.counts, reading.width, reading.records
    for app in apps:
        name = escape(app.name)
        label = f'{{app="{name}"}}'
        base = app.cell * width
        r = records[base:base + width]
        active.lines.append(f"skiff_connections_active{label} {counts[app.cell]}")
        total.lines.append(f"skiff_connections_total{label} {r[TOTAL]}")
        failed.lines.append(f"skiff_connections_failed_total{label} {r[FAILED]}")
        failovers.lines.append(f"skiff_failovers_total{label} {r[FAILOVERS]}")
        refused.lines.append(f"skiff_connections_refused_total{label} {r[REFUSED]}")
        received.lines.append(f"skiff_received_bytes_total{label} {r[BYTES_IN]}")
        sent.lines.append(f"skiff_sent_bytes_total{label} {r[BYTES_OUT]}")
        prefix = f'skiff_connect_duration_seconds_bucket{{app="{name}",le="'
        running = 0
        for bound, n in zip(BOUNDS, r[FIRST_BUCKET:FIRST_BUCKET + BUCKETS], strict=True):
            running += n
            latency.lines.append(f'{prefix}{bound}"}} {running}')
        latency.lines.append(f"skiff_connect_duration_seconds_count{label} {running}")
        latency.lines.append(f"skiff_connect_duration_seconds_sum{label} {r[CONNECT_NS] / 1e9!r}")
        for target, cell in app.targets:
            target = escape(target)
            both = f'app="{name}",target="{target}"'
            t = records[cell * width:cell * width + width]
            t_active.lines.append(f"skiff_target_connections_active{{{both}}} {counts[cell]}")
            t_total.lines.append(f"skiff_target_connections_total{{{both}}} {t[CONNECTS]}")
            for i, reason in enumerate(REASONS, start=CONNECTS + 1):
                if t[i]:
                    t_failures.lines.append(f'skiff_target_connect_failures_total{{app="{name}",'
                                            f'reason="{reason}",target="{target}"}} {t[i]}')
            t_up.lines.append(f"skiff_target_up{{{both}}} {1 if reading.up(cell) else 0}")
    families = [active, total, failed, failovers, refused, received, sent, latency, t_active, t_total, t_failures,
                t_up, *process_families(info)]
    return ("\n".join(line for family in families for line in family.lines) + "\n").encode()


def process_families(info: ProcessInfo) -> list[_Family]:
    def single(name: str, kind: str, help_text: str, value: float) -> _Family:
        family = _Family(name, kind, help_text)
        family.lines.append(f"{name} {value!r}")
        return family

    families = [
        single("skiff_config_version", "gauge", "Version of the config being served", info.version),
        single("skiff_config_last_reload_success", "gauge", "1 if the last reload was applied, 0 if it failed",
               1 if info.last_reload_ok else 0),
        single("skiff_config_last_reload_timestamp_seconds", "gauge", "When the last reload was tried",
               info.last_reload_time),
    ]
    reloads = _Family("skiff_config_reloads_total", "counter", "Reloads tried, by result")
    reloads.lines += [f'skiff_config_reloads_total{{result="success"}} {info.reloads_ok}',
                      f'skiff_config_reloads_total{{result="failure"}} {info.reloads_failed}']
    families.append(reloads)
    families += [
        single("skiff_worker_restarts_total", "counter", "Workers that exited unexpectedly and were respawned",
               info.worker_restarts),
        single("skiff_workers_ready", "gauge", "Workers serving the current config", info.workers_ready),
        single("skiff_workers", "gauge", "Workers configured (-w)", info.workers_wanted),
    ]
    rss = _Family("skiff_worker_resident_memory_bytes", "gauge", "Worker RSS")
    cpu = _Family("skiff_worker_cpu_seconds_total", "counter", "Worker CPU time (user + system)")
    for slot, rss_bytes, cpu_seconds in info.worker_usage:
        rss.lines.append(f'skiff_worker_resident_memory_bytes{{worker="{slot}"}} {rss_bytes!r}')
        cpu.lines.append(f'skiff_worker_cpu_seconds_total{{worker="{slot}"}} {cpu_seconds!r}')
    families += [rss, cpu]
    if info.steering:
        steering = _Family("skiff_bpf_lookups_total", "counter", "BPF sk_lookup outcomes for configured ports")
        steering.lines += [f'skiff_bpf_lookups_total{{outcome="{k}"}} {n}' for k, n in info.steering.items()]
        families.append(steering)
    families += [
        single("skiff_metrics_renders_total", "counter", "Renders of /metrics (at most one per second; scrapes "
               "in between share the last)", info.metrics_renders),
        single("skiff_http_connections_rejected_total", "counter",
               "HTTP connections closed at once because the cap on concurrent ones was reached",
               info.http_rejected),
    ]
    return families


def status_apps(apps: list[AppCells], reading: Reading) -> dict[str, dict[str, object]]:
    """/status's per-app part: open connections, connections accepted, targets up and open connections.
    `reading` may hold only the first record field (connections accepted)."""
    counts, width, records = reading.counts, reading.width, reading.records
    return {
        app.name: {"active": counts[app.cell], "total": records[app.cell * width + TOTAL],
                   "targets": {t: {"up": reading.up(c), "active": counts[c]} for t, c in app.targets}}
        for app in apps
    }
