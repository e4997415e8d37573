"""What a run counts: one `Outcome` per client connection, folded into per-(app, port) `PortStats`.

Pure data and arithmetic (no sockets), so reports and checks can be tested with plain values.
"""

from __future__ import annotations

from collections import Counter
from dataclasses import dataclass, field

from hdrh.histogram import HdrHistogram  # type: ignore[import-untyped]

# Failure reasons, in the order reports list them.
REASONS = (
    "refused",
    "connect_timeout",
    "closed",
    "reset",
    "timeout",
    "mismatch",
    "long_read",
    "short_read",
    "wrong_app",
    "error",
)
UNKNOWN_TARGET = "unknown"
PERCENTILES = (50.0, 90.0, 99.0, 99.9)


@dataclass
class Outcome:
    """The fate of one client connection. `reason` is None when it succeeded."""

    app: str
    port: int
    reason: str | None = None
    detail: str = ""
    sent: int = 0
    received: int = 0
    connect_us: int | None = None
    rtt_us: int | None = None
    target: str | None = None


class Latency:
    """Microsecond latencies in an HdrHistogram (1 µs to 60 s, 3 significant digits)."""

    def __init__(self) -> None:
        self._hist = HdrHistogram(1, 60_000_000, 3)

    def record(self, micros: int) -> None:
        self._hist.record_value(min(max(micros, 1), 60_000_000))

    @property
    def count(self) -> int:
        return int(self._hist.get_total_count())

    def percentile_ms(self, p: float) -> float:
        return float(self._hist.get_value_at_percentile(p)) / 1000.0 if self.count else 0.0

    def summary_ms(self) -> dict[str, float]:
        if not self.count:
            return {}
        summary = {_pname(p): round(self.percentile_ms(p), 3) for p in PERCENTILES}
        summary["max"] = round(float(self._hist.get_max_value()) / 1000.0, 3)
        summary["mean"] = round(float(self._hist.get_mean_value()) / 1000.0, 3)
        return summary

    def buckets_ms(self) -> list[tuple[float, int]]:
        """(upper edge in ms, count) for every recorded value bucket, ascending."""
        return [
            (float(item.value_iterated_to) / 1000.0, int(item.count_added_in_this_iter_step))
            for item in self._hist.get_recorded_iterator()
        ]


@dataclass
class PortStats:
    app: str
    port: int
    ok: int = 0
    failed: Counter[str] = field(default_factory=Counter)
    bytes_sent: int = 0
    bytes_received: int = 0
    connect: Latency = field(default_factory=Latency)
    rtt: Latency = field(default_factory=Latency)
    targets: Counter[str] = field(default_factory=Counter)
    examples: dict[str, str] = field(default_factory=dict)

    @property
    def failed_total(self) -> int:
        return sum(self.failed.values())


class Recorder:
    """Folds outcomes into per-port statistics; ports appear in config order."""

    def __init__(self, ports: list[tuple[str, int]]) -> None:
        self.ports: dict[tuple[str, int], PortStats] = {key: PortStats(*key) for key in ports}
        self.total = 0

    def record(self, outcome: Outcome) -> None:
        key = (outcome.app, outcome.port)
        stats = self.ports.get(key)
        if stats is None:
            stats = self.ports[key] = PortStats(*key)
        self.total += 1
        stats.bytes_sent += outcome.sent
        stats.bytes_received += outcome.received
        if outcome.connect_us is not None:
            stats.connect.record(outcome.connect_us)
        if outcome.rtt_us is not None:
            stats.rtt.record(outcome.rtt_us)
        if outcome.reason is None:
            stats.ok += 1
            stats.targets[outcome.target or UNKNOWN_TARGET] += 1
        else:
            stats.failed[outcome.reason] += 1
            stats.examples.setdefault(outcome.reason, outcome.detail)
            if outcome.target is not None:
                stats.targets[outcome.target] += 1

    def failures(self, reasons: tuple[str, ...]) -> list[tuple[PortStats, int]]:
        """Ports with failures among `reasons`, and how many."""
        found = []
        for stats in self.ports.values():
            n = sum(stats.failed[r] for r in reasons)
            if n:
                found.append((stats, n))
        return found

    def app_targets(self, app: str) -> Counter[str]:
        total: Counter[str] = Counter()
        for stats in self.ports.values():
            if stats.app == app:
                total.update(stats.targets)
        return total


@dataclass
class Second:
    """What ended in one second of the run."""

    ok: int = 0
    failed: int = 0
    bytes: int = 0
    rtt_max_us: int = 0
    rtt_sum_us: int = 0
    rtt_count: int = 0


class Timeline:
    """Outcomes per second since the run started, and labelled moments (a reload, a target stopped)."""

    def __init__(self, start: float) -> None:
        self.start = start
        self.seconds: dict[int, Second] = {}
        self.marks: list[tuple[float, str]] = []

    def record(self, outcome: Outcome, now: float) -> None:
        second = self.seconds.setdefault(max(0, int(now - self.start)), Second())
        if outcome.reason is None:
            second.ok += 1
        else:
            second.failed += 1
        second.bytes += outcome.sent + outcome.received
        if outcome.rtt_us is not None:
            second.rtt_max_us = max(second.rtt_max_us, outcome.rtt_us)
            second.rtt_sum_us += outcome.rtt_us
            second.rtt_count += 1

    def mark(self, label: str, now: float) -> None:
        self.marks.append((round(now - self.start, 3), label))

    def rows(self) -> list[dict[str, float]]:
        """One row per second from 0 to the last, empty seconds included (a stall shows as a gap)."""
        last = max(self.seconds, default=-1)
        rows = []
        for t in range(last + 1):
            s = self.seconds.get(t, Second())
            rows.append({"t": t, "ok": s.ok, "failed": s.failed, "mbit": round(s.bytes * 8 / 1e6, 3),
                         "rtt_mean_ms": round(s.rtt_sum_us / s.rtt_count / 1000, 3) if s.rtt_count else 0.0,
                         "rtt_max_ms": round(s.rtt_max_us / 1000, 3)})
        return rows


def plural(n: int, noun: str) -> str:
    """'1 connection', '2 connections'."""
    return f"{n:,} {noun}" if n == 1 else f"{n:,} {noun}s"


def jain_index(shares: list[int]) -> float:
    """Jain's fairness index: 1.0 when all shares are equal, 1/n when one target takes everything."""
    if not shares or not any(shares):
        return 0.0
    return sum(shares) ** 2 / (len(shares) * sum(x * x for x in shares))


def _pname(p: float) -> str:
    return f"p{p:g}"
