"""The end-of-run report: one plain document (`build`) rendered as rich text tables, JSON or HTML.

Building the document once keeps the three renderings in agreement; the JSON file is that document as is.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import orjson
from rich.console import Console
from rich.markup import escape
from rich.table import Table

from tester.run import Run
from tester.stats import PERCENTILES, REASONS, Latency, PortStats

Document = dict[str, Any]


def build(run: Run, elapsed: float) -> Document:
    options = run.options
    return {
        "scenario": options.scenario,
        "config": str(options.config),
        "proxy_host": options.proxy_host,
        "seed": options.seed,
        "spawned_targets": sorted(run.pool.servers) if run.pool is not None else None,
        "elapsed_s": round(elapsed, 3),
        "ok": all(c.ok for c in run.checks),
        "checks": [{"name": c.name, "ok": c.ok, "message": c.message} for c in run.checks],
        "ports": [_port(stats) for stats in run.recorder.ports.values()],
        "extra": run.extra,
    }


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
