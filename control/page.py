"""The status page's data: what `/` shows, as a full snapshot for a new viewer and as per-second changes.

Runs on the supervisor's loop, so it reads the shared counter table the cheap way (proxy/counters.py): every
tick reads the gauges (connections open, passive marks, health verdicts, last checks) of the cells in use and,
only while someone watches, six record fields instead of the whole record. Cells are compared as tuples made
by `zip` (C speed); only the cells that changed (or whose rate just fell to zero) are turned into values, so
the JSON sent each second is proportional to what moved, not to the 2,000 apps. Target transitions are
tracked on every tick, so "down since" is right to within a tick even for a page opened later. A target's
last health check alone marks it changed at most every CHECK_GRAIN (its outcome changing, at once).

Departed apps (left the config, connections still open) are shown by /metrics and /status, not here.
"""

from __future__ import annotations

import time
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

from proxy.counters import HEALTH_UP, REASONS, CellMap, check_outcome
from proxy.exposition import AppCells

if TYPE_CHECKING:
    from control.arbiter import Supervisor

FIELDS = (0, 1, 2, 3, 4, 5)  # app: total failed failovers refused bytes_in bytes_out; target: connects, REASONS
_ACTIVE, _DOWN, _HEALTH, _CHECK = range(4)  # a row is (active, down marks, health, last check, *FIELDS)
_F = 4
CHECK_GRAIN = 10_000  # ms: a target's last-check time alone makes it "changed" at most this often


@dataclass
class _Target:
    up: bool
    since: float | None  # None: as it was when the supervisor started watching
    peak: int = 0


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
    checks: list[int] = field(default_factory=list)  # the checks row as read (rows hold it coarsened)

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
        counts, down, health = _gauges(s, used)
        self.checks = s.counters.checks(used)
        checks = [(c >> 4) // CHECK_GRAIN << 4 | (c & 15) for c in self.checks]  # outcome now, time coarsely
        if full:
            reading = s.counters.read(used, fields=FIELDS)
            columns = [reading.records[i::len(FIELDS)] for i in range(len(FIELDS))]
        else:
            columns = [[0] * used for _ in FIELDS] if not self.rows else [[r[_F + i] for r in self.rows]
                                                                         for i in range(len(FIELDS))]
        rows = list(zip(counts, down, health, checks, *columns, strict=True))
        previous = self.rows if len(self.rows) == used else [()] * used
        dt = now - self.read_at if self.full and full and self.read_at else 0.0
        changed = [i for i, (a, b) in enumerate(zip(rows, previous, strict=True)) if a != b]
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
        history = getattr(s, "reload_history", ())
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


def _gauges(s: Supervisor, used: int) -> tuple[list[int], list[int], list[int]]:
    """Connections open and passive marks summed over the workers, and the health row, for cells [0, used)."""
    table = s.counters
    view, cap = table.view, table.capacity
    counts = [0] * used
    down = [0] * used
    for r in range(table.workers):
        start = table.count_base + r * cap
        counts = list(map(int.__add__, counts, view[start:start + used].tolist()))
        start = table.down_base + r * cap
        down = list(map(int.__add__, down, view[start:start + used].tolist()))
    return counts, down, view[table.health_base:table.health_base + used].tolist()
