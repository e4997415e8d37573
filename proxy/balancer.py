"""Balancing: power of two choices over least-outstanding connections, skipping targets marked down.

Pure: plain state and a random source in, a choice out. Passive health lives here too: a failed connect marks a
target down with exponential backoff; once the backoff has passed the target is tried again.
"""

from __future__ import annotations

import random
from collections.abc import Collection, Sequence
from dataclasses import dataclass, field

from proxy.config import Target

BACKOFF_FIRST = 1.0
BACKOFF_MAX = 30.0


@dataclass(slots=True, eq=False)
class TargetState:
    """One worker's view of one target. Carries over a reload while the target stays in its app."""

    target: Target
    outstanding: int = 0
    failures: int = 0
    down_until: float = 0.0  # monotonic seconds; at or before now means the target may be tried
    connects: int = 0  # successful connects, for metrics
    errors: dict[str, int] = field(default_factory=dict)  # failed connects by reason, for metrics

    def is_up(self, now: float) -> bool:
        return self.down_until <= now

    @property
    def marked_down(self) -> bool:
        return self.failures > 0


def backoff(failures: int) -> float:
    return float(min(BACKOFF_FIRST * 2 ** (failures - 1), BACKOFF_MAX))


def mark_failed(state: TargetState, now: float) -> bool:
    """Record a failed connect; True when this turns an up target down (worth one log line)."""
    state.failures += 1
    state.down_until = now + backoff(state.failures)
    return state.failures == 1


def mark_ok(state: TargetState) -> bool:
    """Record a successful connect; True when this brings a down target back up."""
    was_down = state.failures > 0
    state.failures = 0
    state.down_until = 0.0
    return was_down


def choose(
    states: Sequence[TargetState], now: float, rng: random.Random, tried: Collection[TargetState] = ()
) -> TargetState | None:
    """Pick the next target to try, never one in `tried`.

    Two random candidates among the targets that are up; the one with fewer outstanding connections wins. When
    none is up, the target due soonest is tried anyway: a stale mark must not refuse a client.
    """
    if not tried and len(states) >= 2:
        # Fast path for the common case: two distinct random picks, both up.
        i = rng.randrange(len(states))
        j = rng.randrange(len(states) - 1)
        if j >= i:
            j += 1
        a, b = states[i], states[j]
        if a.down_until <= now and b.down_until <= now:
            return a if a.outstanding <= b.outstanding else b
    candidates = [s for s in states if s not in tried]
    if not candidates:
        return None
    up = [s for s in candidates if s.down_until <= now]
    if not up:
        return min(candidates, key=lambda s: s.down_until)
    if len(up) == 1:
        return up[0]
    a, b = rng.sample(up, 2)
    return a if a.outstanding <= b.outstanding else b
