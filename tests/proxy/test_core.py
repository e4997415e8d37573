"""The rest of the pure core: snapshots, plans, framing and balancing, with plain values."""

from __future__ import annotations

import random

import pytest
from hypothesis import given
from hypothesis import strategies as st

from proxy.balancer import BACKOFF_MAX, TargetState, backoff, choose, mark_failed, mark_ok
from proxy.config import Target, parse_config
from proxy.framing import HEADER, MAX_FRAME, FrameDecoder, FramingError, encode
from proxy.plan import plan
from proxy.snapshot import first_snapshot, next_snapshot


def cfg(text: str) -> bytes:
    return text.encode()


A = parse_config(cfg('{"Apps": [{"Name": "a", "Ports": [1, 2], "Targets": ["x:1", "y:1"]},'
                     ' {"Name": "b", "Ports": [3], "Targets": ["z:1"]}]}'))
B = parse_config(cfg('{"Apps": [{"Name": "a", "Ports": [1], "Targets": ["x:1", "w:1"]},'
                     ' {"Name": "c", "Ports": [3, 4], "Targets": ["z:1"]}]}'))


# --- snapshots ---------------------------------------------------------------------------------------
def test_unchanged_content_makes_no_new_version() -> None:
    first = first_snapshot(A)
    same = parse_config(cfg('{"Apps":[{"Name":"a","Ports":[1,2],"Targets":["x:1","y:1"]},'
                            '{"Targets":["z:1"],"Name":"b","Ports":[3]}]}'))
    assert next_snapshot(first, same) is None
    second = next_snapshot(first, B)
    assert second is not None and second.version == 2 and second.digest != first.digest


def test_snapshot_wire_round_trip() -> None:
    snap = first_snapshot(A)
    from proxy.snapshot import Snapshot

    assert Snapshot.from_wire(snap.to_wire()) == snap


# --- plan --------------------------------------------------------------------------------------------
def test_plan_names_every_change() -> None:
    p = plan(A, B)
    assert p.added_ports == {4}
    assert p.removed_ports == {2}
    assert p.moved_ports == {3: ("b", "c")}
    assert p.added_apps == {"c"} and p.removed_apps == {"b"}
    assert p.target_changes["a"].added == (Target("w", 1),)
    assert p.target_changes["a"].removed == (Target("y", 1),)
    assert p.summary() == "+1 port, -1 port, 1 port moved, +1 app, -1 app, 2 targets changed"


def test_plan_of_identical_configs_is_empty() -> None:
    assert plan(A, A).summary() == "no routing change"


# --- framing -----------------------------------------------------------------------------------------
values = st.integers(-(2**63), 2**63 - 1) | st.text(max_size=20)


@given(st.lists(st.dictionaries(st.text(max_size=5), values, max_size=4), min_size=1, max_size=6), st.data())
def test_frames_survive_any_split(messages: list[dict[str, object]], data: st.DataObject) -> None:
    stream = b"".join(encode({"m": m}) for m in messages)
    cuts = sorted(data.draw(st.lists(st.integers(0, len(stream)), max_size=8)))
    decoder, got, start = FrameDecoder(), [], 0
    for cut in [*cuts, len(stream)]:
        got += decoder.feed(stream[start:cut])
        start = cut
    assert [g["m"] for g in got] == messages
    assert decoder.pending == 0


def test_framing_rejects_garbage() -> None:
    with pytest.raises(FramingError, match="over the"):
        FrameDecoder().feed(HEADER.pack(MAX_FRAME + 1))
    with pytest.raises(FramingError, match="not JSON"):
        FrameDecoder().feed(HEADER.pack(3) + b"{{{")
    with pytest.raises(FramingError, match="not a JSON object"):
        FrameDecoder().feed(HEADER.pack(2) + b"[]")


# --- balancing ---------------------------------------------------------------------------------------
def states(n: int) -> list[TargetState]:
    return [TargetState(Target(f"t{i}", 1)) for i in range(n)]


def test_p2c_prefers_fewer_outstanding() -> None:
    pool = states(2)
    pool[0].outstanding = 5
    rng = random.Random(1)
    assert all(choose(pool, 0.0, rng) is pool[1] for _ in range(50))


def test_p2c_spreads_evenly_when_idle() -> None:
    pool = states(4)
    rng = random.Random(7)
    counts = {id(s): 0 for s in pool}
    for _ in range(4000):
        chosen = choose(pool, 0.0, rng)
        assert chosen is not None
        counts[id(chosen)] += 1
    assert min(counts.values()) > 800


def test_down_targets_are_skipped_until_due() -> None:
    pool = states(3)
    assert mark_failed(pool[0], now=100.0) is True
    assert mark_failed(pool[0], now=100.0) is False  # already down: no second log line
    rng = random.Random(3)
    picks = {id(choose(pool, 100.5, rng)) for _ in range(200)}
    assert id(pool[0]) not in picks
    assert pool[0].down_until == 100.0 + backoff(2)
    assert choose([pool[0]], 200.0, rng) is pool[0]  # due again
    assert mark_ok(pool[0]) is True and not pool[0].marked_down


def test_each_target_tried_at_most_once_and_down_ones_last() -> None:
    pool = states(3)
    mark_failed(pool[2], now=0.0)
    rng = random.Random(5)
    tried: list[TargetState] = []
    while (chosen := choose(pool, 0.5, rng, tried)) is not None:
        tried.append(chosen)
    assert len(tried) == 3 and len({id(t) for t in tried}) == 3
    assert tried[-1] is pool[2]


def test_backoff_doubles_and_caps() -> None:
    assert [backoff(n) for n in (1, 2, 3)] == [1.0, 2.0, 4.0]
    assert backoff(50) == BACKOFF_MAX
