"""Unit tests for the harness's pure parts: wrk parsing, CPU accounting, medians, ratios and goal verdicts.

    .venv/bin/python -m pytest -q bench/test_bench.py
"""

from __future__ import annotations

import loads
import pytest
import report
from report import Sample

WRK_CLOSE = """\
Running 3s test @ http://127.0.0.1:27100/
  1 threads and 50 connections
  Thread Stats   Avg      Stdev     Max   +/- Stdev
    Latency     2.56ms    1.03ms  10.27ms   72.60%
    Req/Sec    13.65k     1.10k   14.91k    80.00%
  40922 requests in 3.01s, 5.62MB read
  Socket errors: connect 0, read 54, write 7, timeout 0
Requests/sec:  13576.63
Transfer/sec:      1.86MB
"""


def test_wrk_output_gives_rate_count_and_errors() -> None:
    parsed = loads.parse_wrk(WRK_CLOSE)
    assert parsed["requests_per_s"] == 13576.63
    assert parsed["requests"] == 40922
    assert parsed["socket_errors"] == {"connect": 0, "read": 54, "write": 7, "timeout": 0}
    assert parsed["non_2xx"] == 0


def test_wrk_output_without_a_rate_is_an_error() -> None:
    with pytest.raises(loads.LoadError):
        loads.parse_wrk("unable to connect to 127.0.0.1:1 Connection refused\n")


def test_cpu_counts_new_workers_from_zero_and_reaped_ones_through_the_children_total() -> None:
    before = {100: 1.0, 101: 2.0, -1: 0.5}
    after = {100: 1.5, 102: 0.25, -1: 3.0}  # 101 was reaped with 2.5 s in all; 102 is new
    assert loads.cpu_seconds_between(before, after) == pytest.approx(0.5 + 0.25 + 2.5)


def samples(metric: str, values: dict[str, list[float]]) -> list[Sample]:
    return [Sample(i + 1, target, metric, v) for target, vs in values.items() for i, v in enumerate(vs)]


def test_medians_and_ratios_are_per_target_and_metric() -> None:
    med = report.medians(samples("keepalive_rps", {"haproxy": [70.0, 60.0, 80.0], "skiff-w1": [90.0, 10.0, 70.0]}))
    assert med[("haproxy", "keepalive_rps")] == 70.0
    assert report.ratio(med, "skiff-w1", "haproxy", "keepalive_rps") == 1.0
    assert report.ratio(med, "skiff-w1", "direct", "keepalive_rps") is None


def test_goals_pass_or_fail_by_direction() -> None:
    med = report.medians(
        samples("bulk_p1_cpu_s_per_gb", {"haproxy": [1.0], "skiff-w1": [0.6], "skiff-w2": [0.61]})
        + samples("newconn_rps", {"haproxy": [10.0], "skiff-w1": [8.0], "skiff-w2": [7.9]})
    )
    lines = "\n".join(report.goals_section(med, ["direct", "haproxy", "skiff-w1", "skiff-w2"]))
    cpu = next(ln for ln in lines.splitlines() if "-P1 CPU per GB" in ln)
    conn = next(ln for ln in lines.splitlines() if "new conn/s" in ln)
    assert cpu.count("PASS") == 1 and cpu.count("FAIL") == 1
    assert conn.count("PASS") == 1 and conn.count("FAIL") == 1
    assert "no data" in next(ln for ln in lines.splitlines() if "keep-alive" in ln)


def test_no_verdicts_without_haproxy() -> None:
    assert "No goal verdicts" in report.goals_section({}, ["direct", "skiff-w1"])[0]


def test_the_must_is_against_the_floor_row_and_w2_has_its_own_bounds() -> None:
    med = report.medians(samples("newconn_rps", {"haproxy": [10.0], "floor": [8.0], "skiff-w1": [7.7],
                                                  "skiff-w2": [9.5]}))
    lines = report.goals_section(med, ["haproxy", "skiff-w1", "skiff-w2", "floor"])
    must = next(ln for ln in lines if "floor row" in ln)
    assert must.count("PASS") == 2  # 7.7 / 8.0 = 0.96
    conn = next(ln for ln in lines if ln.startswith("| new conn/s"))
    assert conn.count("FAIL") == 2  # 0.77 < 0.8; 0.95 < 1.0 for -w 2
    assert "floor" not in lines[2]  # the floor row is a reference, not a column of goals


def test_the_paired_must_is_the_median_of_the_rounds_rate_ratios() -> None:
    med = report.medians(samples("newconn_rps", {"haproxy": [10.0], "floor": [8.0], "skiff-w1": [7.7]}))
    # (rate skiff, µs/conn skiff, rate floor, µs/conn floor) per round: ratios 0.90, 0.97, 0.96
    pair = {"names": ["skiff-w1", "floor"], "duration_s": 3,
            "rows": [[900.0, 1.0, 1000.0, 1.0], [970.0, 1.0, 1000.0, 1.0], [960.0, 1.0, 1000.0, 1.0]]}
    lines = report.goals_section(med, ["haproxy", "skiff-w1", "floor"], pair)
    paired = next(ln for ln in lines if "paired" in ln and ln.startswith("|"))
    assert f"PASS (0.96{report.TIMES}, rounds 0.90-0.97)" in paired
    pair["rows"] = [[900.0, 1.0, 1000.0, 1.0]]
    lines = report.goals_section(med, ["haproxy", "skiff-w1", "floor"], pair)
    assert f"FAIL (0.90{report.TIMES}" in next(ln for ln in lines if "paired" in ln and ln.startswith("|"))
    assert not any("paired" in ln for ln in report.goals_section(med, ["haproxy", "skiff-w1", "floor"]))
