"""Balancing: power of two choices over least-outstanding connections, skipping targets marked down.

Pure: plain state and a random source in, a choice out. Passive health lives here too: a failed connect marks a
target down with exponential backoff; once the backoff has passed the target is tried again. When the workers
share counts (proxy/counters.py), a target's load is its connections across every worker and an active health
check's verdict takes it out of rotation; limits (SoftLimit, MaxConns) apply to that load.
"""

from __future__ import annotations

import random
from collections.abc import Collection, Sequence
from dataclasses import dataclass, field
from typing import Protocol

from proxy.config import Target
from proxy.counters import TargetCounts

BACKOFF_FIRST = 1.0
BACKOFF_MAX = 30.0


class Shared(Protocol):
    """A target's cell in the table every worker shares."""

    def add(self, delta: int) -> None: ...

    def total(self) -> int: ...

    def healthy(self) -> bool: ...

    def set_down(self, down: bool) -> None: ...


@dataclass(slots=True, eq=False)
class TargetState:
    """One worker's view of one target. Carries over a reload while the target stays in its app."""

    target: Target
    outstanding: int = 0
    failures: int = 0
    down_until: float = 0.0  # monotonic seconds; at or before now means the target may be tried
    # Successful and failed connects (by reason), for metrics: this worker's record of the target in the shared
    # table once bound (workers/policy.py), so they are counted where the supervisor reads them.
    counts: TargetCounts = field(default_factory=TargetCounts)
    shared: Shared | None = None

    @property
    def connects(self) -> int:
        return self.counts.connects

    @connects.setter
    def connects(self, value: int) -> None:
        self.counts.connects = value

    @property
    def errors(self) -> TargetCounts:
        return self.counts

    def is_up(self, now: float) -> bool:
        """May be tried now: its backoff has passed and its active checks (if any) pass."""
        return self.down_until <= now and self.checks_pass()

    def checks_pass(self) -> bool:
        return self.shared is None or self.shared.healthy()

    def load(self) -> int:
        """Connections to this target: across every worker when counts are shared, else this worker's."""
        return self.outstanding if self.shared is None else self.shared.total()

    def hold(self) -> None:
        self.outstanding += 1
        if self.shared is not None:
            self.shared.add(1)

    def release(self) -> None:
        self.outstanding -= 1
        if self.shared is not None:
            self.shared.add(-1)

    @property
    def marked_down(self) -> bool:
        return self.failures > 0


def backoff(failures: int) -> float:
    return float(min(BACKOFF_FIRST * 2 ** (failures - 1), BACKOFF_MAX))


def mark_failed(state: TargetState, now: float) -> bool:
    """Record a failed connect; True when this turns an up target down (worth one log line)."""
    state.failures += 1
    state.down_until = now + backoff(state.failures)
    if state.failures != 1:
        return False
    if state.shared is not None:
        state.shared.set_down(True)
    return True


def mark_ok(state: TargetState) -> bool:
    """Record a successful connect; True when this brings a down target back up."""
    if not state.failures:
        return False
    state.failures = 0
    state.down_until = 0.0
    if state.shared is not None:
        state.shared.set_down(False)
    return True


def choose(
    states: Sequence[TargetState], now: float, rng: random.Random, tried: Collection[TargetState] = (),
    soft_limit: int | None = None, max_conns: int | None = None,
) -> TargetState | None:
    """Pick the next target to try, never one in `tried` and never one at `max_conns`; None when none is left.

    Two random candidates among the targets that are up (and, if any is, below `soft_limit`); the one with fewer
    connections wins. When none is up, the target due soonest is tried anyway: a stale mark must not refuse a
    client.
    """
    if len(states) == 1 and max_conns is None:
        # One target: it is tried even when marked down (a stale mark must not refuse a client), once.
        return None if states[0] in tried else states[0]
    if not tried and soft_limit is None and max_conns is None and len(states) >= 2:
        # Fast path for the common case: two distinct random picks, both up.
        i = rng.randrange(len(states))
        j = rng.randrange(len(states) - 1)
        if j >= i:
            j += 1
        a, b = states[i], states[j]
        if a.is_up(now) and b.is_up(now):
            return a if a.load() <= b.load() else b
    candidates = [s for s in states if s not in tried]
    if max_conns is not None:
        candidates = [s for s in candidates if s.load() < max_conns]
    if not candidates:
        return None
    up = [s for s in candidates if s.is_up(now)]
    if not up:
        return min(candidates, key=lambda s: s.down_until)
    if soft_limit is not None:
        up = [s for s in up if s.load() < soft_limit] or up
    if len(up) == 1:
        return up[0]
    a, b = rng.sample(up, 2)
    return a if a.load() <= b.load() else b
