"""The shared counter table and the Prometheus text written from it: plain buffers and values, no processes."""

from __future__ import annotations

from prometheus_client.parser import text_string_to_metric_families

from proxy.config import parse_document
from proxy.counters import (
    BUCKETS,
    HEALTH_DOWN,
    RECORD,
    TLS_BUCKETS,
    CellMap,
    CounterTable,
    Reading,
    check_outcome,
)
from proxy.exposition import AppCells, ProcessInfo, current_apps, listing, render, status_apps


def table(workers: int = 2, capacity: int = 16) -> CounterTable:
    return CounterTable(workers, capacity, buffer=bytearray(CounterTable.size(workers, capacity)))


def test_workers_write_records_the_supervisor_reads_summed_with_the_retired_row() -> None:
    t = table()
    a0, a1 = t.app_stats(0, 3), t.app_stats(1, 3)
    a0.total += 2
    a1.total += 5
    a0.bytes_in += 100
    a1.observe_connect(0.0007)
    a1.observe_connect(20.0)
    target = t.target_counts(0, 4)
    target.connects += 1
    target["refused"] = target.get("refused") + 1
    target["no such reason"] = target.get("no such reason") + 1  # anything unknown counts as "error"
    reading = t.read(5)
    app = reading.record(3)
    assert app[0] == 7 and app[4] == 100
    assert app[7:7 + BUCKETS] == [0, 1] + [0] * (BUCKETS - 3) + [1]
    assert app[6] == 20_000_700_000  # connect_ns
    assert reading.record(4)[:6] == [1, 1, 0, 0, 0, 1]
    assert t.read(5, fields=(0,)).records == [0, 0, 0, 7, 1]


def test_retiring_a_worker_zeroes_its_gauges_and_keeps_its_totals() -> None:
    """Worker 1 dies holding connections and a passive down mark: its gauges go, its counts stay (retired row),
    and its row starts from zero for the next worker in the slot."""
    t = table()
    for slot, n in ((0, 2), (1, 3)):
        t.cell(slot, 3).add(n)
        t.app_stats(slot, 3).total += n
    t.cell(1, 4).set_down(True)
    assert t.total(3) == 5 and not t.read(5).up(4)
    t.retire(1, used=5)
    reading = t.read(5)
    assert t.total(3) == 2 and reading.counts[3] == 2 and reading.up(4)
    assert reading.record(3)[0] == 5
    assert t.app_stats(1, 3).total == 0
    t.app_stats(1, 3).total += 1  # the respawned worker counts on
    t.app_stats(1, 3).bytes_in += 2**61 + 7  # lanes add without carrying into their neighbours
    t.retire(1, used=5)  # and dies too
    t.app_stats(1, 3).bytes_in += 2**61
    t.retire(1, used=5)
    assert t.read(5).record(3)[:6] == [6, 0, 0, 0, 2**62 + 7, 0]
    assert t.view[0] % 2 == 0  # the fold sequence is even between folds


def test_a_reset_cell_counts_from_zero_in_every_row() -> None:
    t = table()
    t.app_stats(0, 2).total += 4
    t.app_stats(1, 2).refused += 1
    t.retire(1, used=3)
    t.cell(0, 2).set_down(True)
    t.reset([2])
    reading = t.read(3)
    assert reading.record(2) == [0] * RECORD and reading.up(2)


def test_the_health_row_and_the_count_columns_are_apart() -> None:
    t = table(workers=3, capacity=8)
    t.cell(0, 5).add(2)
    t.cell(2, 5).add(3)
    t.set_health(5, HEALTH_DOWN)
    reading = t.read(8)
    assert reading.counts[5] == 5 and not reading.up(5) and reading.up(4)


def doc(*apps: tuple[str, list[str]]) -> object:
    return parse_document({"Apps": [{"Name": n, "Ports": [i + 1], "Targets": t} for i, (n, t) in enumerate(apps)]})


def test_departed_apps_are_shown_while_they_have_connections() -> None:
    first = doc(("a", ["h:1"]), ("b", ["h:2"]))
    m1 = CellMap(capacity=10).assign(first, 1, 1, lambda c: True)  # type: ignore[arg-type]
    second = doc(("b", ["h:2"]))
    m2 = m1.assign(second, 2, 1, lambda c: True)  # type: ignore[arg-type]
    assert m2.departed == {m1.cells["a"]: "a", m1.cells["a\nh:1"]: "a\nh:1"}
    busy = {m1.cells["a"]: 1}
    current = current_apps(second, m2)  # type: ignore[arg-type]
    shown = listing(current, m2, lambda c: busy.get(c, 0))
    assert [(a.name, a.targets) for a in shown] == [("a", (("h:1", m1.cells["a\nh:1"]),)),
                                                     ("b", (("h:2", m1.cells["b\nh:2"]),))]
    assert [a.name for a in listing(current, m2, lambda c: 0)] == ["b"]
    third = doc(("b", ["h:2"]), ("c", ["h:3", "h:4"]))
    m3 = m2.assign(third, 3, 2, lambda c: True)  # type: ignore[arg-type]
    assert m3.departed == {}  # a's cells went to c


def test_rendered_text_parses_and_says_what_the_table_holds() -> None:
    t = table(capacity=8)
    a = t.app_stats(0, 0)
    a.total += 3
    a.bytes_in += 10
    a.observe_connect(0.002)
    t.cell(0, 0).add(1)
    t.cell(0, 1).add(1)
    t.target_counts(1, 1).connects += 3
    t.target_counts(1, 2)["timeout"] = 2
    t.cell(1, 2).set_down(True)
    apps = [AppCells('we"ird\\name', 0, (("h:1", 1), ("h:2", 2)))]
    info = ProcessInfo(version=4, workers_ready=2, workers_wanted=2, worker_usage=[(0, 1e6, 0.5)],
                       steering={"lookups": 9}, metrics_renders=7, http_rejected=1)
    text = render(apps, t.read(8), info).decode()
    families = {f.name: f for f in text_string_to_metric_families(text)}
    samples = {(s.name, tuple(sorted(s.labels.items()))): s.value for f in families.values() for s in f.samples}
    app = (("app", 'we"ird\\name'),)
    assert samples[("skiff_connections_total", app)] == 3
    assert samples[("skiff_connections_active", app)] == 1
    assert samples[("skiff_received_bytes_total", app)] == 10
    assert samples[("skiff_connect_duration_seconds_bucket", (*app, ("le", "0.001")))] == 0
    assert samples[("skiff_connect_duration_seconds_bucket", (*app, ("le", "0.0025")))] == 1
    assert samples[("skiff_connect_duration_seconds_count", app)] == 1
    assert abs(samples[("skiff_connect_duration_seconds_sum", app)] - 0.002) < 1e-9
    h1, h2 = (*app, ("target", "h:1")), (*app, ("target", "h:2"))
    assert samples[("skiff_target_connections_total", h1)] == 3
    assert samples[("skiff_target_connections_active", h1)] == 1
    assert samples[("skiff_target_connect_failures_total", (*app, ("reason", "timeout"), ("target", "h:2")))] == 2
    assert samples[("skiff_target_up", h1)] == 1 and samples[("skiff_target_up", h2)] == 0
    assert samples[("skiff_metrics_renders_total", ())] == 7
    assert samples[("skiff_http_connections_rejected_total", ())] == 1
    assert samples[("skiff_bpf_lookups_total", (("outcome", "lookups"),))] == 9
    assert families["skiff_connect_duration_seconds"].type == "histogram"
    assert families["skiff_connections"].type == "counter" and families["skiff_target_up"].type == "gauge"
    status = status_apps(apps, t.read(8, fields=(0,)))
    assert status == {'we"ird\\name': {"active": 1, "total": 3, "targets": {"h:1": {"up": True, "active": 1},
                                                                           "h:2": {"up": False, "active": 0}}}}


def test_an_empty_reading_renders_the_process_metrics() -> None:
    reading = Reading([], [], [], [])
    text = render([], reading, ProcessInfo()).decode()
    names = {f.name for f in text_string_to_metric_families(text)}
    assert {"skiff_config_version", "skiff_workers", "skiff_metrics_renders", "skiff_connections"} <= names


def test_the_checks_row_keeps_the_last_check_apart_from_the_records_and_resets_with_the_cell() -> None:
    """The status page's "last check": time and outcome per target, in its own row past the records."""
    t = table(capacity=16)
    t.app_stats(2, 15).tls_buckets[TLS_BUCKETS - 1] += 9  # the retired row's last int64, just before the checks row
    assert t.checks(16) == [0] * 16
    assert check_outcome(0) is None
    t.set_checked(4, 1_800_000_000.25, None)
    t.set_checked(5, 1_800_000_001.5, "timeout")
    t.set_checked(6, 1_800_000_002.0, "no such reason")  # counted as "error", like the failure counters
    assert [check_outcome(v) for v in t.checks(7)[4:]] == [(1_800_000_000.25, None), (1_800_000_001.5, "timeout"),
                                                        (1_800_000_002.0, "error")]
    assert t.read(16).record(15)[-1] == 9
    t.reset([5])
    assert t.checks(7)[4:] != [0, 0, 0] and t.checks(7)[5] == 0
