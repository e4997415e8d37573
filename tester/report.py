"""The end-of-run report: one plain document (`build`) rendered as rich text tables, JSON or HTML.

Building the document once keeps the three renderings in agreement; the JSON file is that document as is.
"""

from __future__ import annotations

import shlex
import subprocess
import time
import tomllib
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import orjson
from rich.console import Console
from rich.markup import escape
from rich.table import Table

from tester.run import Run
from tester.stats import PERCENTILES, REASONS, Latency, PortStats

Document = dict[str, Any]


def build(run: Run, elapsed: float, argv: list[str] | None = None) -> Document:
    options = run.options
    checks = sorted(run.checks, key=lambda c: c.ok)  # failed checks first (a stable sort keeps their order)
    return {
        "scenario": options.scenario,
        "started": datetime.fromtimestamp(time.time() - elapsed, UTC).isoformat(timespec="seconds"),
        "command": shlex.join(["python", "-m", "tester", *(argv or [])]),
        "proxy_version": proxy_version(),
        "config": str(options.config),
        "proxy_host": options.proxy_host,
        "seed": options.seed,
        "spawned_targets": sorted(run.pool.started) if run.pool is not None else None,
        "elapsed_s": round(elapsed, 3),
        "ok": all(c.ok for c in run.checks),
        "checks": [{"name": c.name, "ok": c.ok, "message": c.message} for c in checks],
        "headline": headline(run),
        "timeline": run.timeline.rows(),
        "marks": [{"t": t, "label": label} for t, label in run.timeline.marks],
        "ports": [_port(stats) for stats in run.recorder.ports.values()],
        "extra": run.extra,
    }


def proxy_version() -> str:
    """skiff's version: the tree the tester ships in (pyproject), with the git commit when there is one."""
    root = Path(__file__).resolve().parent.parent
    try:
        version = str(tomllib.loads((root / "pyproject.toml").read_text())["project"]["version"])
    except (OSError, KeyError, tomllib.TOMLDecodeError):
        version = "unknown"
    try:
        commit = subprocess.run(["git", "-C", str(root), "rev-parse", "--short", "HEAD"], capture_output=True,
                                text=True, timeout=5).stdout.strip()
    except (OSError, subprocess.TimeoutExpired):
        commit = ""
    return f"skiff {version}" + (f" ({commit})" if commit else "")


def headline(run: Run) -> str:
    """The one figure a scenario is about, from what it put in `extra`, then how many connections completed."""
    extra: dict[str, Any] = run.extra
    parts = []
    if isinstance(throughput := extra.get("throughput"), dict):
        parts.append(f"{throughput['gbit_per_s']} Gbit/s echoed")
    if isinstance(fairness := extra.get("fairness"), dict) and fairness:
        parts.append("fairness (Jain) " + ", ".join(f"{app} {f['jain']}" for app, f in fairness.items()))
    if isinstance(reload := extra.get("reload"), dict):
        parts.append(f"reload applied after {reload['applied_after_s']} s")
    if isinstance(failover := extra.get("failover"), dict):
        parts.append(f"{failover['ok_after_stop']} connections completed after {failover['stopped']} stopped")
    parts.append(f"{run.completed():,} of {run.recorder.total:,} connections completed")
    return "; ".join(parts)


def _port(stats: PortStats) -> Document:
    return {
        "app": stats.app,
        "port": stats.port,
        "ok": stats.ok,
        "failed": stats.failed_total,
        "reasons": {r: stats.failed[r] for r in REASONS if stats.failed[r]},
        "examples": stats.examples,
        "bytes_sent": stats.bytes_sent,
        "bytes_received": stats.bytes_received,
        "connect_ms": stats.connect.summary_ms(),
        "rtt_ms": stats.rtt.summary_ms(),
        "rtt_buckets_ms": _compact(stats.rtt),
        "targets": dict(stats.targets.most_common()),
    }


def _compact(latency: Latency) -> list[list[float]]:
    return [[edge, count] for edge, count in latency.buckets_ms()]


def write_json(document: Document, path: Path) -> None:
    path.write_bytes(orjson.dumps(document, option=orjson.OPT_INDENT_2) + b"\n")


def print_text(document: Document, console: Console) -> None:
    """The tables a human reads: connections per port, latency per port, then every check."""
    conns = Table(
        title=f"skiff tester: {document['scenario']} ({document['elapsed_s']} s, seed {document['seed']})",
        title_justify="left",
    )
    for name, justify in (
        ("app", "left"),
        ("port", "right"),
        ("ok", "right"),
        ("failed", "right"),
        ("failures by reason", "left"),
        ("MiB out/in", "right"),
        ("targets", "left"),
    ):
        conns.add_column(name, justify=justify)  # type: ignore[arg-type]
    lat = Table(
        title="latency, ms (connect: TCP handshake via the proxy; rtt: first echoed byte)",
        title_justify="left",
    )
    lat.add_column("app")
    lat.add_column("port", justify="right")
    for kind in ("connect", "rtt"):
        for p in PERCENTILES:
            lat.add_column(f"{kind} p{p:g}", justify="right")
    for port in document["ports"]:
        reasons = ", ".join(f"{r} {n}" for r, n in port["reasons"].items()) or "-"
        targets = "\n".join(f"{t} {n}" for t, n in port["targets"].items()) or "-"
        mib = f"{port['bytes_sent'] / 2**20:.1f}/{port['bytes_received'] / 2**20:.1f}"
        style = "red" if port["failed"] else None
        conns.add_row(
            escape(port["app"]),
            str(port["port"]),
            str(port["ok"]),
            str(port["failed"]),
            reasons,
            mib,
            escape(targets),
            style=style,
        )
        cells = [_ms(port["connect_ms"], p) for p in PERCENTILES] + [
            _ms(port["rtt_ms"], p) for p in PERCENTILES
        ]
        lat.add_row(escape(port["app"]), str(port["port"]), *cells)
    console.print(f"{document['started']}: {document['command']} ({document['proxy_version']})", highlight=False)
    console.print(f"headline: {document['headline']}", highlight=False)
    console.print(conns)
    console.print(lat)
    for key, value in document["extra"].items():
        console.print(f"{key}: {escape(orjson.dumps(value).decode())}", highlight=False)
    for check in document["checks"]:
        mark = "[green]PASS[/]" if check["ok"] else "[bold red]FAIL[/]"
        console.print(f"{mark} {check['name']}: {escape(check['message'])}", highlight=False, soft_wrap=True)


def _ms(summary: dict[str, float], p: float) -> str:
    value = summary.get(f"p{p:g}")
    return "-" if value is None else f"{value:.3f}"
