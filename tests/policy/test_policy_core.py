"""The pure parts of traffic policy: PROXY headers byte for byte, the shared counter table, stable cells, and
P2C under SoftLimit/MaxConns/health verdicts."""

from __future__ import annotations

import random
import struct

from hypothesis import given
from hypothesis import strategies as st

from proxy import proxyproto
from proxy.balancer import TargetState, choose
from proxy.config import Target, parse_document
from proxy.counters import HEALTH_DOWN, CellMap, CounterTable, cell_keys

V2_SIG = b"\r\n\r\n\x00\r\nQUIT\n"


def test_v1_header_ipv4_and_ipv6() -> None:
    assert proxyproto.encode_v1(("10.1.2.3", 51000), ("127.0.0.1", 5001)) == \
        b"PROXY TCP4 10.1.2.3 127.0.0.1 51000 5001\r\n"
    assert proxyproto.encode_v1(("::1", 4000, 0, 0), ("2001:db8::1", 443, 0, 0)) == \
        b"PROXY TCP6 ::1 2001:db8::1 4000 443\r\n"
    assert proxyproto.encode_v1(("::ffff:10.0.0.1", 1, 0, 0), ("::ffff:10.0.0.2", 2, 0, 0)) == \
        b"PROXY TCP4 10.0.0.1 10.0.0.2 1 2\r\n"
    assert proxyproto.encode_v1(None, ("127.0.0.1", 1)) == b"PROXY UNKNOWN\r\n"


def test_v2_header_ipv4_bytes() -> None:
    header = proxyproto.encode_v2(("10.1.2.3", 51000), ("127.0.0.1", 5001))
    assert header == V2_SIG + bytes([0x21, 0x11, 0, 12, 10, 1, 2, 3, 127, 0, 0, 1]) + struct.pack("!HH", 51000, 5001)


def test_v2_header_ipv6_and_local() -> None:
    header = proxyproto.encode_v2(("::1", 4000, 0, 0), ("::2", 443, 0, 0))
    assert header[12:16] == bytes([0x21, 0x21, 0, 36]) and len(header) == 16 + 36
    assert proxyproto.encode_v2(("127.0.0.1", 1), ("::1", 2, 0, 0)) == V2_SIG + bytes([0x20, 0, 0, 0])


@given(st.ip_addresses(v=4), st.ip_addresses(v=4), st.integers(1, 65535), st.integers(1, 65535))
def test_v2_v4_round_trip(src: object, dst: object, sport: int, dport: int) -> None:
    header = proxyproto.encode_v2((str(src), sport), (str(dst), dport))
    assert header[:12] == V2_SIG
    (length,) = struct.unpack("!H", header[14:16])
    assert length == 12 == len(header) - 16
    assert header[16:20] == src.packed and header[20:24] == dst.packed  # type: ignore[attr-defined]
    assert struct.unpack("!HH", header[24:28]) == (sport, dport)


def test_counter_table_rows_sum_and_zero() -> None:
    table = CounterTable(3, capacity=8, buffer=bytearray(CounterTable.size(3, 8)))
    table.cell(0, 5).add(2)
    table.cell(2, 5).add(3)
    table.cell(1, 4).add(1)
    assert table.total(5) == 5 and table.total(4) == 1 and table.is_zero(3)
    assert table.cell(1, 5).total() == 5
    table.set_health(5, HEALTH_DOWN)
    assert not table.cell(0, 5).healthy() and table.cell(0, 4).healthy()
    assert table.total(5) == 5  # the health row is not a count
    table.retire(2, used=8)
    assert table.total(5) == 2


def config(*apps: tuple[str, list[str]]) -> object:
    return parse_document({"Apps": [{"Name": n, "Ports": [i + 1], "Targets": t} for i, (n, t) in enumerate(apps)]})


def test_cells_are_stable_for_names_that_stay_and_reused_only_when_settled_and_zero() -> None:
    first = config(("a", ["h:1", "h:2"]), ("b", ["h:3"]))
    m1 = CellMap(capacity=10).assign(first, 1, 1, lambda c: True)  # type: ignore[arg-type]
    assert sorted(m1.cells.values()) == list(range(5))
    second = config(("b", ["h:3"]), ("c", ["h:4"]))
    m2 = m1.assign(second, 2, 1, lambda c: True)  # type: ignore[arg-type]
    assert m2.cells["b"] == m1.cells["b"] and m2.cells["b\nh:3"] == m1.cells["b\nh:3"]
    assert m2.cells["c"] >= 5  # a's cells were freed by v2, which no worker has acknowledged yet
    third = config(("b", ["h:3"]), ("c", ["h:4"]), ("d", ["h:5"]))
    busy = m1.cells["a"]
    m3 = m2.assign(third, 3, 2, lambda c: c != busy)  # type: ignore[arg-type]
    assert m3.cells["d"] in {m1.cells["a\nh:1"], m1.cells["a\nh:2"]}  # settled and zero: reused
    assert busy not in m3.cells.values()  # still counting connections of the old app: not reused
    assert set(m3.new_cells(m2)) == {m3.cells["d"], m3.cells["d\nh:5"]}
    assert len(cell_keys(third)) == len(m3.cells)  # type: ignore[arg-type]


def states(loads: list[int], table: CounterTable) -> list[TargetState]:
    result = []
    for i, load in enumerate(loads):
        cell = table.cell(0, i)
        cell.add(load)
        result.append(TargetState(Target("h", i + 1), shared=cell))
    return result


def test_soft_limit_avoids_targets_above_it_unless_all_are() -> None:
    table = CounterTable(1, capacity=4, buffer=bytearray(CounterTable.size(1, 4)))
    pool = states([5, 9, 1], table)
    rng = random.Random(1)
    picks = {choose(pool, 0.0, rng, soft_limit=5).target.port for _ in range(50)}  # type: ignore[union-attr]
    assert picks == {3}
    table.cell(0, 2).add(10)
    assert choose(pool, 0.0, rng, soft_limit=5) is not None  # every target above soft: still served


def test_max_conns_excludes_full_targets_and_health_down_is_skipped() -> None:
    table = CounterTable(1, capacity=4, buffer=bytearray(CounterTable.size(1, 4)))
    pool = states([3, 2, 0], table)
    rng = random.Random(2)
    table.set_health(2, HEALTH_DOWN)
    assert {choose(pool, 0.0, rng, max_conns=3).target.port for _ in range(30)} == {2}  # type: ignore[union-attr]
    table.cell(0, 1).add(1)
    table.cell(0, 2).add(3)
    assert choose(pool, 0.0, rng, max_conns=3) is None
