"""Real sk_lookup steering in a fresh network namespace: which connections land where, and what the maps say.

Each test runs its body in a forked child inside its own namespace (see skiff_bpf_harness.Netns.run), with
pins on a private bpffs, and checks afterwards that closing with unpin=True left nothing pinned.
"""

from __future__ import annotations

import socket
from pathlib import Path

from skiff_bpf_harness import Netns, connect_and_accept, connect_outcome, listener

from bpf.loader import Steering


def _assert_unpinned(pin_root: Path) -> None:
    assert not (pin_root / "skiff").exists(), sorted(p.name for p in (pin_root / "skiff").rglob("*"))


def _steers_to_original_port(obj: Path, pin_root: Path) -> dict[int, int]:
    steering = Steering.open("steer", obj, pin_root=pin_root)
    try:
        group0 = listener()
        steering.set_group_socket(0, group0)
        steering.apply_ports({7001: 0, 9999: 0, 40000: 0})
        return {port: connect_and_accept(port, group0) for port in (7001, 9999, 40000)}
    finally:
        steering.close(unpin=True)


def test_configured_ports_reach_the_group_listener(netns: Netns, bpf_object: Path, pin_root: Path) -> None:
    """1. Steer 7001, 9999 and 40000 to group 0, whose listener sits on an ephemeral port.
    2. Connect to each: the listener accepts, and the accepted socket names the port the client dialled."""
    seen = netns.run(_steers_to_original_port, bpf_object, pin_root)
    assert seen == {7001: 7001, 9999: 9999, 40000: 40000}
    _assert_unpinned(pin_root)


def _unconfigured_and_socketless(obj: Path, pin_root: Path) -> dict[str, object]:
    steering = Steering.open("drop", obj, pin_root=pin_root)
    try:
        steering.set_group_socket(0, listener())
        steering.apply_ports({7001: 0, 7002: 5})  # group 5 never gets a socket
        # A stray listener on the socketless port must not receive it: the port is ours.
        stray = socket.create_server(("127.0.0.1", 7002))
        unconfigured = connect_outcome(7003)
        socketless = connect_outcome(7002)
        stray.settimeout(0.2)
        try:
            stray.accept()
            stray_got_it = True
        except TimeoutError:
            stray_got_it = False
        return {
            "unconfigured": unconfigured,
            "socketless": socketless,
            "stray_got_it": stray_got_it,
            "counters": steering.counters(),
        }
    finally:
        steering.close(unpin=True)


def test_unconfigured_port_refused_and_socketless_port_dropped(
    netns: Netns, bpf_object: Path, pin_root: Path
) -> None:
    """1. Configure 7001 → group 0 (has a socket) and 7002 → group 5 (no socket); a stray listener binds 7002.
    2. 7003 is not ours: the normal lookup finds nobody, so the client gets a refusal.
    3. 7002 is ours without a socket: SK_DROP makes the lookup fail, the kernel answers with RST, so the
       client sees 'refused' at once (not a timeout), and the stray listener on 7002 gets nothing."""
    result = netns.run(_unconfigured_and_socketless, bpf_object, pin_root)
    assert result["unconfigured"][0] == "refused"
    outcome, seconds = result["socketless"]
    assert outcome == "refused"
    assert seconds < 0.5
    assert result["stray_got_it"] is False
    assert result["counters"] == {"lookups": 1, "steered": 0, "dropped_no_socket": 1, "errors": 0}
    _assert_unpinned(pin_root)


def _ordered_diff(obj: Path, pin_root: Path) -> dict[str, object]:
    steering = Steering.open("diff", obj, pin_root=pin_root)
    try:
        group0, group1 = listener(), listener()
        steering.set_group_socket(0, group0)
        steering.set_group_socket(1, group1)
        first = steering.apply_ports({7001: 0, 7002: 0, 7003: 1})
        second = steering.apply_ports({7001: 0, 7002: 1, 7004: 1})  # keep, move, add; drop 7003
        again = steering.apply_ports({7001: 0, 7002: 1, 7004: 1})
        return {
            "diffs": [first, second, again],
            "ports": steering.ports(),
            "7002 lands on group 1": connect_and_accept(7002, group1),
            "7004 lands on group 1": connect_and_accept(7004, group1),
            "7001 lands on group 0": connect_and_accept(7001, group0),
            "7003": connect_outcome(7003)[0],
            "counters": steering.counters(),
        }
    finally:
        steering.close(unpin=True)


def test_apply_ports_is_an_ordered_diff(netns: Netns, bpf_object: Path, pin_root: Path) -> None:
    """1. Apply {7001: 0, 7002: 0, 7003: 1}, then {7001: 0, 7002: 1, 7004: 1}, then the same again.
    2. The counts say what moved; the kernel map equals the last wanted map.
    3. Traffic follows: 7002 moved to group 1, 7004 is new, 7003 is gone (refused)."""
    result = netns.run(_ordered_diff, bpf_object, pin_root)
    first, second, again = result["diffs"]
    assert (first.upserted, first.deleted, first.unchanged) == (3, 0, 0)
    assert (second.upserted, second.deleted, second.unchanged) == (2, 1, 1)
    assert (again.upserted, again.deleted, again.unchanged) == (0, 0, 3)
    assert result["ports"] == {7001: 0, 7002: 1, 7004: 1}
    assert result["7002 lands on group 1"] == 7002
    assert result["7004 lands on group 1"] == 7004
    assert result["7001 lands on group 0"] == 7001
    assert result["7003"] == "refused"
    assert result["counters"]["steered"] == 3
    _assert_unpinned(pin_root)


def _bind_address(obj: Path, pin_root: Path) -> dict[str, object]:
    steering = Steering.open("addr", obj, pin_root=pin_root)
    try:
        group0 = listener()
        steering.set_group_socket(0, group0)
        steering.apply_ports({7001: 0})
        steering.set_bind_address("127.0.0.2")
        other = connect_outcome(7001, host="127.0.0.1")[0]
        ours = connect_and_accept(7001, group0, host="127.0.0.2")
        steering.set_bind_address(None)
        any_again = connect_and_accept(7001, group0, host="127.0.0.1")
        return {"other": other, "ours": ours, "any_again": any_again}
    finally:
        steering.close(unpin=True)


def test_bind_address_limits_steering(netns: Netns, bpf_object: Path, pin_root: Path) -> None:
    """1. Steer 7001 for 127.0.0.2 only: 127.0.0.1:7001 is passed to the normal lookup (refused),
       127.0.0.2:7001 is steered.
    2. Clear the address: 127.0.0.1:7001 is steered again."""
    result = netns.run(_bind_address, bpf_object, pin_root)
    assert result == {"other": "refused", "ours": 7001, "any_again": 7001}


def _ipv6(obj: Path, pin_root: Path) -> dict[str, object]:
    steering = Steering.open("v6", obj, pin_root=pin_root)
    other = socket.socket(socket.AF_INET6, socket.SOCK_STREAM)  # another program's IPv6 listener on port 7001
    try:
        other.setsockopt(socket.IPPROTO_IPV6, socket.IPV6_V6ONLY, 1)
        other.bind(("::1", 7001))
        other.listen(16)
        v4_only, dual = listener(), listener("::", socket.AF_INET6)
        v6_only = socket.socket(socket.AF_INET6, socket.SOCK_STREAM)
        v6_only.setsockopt(socket.IPPROTO_IPV6, socket.IPV6_V6ONLY, 1)
        v6_only.bind(("::1", 0))
        v6_only.listen(16)
        steering.set_group_socket(0, v4_only)
        steering.set_group_socket(1, dual)
        steering.set_group_socket(2, v6_only)
        steering.apply_ports({7001: 0, 7002: 1, 7003: 2})
        return {
            "v4 to v4 group": connect_and_accept(7001, v4_only, host="127.0.0.1"),
            "v6 to v4 group": [connect_and_accept(7001, other, host="::1") for _ in range(5)],
            "v6 to dual group": connect_and_accept(7002, dual, host="::1"),
            "v4 to dual group": connect_and_accept(7002, dual, host="127.0.0.1"),
            "v6 to v6 group": connect_and_accept(7003, v6_only, host="::1"),
            "v4 to v6 group": connect_outcome(7003, host="127.0.0.1")[0],
            "counters": steering.counters(),
        }
    finally:
        other.close()
        steering.close(unpin=True)


def test_each_group_steers_only_the_families_its_socket_takes(netns: Netns, bpf_object: Path,
                                                                pin_root: Path) -> None:
    """1. Group 0 has an AF_INET listener, group 1 a dual-stack AF_INET6 one, group 2 an IPV6_V6ONLY one;
       another program listens on [::1]:7001.
    2. IPv6 to group 0's port is passed, not dropped: the other program gets all 5 connections.
    3. Group 1 takes IPv6 and IPv4; group 2 takes IPv6, and IPv4 to its port is passed (nobody: refused).
    4. No lookup ended in an error or a drop."""
    result = netns.run(_ipv6, bpf_object, pin_root)
    assert result["v4 to v4 group"] == 7001
    assert result["v6 to v4 group"] == [7001] * 5
    assert result["v6 to dual group"] == 7002
    assert result["v4 to dual group"] == 7002
    assert result["v6 to v6 group"] == 7003
    assert result["v4 to v6 group"] == "refused"
    assert result["counters"]["errors"] == 0
    assert result["counters"]["dropped_no_socket"] == 0
    assert result["counters"]["steered"] == 4


def _scale(obj: Path, pin_root: Path) -> dict[str, object]:
    steering = Steering.open("scale", obj, pin_root=pin_root)
    try:
        group0, group1 = listener(), listener()
        steering.set_group_socket(0, group0)
        steering.set_group_socket(1, group1)
        first = {port: port % 2 for port in range(20000, 30000)}
        loaded = steering.apply_ports(first)
        loaded_ok = steering.ports() == first
        second = {port: port % 2 for port in range(25000, 35000)}  # 5,000 stay, 5,000 go, 5,000 new
        moved = steering.apply_ports(second)
        return {
            "loaded": loaded,
            "loaded_ok": loaded_ok,
            "moved": moved,
            "moved_ok": steering.ports() == second,
            "samples": [connect_and_accept(p, group1 if p % 2 else group0) for p in (25000, 30001, 34998)],
            "gone": connect_outcome(20000)[0],
        }
    finally:
        steering.close(unpin=True)


def test_ten_thousand_ports(netns: Netns, bpf_object: Path, pin_root: Path) -> None:
    """1. Load 10,000 ports split over two groups; the map reads back equal.
    2. Shift the range by 5,000: 5,000 deleted, 5,000 added, 5,000 untouched; the map reads back equal.
    3. Sampled ports steer to their group; a dropped one is refused."""
    result = netns.run(_scale, bpf_object, pin_root)
    assert result["loaded_ok"] and result["moved_ok"]
    assert (result["loaded"].upserted, result["loaded"].deleted) == (10000, 0)
    moved = result["moved"]
    assert (moved.upserted, moved.deleted, moved.unchanged) == (5000, 5000, 5000)
    assert result["samples"] == [25000, 30001, 34998]
    assert result["gone"] == "refused"
    _assert_unpinned(pin_root)
