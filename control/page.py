"""The status page's data: what `/` shows, as a full snapshot for a new viewer and as per-second changes.

Runs on the supervisor's loop, so it reads the shared counter table (proxy/counters.py) the cheap way. Each
tick copies, as bytes (C speed), the columns the page shows for the cells in use: connections open, passive
marks, health verdicts, last checks and, only while someone watches, six record fields (strided) instead of the
whole record. A region equal to the last copy costs one comparison; otherwise only the chunks of CHUNK cells
that differ are decoded into Python values, and only the cells whose values changed (or whose rate just fell
to zero) are turned into JSON. So the work per tick is about a millisecond at 2,000 apps x 3 targets when
nothing moves, and grows with what moved, not with the config. Target transitions are tracked on every tick,
so "down since" is right to within a tick even for a page opened later. A target's last health check alone
marks it changed at most every CHECK_GRAIN (its outcome changing, at once).

Departed apps (left the config, connections still open) are shown by /metrics and /status, not here.
"""

from __future__ import annotations

import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from functools import reduce
from operator import add
from typing import TYPE_CHECKING, Any

from proxy.counters import HEALTH_UP, REASONS, RECORD, CellMap, CounterTable, check_outcome
from proxy.exposition import AppCells

if TYPE_CHECKING:
    from control.arbiter import Supervisor

FIELDS = (0, 1, 2, 3, 4, 5)  # app: total failed failovers refused bytes_in bytes_out; target: connects, REASONS
_ACTIVE, _DOWN, _HEALTH, _CHECK = range(4)  # a row is (active, down marks, health, last check, *FIELDS)
_F = 4
CHUNK = 256  # cells compared as one block of bytes
CHECK_GRAIN = 10_000  # ms: a target's last-check time alone makes it "changed" at most this often


@dataclass
class _Target:
    up: bool
    since: float | None  # None: as it was when the supervisor started watching


@dataclass
class PageModel:
    """One per supervisor. `tick` reads the table; `snapshot` and `delta` turn what it read into JSON values."""

    supervisor: Supervisor
    apps: Callable[[], list[AppCells]]
    watched: Callable[[], bool] = lambda: False  # whether any viewer is connected (records are read only then)
    cells: CellMap | None = None
    layout: list[AppCells] = field(default_factory=list)
    is_app: dict[int, bool] = field(default_factory=dict)
    rows: list[tuple[int, ...]] = field(default_factory=list)
    shown: dict[int, dict[str, Any]] = field(default_factory=dict)  # cell -> values last sent
    moving: set[int] = field(default_factory=set)  # cells whose rate was not zero at the last tick
    targets: dict[int, _Target] = field(default_factory=dict)
    peaks: dict[int, int] = field(default_factory=dict)
    rates: dict[int, float] = field(default_factory=dict)
    read_at: float = 0.0
    full: bool = False  # the last tick read the records
    meta: dict[str, Any] = field(default_factory=dict)
    started: float = field(default_factory=time.time)
    pending: list[int] = field(default_factory=list)  # cells that changed at the last tick
    checks: Sequence[int] = ()  # the checks row as read (rows hold it coarsened)
    scan: _Scan = field(default_factory=lambda: _Scan())

    def tick(self, now: float | None = None) -> bool:
        """Read the table; True when the layout changed (a reload: every viewer needs a new snapshot)."""
        s = self.supervisor
        now = time.time() if now is None else now
        relaid = self.cells is not s.cells
        if relaid:
            self.cells = s.cells
            self.layout = self.apps()
            self.is_app = {a.cell: True for a in self.layout}
            self.is_app.update((c, False) for a in self.layout for _, c in a.targets)
            self.rows, self.shown, self.moving, self.rates = [], {}, set(), {}
            self.targets = {c: t for c, t in self.targets.items() if c in self.is_app}
        used = s.cells.fresh
        full = self.watched()
        if len(self.rows) != used or full != self.full:
            self.rows, self.scan.regions = [()] * used, []  # every cell reads as changed (records are zeros
            # in the rows while nobody watches)
        previous = list(self.rows)
        dirty = self.scan.read(s.counters, used, full)
        self.checks = self.scan.checks()
        changed = []
        for lo, hi in dirty:
            for cell, row in enumerate(self.scan.rows(s.counters.workers, lo, hi, full), start=lo):
                if row != self.rows[cell]:
                    changed.append(cell)
                    self.rows[cell] = row
        rows = self.rows
        dt = now - self.read_at if self.full and full and self.read_at else 0.0
        for cell in changed:
            if cell not in self.is_app:
                continue
            row, before = rows[cell], previous[cell]
            if dt > 0 and before:
                self.rates[cell] = max(0, row[_F] - before[_F]) / dt
            if row[_ACTIVE] > self.peaks.get(cell, 0):
                self.peaks[cell] = row[_ACTIVE]
            if not self.is_app[cell]:
                self.track(cell, row, now)
        stopped = self.moving.difference(changed)  # nothing new since the last tick: the rate is zero now
        for cell in stopped:
            self.rates[cell] = 0.0
        self.moving = {c for c in changed if self.rates.get(c)}
        self.rows, self.read_at, self.full = rows, now, full
        self.pending = sorted(stopped.union(changed))
        return relaid

    def track(self, cell: int, row: tuple[int, ...], now: float) -> None:
        up = row[_HEALTH] == HEALTH_UP and not row[_DOWN]
        known = self.targets.get(cell)
        if known is None:
            self.targets[cell] = _Target(up, None if not self.read_at else now)
        elif known.up != up:
            known.up, known.since = up, now

    def values(self, cell: int) -> dict[str, Any]:
        row = self.rows[cell]
        f = row[_F:]
        shown: dict[str, Any] = {"a": row[_ACTIVE], "p": self.peaks.get(cell, row[_ACTIVE]),
                                 "r": round(self.rates.get(cell, 0.0), 1)}
        if self.is_app.get(cell):
            shown.update(t=f[0], f=f[1], fo=f[2], x=f[3], i=f[4], o=f[5])
            return shown
        target = self.targets.get(cell) or _Target(True, None)
        failures = {reason: n for reason, n in zip(REASONS, f[1:], strict=True) if n}
        check = check_outcome(self.checks[cell])
        shown.update(t=f[0], fail=failures, up=target.up, since=target.since, why=self.why(cell, row, failures),
                     check=None if check is None else [check[0], check[1] or "ok"])
        return shown

    def why(self, cell: int, row: tuple[int, ...], failures: dict[str, int]) -> str | None:
        if row[_HEALTH] != HEALTH_UP:
            check = check_outcome(self.checks[cell])
            return f"health check failed: {check[1] if check and check[1] else 'failing'}"
        if row[_DOWN]:
            reason = max(failures, key=failures.__getitem__) if failures else "error"
            workers = self.supervisor.options.workers
            return f"connects failed ({reason}): marked down by {row[_DOWN]} of {workers} workers"
        return None

    def snapshot(self) -> dict[str, Any]:
        """Everything, for a viewer that just connected (from the last tick's reading)."""
        if not self.rows or not self.full:
            self.tick()
        apps = []
        configs = {a.name: a for a in self.supervisor.snapshot.config.apps}
        for app in self.layout:
            config = configs.get(app.name)
            apps.append({"name": app.name, "cell": app.cell, "ports": list(config.ports) if config else [],
                         "limit": config.hard_limit if config else None,
                         "maxconns": config.max_conns if config else None,
                         "checked": bool(config and config.health_check),
                         "targets": [[name, cell] for name, cell in app.targets]})
        cells = {cell: self.values(cell) for cell in self.is_app}
        self.shown = dict(cells)
        self.meta = self.process()
        return {"t": self.read_at, "started": self.started, "apps": apps, "cells": cells, "meta": self.meta}

    def delta(self) -> dict[str, Any]:
        """What changed since the last snapshot or delta (always the reading's time, so viewers see it is live)."""
        cells = {}
        for cell in self.pending:
            if cell in self.is_app:
                values = self.values(cell)
                if self.shown.get(cell) != values:
                    cells[cell] = self.shown[cell] = values
        meta = self.process()
        changes: dict[str, Any] = {"t": self.read_at}
        if cells:
            changes["cells"] = cells
        if meta != self.meta:
            changes["meta"] = self.meta = meta
        return changes

    def process(self) -> dict[str, Any]:
        s = self.supervisor
        status = s.reload_status
        history = s.reload_history
        return {
            "version": s.snapshot.version,
            "healthy": s.observer.health_problem() is None,
            "problem": s.observer.health_problem(),
            "steering": s.options.steering,
            "bpf": s.listeners.counters() or None,
            "last_reload": {"ok": status.ok, "at": status.at, "error": status.error},
            "reloads": [{"ok": r.ok, "at": r.at, "error": r.error, "version": v} for r, v in reversed(history)],
            "workers": [{"slot": h.slot, "pid": h.pid, "state": h.state.value, "version": h.acked_version}
                        for h in sorted(s.handles.values(), key=lambda h: h.slot)],
            "restarts": s.worker_restarts,
        }


class _Scan:
    """The table's columns the page shows, copied as bytes per region (C speed, strided for the records), and
    which chunks of CHUNK cells differ from the last copy: only those are decoded into Python values."""

    def __init__(self) -> None:
        self.regions: list[bytes] = []
        self.views: list[memoryview] = []
        self.check_region = 0

    def read(self, table: CounterTable, used: int, full: bool) -> list[tuple[int, int]]:
        view, cap, w = table.view, table.capacity, table.workers
        # No seqlock retry: the supervisor folds a reaped worker's records on this same loop, never mid-read.
        regions = [view[b + r * cap:b + r * cap + used].tobytes()
                   for b in (table.count_base, table.down_base) for r in range(w)]
        regions += [view[table.health_base:table.health_base + used].tobytes(),
                    view[table.check_base:table.check_base + used].tobytes()]
        if full:
            regions += [view[table._record(r, 0) + f:table._record(r, used):RECORD].tobytes()
                        for r in range(w + 1) for f in FIELDS]
        before, self.regions, self.check_region = self.regions, regions, 2 * w + 1
        self.views = [memoryview(r).cast("q") for r in regions]
        if len(before) != len(regions):
            return [(0, used)] if used else []
        moved = [(now, then) for now, then in zip(regions, before, strict=True) if now != then]
        dirty = []
        for lo in range(0, used if moved else 0, CHUNK):
            a, b = lo * 8, min(used, lo + CHUNK) * 8
            if any(now[a:b] != then[a:b] for now, then in moved):
                dirty.append((lo, min(used, lo + CHUNK)))
        return dirty

    def checks(self) -> memoryview:
        """The checks row as last copied, raw (the rows hold it coarsened)."""
        return self.views[self.check_region] if self.views else memoryview(b"").cast("q")

    def rows(self, workers: int, lo: int, hi: int, full: bool) -> list[tuple[int, ...]]:
        """Cells [lo, hi) as (active, down marks, health, last check coarsened, *FIELDS) summed over rows."""
        v = [view[lo:hi].tolist() for view in self.views]
        counts, down = _add(v[:workers]), _add(v[workers:2 * workers])
        health, checks = v[2 * workers], v[2 * workers + 1]
        coarse = [(c >> 4) // CHECK_GRAIN << 4 | (c & 15) for c in checks]  # outcome at once, time coarsely
        fields = ([_add(v[2 * workers + 2 + i::len(FIELDS)]) for i in range(len(FIELDS))] if full
                  else [[0] * (hi - lo)] * len(FIELDS))
        return list(zip(counts, down, health, coarse, *fields, strict=True))


def _add(rows: list[list[int]]) -> list[int]:
    return reduce(lambda a, b: list(map(add, a, b)), rows)
