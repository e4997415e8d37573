"""Connect deadlines on shared timers: one loop timer per tick of deadlines, not one per connection.

A uvloop timer costs about 2.4 µs to make and cancel (a TimerHandle and a libuv handle each), more than the
rest of a connection's connect bookkeeping together, and on a busy port thousands of connects start per second,
each done within a millisecond. So deadlines are rounded up to the next TICK: every connect that must be done by
the same tick shares one timer, and an item only joins and leaves a set. A deadline fires at most TICK late.
"""

from __future__ import annotations

import asyncio
from collections.abc import Callable
from typing import Generic, TypeVar

T = TypeVar("T")

TICK = 0.01  # seconds; uvloop's clock has millisecond resolution


class Deadlines(Generic[T]):
    """Items with a deadline; `expire(item)` runs for each item still watched when its tick comes."""

    __slots__ = ("buckets", "expire", "loop")

    def __init__(self, loop: asyncio.AbstractEventLoop, expire: Callable[[T], None]) -> None:
        self.loop = loop
        self.expire = expire
        self.buckets: dict[int, set[T]] = {}  # tick number -> the items due by then

    def watch(self, item: T, timeout: float) -> set[T]:
        """Expire `item` once `timeout` seconds have passed, unless it is discarded from the returned set first."""
        tick = -int(-(self.loop.time() + timeout) // TICK)  # rounded up: never early
        bucket = self.buckets.get(tick)
        if bucket is None:
            bucket = self.buckets[tick] = set()
            self.loop.call_at(tick * TICK, self.fire, tick)
        bucket.add(item)
        return bucket

    def fire(self, tick: int) -> None:
        for item in tuple(self.buckets.pop(tick, ())):  # an expiry may discard others from the set
            self.expire(item)

    def __len__(self) -> int:
        return sum(len(bucket) for bucket in self.buckets.values())
