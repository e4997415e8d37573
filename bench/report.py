"""The pure half of the benchmark: measurements in, medians, ratios, goal verdicts and Markdown out.

Nothing here starts a process or touches a socket, so the report can be rebuilt from a run's JSON alone:

    python bench/report.py bench/out/RUN/results.json > BENCHMARKS.md
"""

from __future__ import annotations

import json
import statistics
import sys
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

BASELINE = "haproxy"
DIRECT = "direct"
FLOOR = "floor"  # bench/floor_relay.py: the least a uvloop relay does; a reference row, no goals of its own
FLOOR_MUST = 0.95  # issue 14: skiff -w 1's new connections/s may not fall below the floor's minus 5 %
TIMES = "\u00d7"  # the multiplication sign of ratios
NONE = "\u2013"  # en dash: no value


@dataclass(frozen=True)
class Metric:
    """One column of the results table."""

    key: str
    label: str
    unit: str
    higher_is_better: bool
    proxied_only: bool = False  # meaningless for the direct path (no proxy process to measure)


METRICS: tuple[Metric, ...] = (
    Metric("keepalive_rps", "keep-alive req/s", "req/s", True),
    Metric("newconn_rps", "new conn/s", "req/s", True),
    Metric("bulk_p1_gbps", "bulk -P1 Gbit/s", "Gbit/s", True),
    Metric("bulk_p4_gbps", "bulk -P4 Gbit/s", "Gbit/s", True),
    Metric("bulk_p1_cpu_s_per_gb", "CPU s/GB -P1", "s/GB", False, proxied_only=True),
    Metric("bulk_p4_cpu_s_per_gb", "CPU s/GB -P4", "s/GB", False, proxied_only=True),
    Metric("idle_rss_kib_per_conn", "RSS KiB/idle conn", "KiB", False, proxied_only=True),
)
METRIC_BY_KEY = {m.key: m for m in METRICS}


@dataclass(frozen=True)
class Goal:
    """A bound on skiff's median divided by HAProxy's median, both from the same run."""

    metric: str
    op: str  # ">=" or "<="
    bound: float
    text: str
    bound_w2: float | None = None  # a stricter bound for two workers (issue 14), else `bound`

    def bound_for(self, target: str) -> float:
        return self.bound_w2 if self.bound_w2 is not None and target.endswith("-w2") else self.bound

    def holds(self, ratio: float, target: str = "") -> bool:
        bound = self.bound_for(target)
        return ratio >= bound if self.op == ">=" else ratio <= bound


GOALS: tuple[Goal, ...] = (
    Goal("keepalive_rps", ">=", 1.0, f"keep-alive req/s ≥ 1.0{TIMES} HAProxy (-w 2: 1.1{TIMES})", 1.1),
    Goal("newconn_rps", ">=", 0.8, f"new conn/s ≥ 0.8{TIMES} HAProxy (-w 2: 1.0{TIMES})", 1.0),
    Goal("bulk_p1_gbps", ">=", 1.0, f"bulk -P1 Gbit/s ≥ 1.0{TIMES} HAProxy"),
    Goal("bulk_p4_gbps", ">=", 1.0, f"bulk -P4 Gbit/s ≥ 1.0{TIMES} HAProxy"),
    Goal("bulk_p1_cpu_s_per_gb", "<=", 0.6, f"bulk -P1 CPU per GB ≤ 0.6{TIMES} HAProxy"),
    Goal("bulk_p4_cpu_s_per_gb", "<=", 0.6, f"bulk -P4 CPU per GB ≤ 0.6{TIMES} HAProxy"),
    Goal("idle_rss_kib_per_conn", "<=", 1.0, f"RSS per idle proxied connection ≤ 1.0{TIMES} HAProxy"),
)


@dataclass(frozen=True)
class Sample:
    """One measured value: a metric of one target in one round."""

    round: int
    target: str
    metric: str
    value: float


def medians(samples: Iterable[Sample]) -> dict[tuple[str, str], float]:
    """Median per (target, metric) over the rounds."""
    grouped: dict[tuple[str, str], list[float]] = {}
    for s in samples:
        grouped.setdefault((s.target, s.metric), []).append(s.value)
    return {key: statistics.median(values) for key, values in grouped.items()}


def ratio(med: dict[tuple[str, str], float], target: str, base: str, metric: str) -> float | None:
    num, den = med.get((target, metric)), med.get((base, metric))
    if num is None or den is None or den == 0:
        return None
    return num / den


def skiff_targets(targets: Sequence[str]) -> list[str]:
    return [t for t in targets if t not in (BASELINE, DIRECT, FLOOR)]


def fmt_value(value: float | None, metric: str) -> str:
    if value is None:
        return NONE
    unit = METRIC_BY_KEY[metric].unit
    if unit == "req/s":
        return f"{value / 1000:.1f}k"
    if unit == "Gbit/s":
        return f"{value:.1f}"
    return f"{value:.2f}"


def fmt_ratio(value: float | None) -> str:
    return NONE if value is None else f"{value:.2f}{TIMES}"


def results_table(med: dict[tuple[str, str], float], targets: Sequence[str]) -> list[str]:
    lines = [
        "| target | " + " | ".join(m.label for m in METRICS) + " |",
        "|---|" + "---|" * len(METRICS),
    ]
    for t in targets:
        cells = [fmt_value(med.get((t, m.key)), m.key) for m in METRICS]
        lines.append(f"| {t} | " + " | ".join(cells) + " |")
    return lines


def ratio_table(med: dict[tuple[str, str], float], targets: Sequence[str]) -> list[str]:
    lines = [
        "| ratio | " + " | ".join(m.label for m in METRICS) + " |",
        "|---|" + "---|" * len(METRICS),
    ]
    for t in [*skiff_targets(targets), *([FLOOR] if FLOOR in targets else [])]:
        for base in (BASELINE, DIRECT):
            if base not in targets:
                continue
            cells = [
                NONE if base == DIRECT and m.proxied_only else fmt_ratio(ratio(med, t, base, m.key))
                for m in METRICS
            ]
            lines.append(f"| {t} / {base} | " + " | ".join(cells) + " |")
    return lines


def paired_must_row(pair: dict[str, Any] | None, columns: int) -> list[str]:
    """The must from the paired rounds (run.py's `pair`: skiff -w 1 and the floor loaded at once on one core)."""
    if not pair or not pair["rows"]:
        return []
    ratios = [row[0] / row[2] for row in pair["rows"]]
    r = statistics.median(ratios)
    cell = (f"{'PASS' if r >= FLOOR_MUST else 'FAIL'} ({r:.2f}{TIMES}, rounds {min(ratios):.2f}-{max(ratios):.2f})")
    text = (f"the must, paired: skiff -w 1 and the floor loaded at once on one core, median of {len(ratios)} "
            f"{TIMES} {pair['duration_s']} s")
    return [f"| {text} | {cell} |" + f" {NONE} |" * (columns - 1)]


def goals_section(med: dict[tuple[str, str], float], targets: Sequence[str],
                  pair: dict[str, Any] | None = None) -> list[str]:
    skiffs = skiff_targets(targets)
    if BASELINE not in targets or not skiffs:
        return ["No goal verdicts: they need both HAProxy and skiff in the run."]
    lines = [
        "Each ratio is skiff's median over HAProxy's (1 thread) median from this same run.",
        "",
        "| goal | " + " | ".join(skiffs) + " |",
        "|---|" + "---|" * len(skiffs),
    ]
    for goal in GOALS:
        cells = []
        for t in skiffs:
            r = ratio(med, t, BASELINE, goal.metric)
            cells.append("no data" if r is None else f"{'PASS' if goal.holds(r, t) else 'FAIL'} ({r:.2f}{TIMES})")
        lines.append(f"| {goal.text} | " + " | ".join(cells) + " |")
    if FLOOR in targets:
        cells = []
        for t in skiffs:
            r = ratio(med, t, FLOOR, "newconn_rps")
            cells.append("no data" if r is None else f"{'PASS' if r >= FLOOR_MUST else 'FAIL'} ({r:.2f}{TIMES})")
        lines.append(f"| the must: new conn/s ≥ 0.95{TIMES} the floor row (for -w 1) | " + " | ".join(cells) + " |")
    lines += paired_must_row(pair, len(skiffs))
    if pair:
        lines += ["", "The floor row's must compares rounds run one after the other, which this machine's drift "
                  "moves by up to 15 %; the paired row loads both at once on one pinned core (bench/bench_pair.py), "
                  "where an A/A run measured 0.99-1.01: it is the must's verdict."]
    return lines


def rounds_table(samples: Sequence[Sample], targets: Sequence[str]) -> list[str]:
    """Every round's value, so the spread behind each median is visible."""
    lines = [
        "| target | " + " | ".join(m.label for m in METRICS) + " |",
        "|---|" + "---|" * len(METRICS),
    ]
    for t in targets:
        cells = []
        for m in METRICS:
            values = [s.value for s in sorted(samples, key=lambda s: s.round) if (s.target, s.metric) == (t, m.key)]
            cells.append(" / ".join(fmt_value(v, m.key) for v in values) or NONE)
        lines.append(f"| {t} | " + " | ".join(cells) + " |")
    return lines


def render(run: dict[str, Any]) -> str:
    """The whole BENCHMARKS.md from a run's results document (see run.py's `results.json`)."""
    samples = [Sample(**s) for s in run["samples"]]
    targets: list[str] = run["targets"]
    med = medians(samples)
    out: list[str] = [
        "# skiff benchmark against HAProxy",
        "",
        f"Run {run['started']} → {run['finished']} ({run['elapsed_s'] / 60:.1f} min), "
        f"{run['rounds']} round(s), {run['duration_s']} s per load, {run['idle_conns']:,} idle connections. "
        "Generated by `bench/run.py`; raw measurements in `" + run["out_dir"] + "`.",
        "",
        "Loopback only, on a shared 2-core machine: load generator, backend and proxy compete for the same cores, "
        "so compare figures within this run only (runs on different days differ by ±20%).",
        "",
        "## Medians",
        "",
        *results_table(med, targets),
        "",
        "## Ratios",
        "",
        *ratio_table(med, targets),
        "",
        "## Goals",
        "",
        *goals_section(med, targets, run.get("pair")),
        "",
        "## Every round",
        "",
        "Values in round order (the medians above are taken over these).",
        "",
        *rounds_table(samples, targets),
        "",
        "## What is measured",
        "",
        *[f"- {line}" for line in run["method"]],
        "",
        "## Machine and versions",
        "",
        *[f"- {k}: {v}" for k, v in run["machine"].items()],
        *[f"- {k}: {v}" for k, v in run["versions"].items()],
        "",
        "## Commands run",
        "",
        "```",
        *run["commands"],
        "```",
        "",
        "## Configurations",
        "",
    ]
    for name, text in run["configs"].items():
        out += [f"`{name}`:", "", "```", text.rstrip(), "```", ""]
    if run.get("errors"):
        out += ["## Errors", "", *[f"- {e}" for e in run["errors"]], ""]
    return "\n".join(out)


def main(argv: Sequence[str]) -> int:
    if len(argv) != 1:
        print("usage: python bench/report.py RESULTS.json", file=sys.stderr)
        return 2
    sys.stdout.write(render(json.loads(Path(argv[0]).read_text())))
    return 0


if __name__ == "__main__":
    raise SystemExit(main(sys.argv[1:]))
