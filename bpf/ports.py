"""The pure part of port steering: which (port → group) entries to write and which to remove.

The kernel map is updated as an ordered diff, never cleared and refilled: upserts go first so a port that
stays (or moves to another group) is never absent, even for an instant, and only then are stale ports
removed.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass

PORT_MIN = 1
PORT_MAX = 65535


@dataclass(frozen=True)
class PortsDiff:
    """What one apply_ports call changed in the kernel map."""

    upserted: int
    deleted: int
    unchanged: int


def diff_ports(
    current: Mapping[int, int], wanted: Mapping[int, int]
) -> tuple[list[tuple[int, int]], list[int]]:
    """(upserts, deletes) turning current into wanted, each sorted by port for a stable, testable order.

    Upserts are new ports and ports whose group changed; deletes are ports no longer wanted.
    """
    upserts = sorted((port, group) for port, group in wanted.items() if current.get(port) != group)
    deletes = sorted(port for port in current if port not in wanted)
    return upserts, deletes


def validate_ports(wanted: Mapping[int, int], groups: int) -> None:
    """Refuse entries the map could hold but the program could never serve; raises ValueError."""
    for port, group in wanted.items():
        if not PORT_MIN <= port <= PORT_MAX:
            raise ValueError(f"port {port} is outside {PORT_MIN}..{PORT_MAX}")
        if not 0 <= group < groups:
            raise ValueError(f"port {port}: group {group} is outside 0..{groups - 1}")
