"""Unit tests for bpf.ports: the ordered diff between the port map the kernel holds and the wanted one."""

from __future__ import annotations

import pytest
from hypothesis import given
from hypothesis import strategies as st

from bpf.ports import diff_ports, validate_ports

port_maps = st.dictionaries(st.integers(1, 65535), st.integers(0, 63), max_size=200)


def test_new_moved_and_stale_ports() -> None:
    upserts, deletes = diff_ports({80: 0, 443: 0, 22: 1}, {80: 0, 443: 1, 8080: 2})
    assert upserts == [(443, 1), (8080, 2)]
    assert deletes == [22]


def test_identical_maps_need_nothing() -> None:
    assert diff_ports({7001: 3}, {7001: 3}) == ([], [])


@given(port_maps, port_maps)
def test_upserts_then_deletes_reach_wanted(current: dict[int, int], wanted: dict[int, int]) -> None:
    upserts, deletes = diff_ports(current, wanted)
    state = dict(current)
    for port, group in upserts:
        state[port] = group
    # Between the two phases every wanted port is already in place: nothing wanted is ever missing.
    assert all(state[port] == group for port, group in wanted.items())
    for port in deletes:
        del state[port]
    assert state == wanted


@given(port_maps, port_maps)
def test_diff_touches_only_what_differs(current: dict[int, int], wanted: dict[int, int]) -> None:
    upserts, deletes = diff_ports(current, wanted)
    assert all(current.get(port) != group for port, group in upserts)
    assert set(deletes) == set(current) - set(wanted)


@pytest.mark.parametrize(
    ("wanted", "message"),
    [({0: 0}, "port 0 is outside"), ({65536: 0}, "port 65536"), ({80: 64}, "group 64 is outside 0..63")],
)
def test_validate_refuses_unservable_entries(wanted: dict[int, int], message: str) -> None:
    with pytest.raises(ValueError, match=message):
        validate_ports(wanted, groups=64)
