"""Counting and fairness arithmetic, with plain values."""

from __future__ import annotations

import pytest

from tester.stats import Latency, Outcome, Recorder, jain_index


@pytest.mark.parametrize(
    ("shares", "index"),
    [([10, 10, 10], 1.0), ([30, 0, 0], 1 / 3), ([1, 3], 16 / 20), ([], 0.0), ([0, 0], 0.0)],
)
def test_jain_index(shares: list[int], index: float) -> None:
    assert jain_index(shares) == pytest.approx(index)


def test_recorder_folds_outcomes_per_port() -> None:
    recorder = Recorder([("a", 1), ("b", 2)])
    recorder.record(Outcome("a", 1, sent=10, received=10, connect_us=100, rtt_us=200, target="t1"))
    recorder.record(Outcome("a", 1, reason="mismatch", detail="byte 3", sent=10, received=4, target="t2"))
    recorder.record(Outcome("a", 1, reason="mismatch", detail="byte 9"))
    a = recorder.ports[("a", 1)]
    assert (a.ok, a.failed_total, a.bytes_sent, a.bytes_received) == (1, 2, 20, 14)
    assert a.examples == {"mismatch": "byte 3"}
    assert recorder.failures(("mismatch",)) == [(a, 2)]
    assert recorder.app_targets("a") == {"t1": 1, "t2": 1}
    assert recorder.ports[("b", 2)].ok == 0


def test_latency_percentiles_in_ms() -> None:
    latency = Latency()
    for micros in range(1, 1001):
        latency.record(micros * 10)
    summary = latency.summary_ms()
    assert summary["p50"] == pytest.approx(5.0, rel=0.01)
    assert summary["p99"] == pytest.approx(9.9, rel=0.01)
    assert sum(count for _, count in latency.buckets_ms()) == 1000
