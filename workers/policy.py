"""A worker's traffic policy: cells and counter records bound to its routes, admission under HardLimit,
refusals counted and logged sparingly.

Counts live in the shared table (proxy/counters.py), so limits hold for all workers together. Admission counts
first and checks after (add 1, read the sum, take the 1 back if over): two workers racing for the last place
may both refuse, but together they never admit more than the limit.
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import Callable, Mapping

from proxy.counters import Cell, CounterTable, target_key
from proxy.logs import log_event
from workers.routes import AppRoute, RoutingTable

log = logging.getLogger("worker")

REFUSAL_LOG_INTERVAL = 10.0  # at most one refusal line per app per this many seconds


class Policy:
    def __init__(self, slot: int, counters: CounterTable | None, on_fds_exhausted: Callable[[], None]) -> None:
        self.slot = slot
        self.counters = counters
        self.on_fds_exhausted = on_fds_exhausted
        self.unlogged: dict[str, int] = {}  # app -> refusals since its last line
        self.logged_at: dict[str, float] = {}
        self.loop = asyncio.get_running_loop()

    def bind(self, table: RoutingTable, cells: Mapping[str, int]) -> None:
        """Point each app and target at its cell (gauges) and at this worker's record of it (counters); names
        that stay keep theirs, so counts survive a reload."""
        counters = self.counters
        if counters is None:
            return
        slot = self.slot
        for name, route in table.apps.items():
            index = cells.get(name)
            if index is None:
                route.shared = None
            elif not _bound(route.shared, index):
                route.shared = counters.cell(slot, index)
                route.stats = counters.app_stats(slot, index)
            for state in route.targets:
                index = cells.get(target_key(name, state.target))
                if index is None:
                    state.shared = None
                elif not _bound(state.shared, index):
                    state.shared = counters.cell(slot, index)
                    state.counts = counters.target_counts(slot, index)

    def admit(self, route: AppRoute) -> bool:
        """Count a new client of `route`; False (and counted as refused) when its app is at HardLimit."""
        cell = route.shared
        if cell is None:
            return True
        cell.add(1)
        limit = route.app.hard_limit
        if limit is not None and cell.total() > limit:
            cell.add(-1)
            self.refuse(route, f"at HardLimit ({limit} connections)")
            return False
        return True

    def release(self, route: AppRoute) -> None:
        if route.shared is not None:
            route.shared.add(-1)

    def refuse(self, route: AppRoute, why: str) -> None:
        route.stats.refused += 1
        name = route.app.name
        self.unlogged[name] = self.unlogged.get(name, 0) + 1
        due = self.logged_at.get(name, -REFUSAL_LOG_INTERVAL) + REFUSAL_LOG_INTERVAL
        now = time.monotonic()
        if now >= due:
            self.log_refusals(name, why)
        elif self.unlogged[name] == 1:
            self.loop.call_at(self.loop.time() + (due - now), self.log_refusals, name, why)

    def log_refusals(self, name: str, why: str) -> None:
        count = self.unlogged.pop(name, 0)
        if not count:
            return
        self.logged_at[name] = time.monotonic()
        log_event(log, logging.WARNING, "refused",
                  f"app {name}: refused {count} connection{'s' if count != 1 else ''} ({why})",
                  app=name, worker=self.slot)

    def fds_exhausted(self, exc: OSError) -> None:
        self.on_fds_exhausted()


def _bound(shared: object, index: int) -> bool:
    return isinstance(shared, Cell) and shared.index == index
