"""The table every worker shares with the supervisor: gauges, health verdicts and monotonic counters, by cell.

`CounterTable` is an anonymous shared mmap the supervisor creates before it forks, so every worker (respawned
ones too) inherits the same pages; pages are only touched when used, so it is sized for the largest config
(CAPACITY cells: 10,000 apps with a dozen targets each) and costs what the current config uses. All int64:

    header    1 page          [0] fold sequence: odd while the supervisor folds a row (readers retry)
    count     workers x cap   gauge: connections open, per app and per target (the limits sum a column)
    health    1 x cap         verdict of the target's active check (written by the worker that checks it)
    down      workers x cap   gauge: 1 while that worker's passive marking has the target down
    records   (workers + 1) x cap x RECORD   monotonic counters; row `workers` is the retired row
              app cell:    total failed failovers refused bytes_in bytes_out connect_ns buckets[BUCKETS]
                           then TLS: handshakes, failures by TLS_REASONS, handshake_ns, tls_buckets[TLS_BUCKETS]
                           (the cell keyed TLS_KEY counts the failures before an app is known: no SNI, ...)
              target cell: connects, then failed connects by reason (REASONS)
    checks    1 x cap         last active check of the target: epoch ms << 4 | outcome (0 passed, else 1 +
                              its REASONS index), 0 when never checked (written by the worker that checks it)

Row r of count, down and records is written only by worker r, the retired row only by the supervisor: one
writer per cell needs no lock and no atomic instruction, and a reader summing a column may be a few events
behind. A worker adds to its records as things happen (a connection accepted, a connect failed); bytes are
added per connection when it closes and by the worker's idle sweep, never per read. When a worker is reaped the
supervisor zeroes its gauges and folds its records into the retired row (then zeroes them), so totals never
go back; a cell handed to a new name is zeroed in every row first.

`CellMap` names every app and every (app, target) with a cell. The supervisor owns it and sends the mapping in
each snapshot: a name keeps its cell for as long as it stays in the config, so counts survive a reload, and a
freed cell is reused only when every worker has acknowledged the version that freed it and its column reads
zero, so a new name never inherits connections of an old one.
"""

from __future__ import annotations

import bisect
import ctypes
import mmap
import os
import sys
from array import array
from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass, field
from functools import reduce
from operator import add
from typing import Any

from proxy.config import Config
from proxy.errors import ConfigError

CAPACITY = 1 << 17  # cells per row: apps + targets
HEALTH_UP = 0
HEALTH_DOWN = 1
HEADER = 512  # int64s: one page
READ_ATTEMPTS = 10_000
# Upper bounds (seconds) of the connect-latency histogram buckets; the last bucket is everything above.
CONNECT_BUCKETS = (0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0)
BUCKETS = len(CONNECT_BUCKETS) + 1
APP_SCALARS = ("total", "failed", "failovers", "refused", "bytes_in", "bytes_out", "connect_ns")
FIRST_BUCKET = len(APP_SCALARS)
REASONS = ("refused", "timeout", "dns", "unreachable", "error")  # why a connect to a target failed
# TLS handshakes (workers/tls.py): the failure reasons, and the handshake-duration histogram's upper bounds.
TLS_REASONS = ("unknown_sni", "no_certificate", "timeout", "not_tls", "protocol")
HANDSHAKE_BUCKETS = (0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 1.0)
TLS_BUCKETS = len(HANDSHAKE_BUCKETS) + 1
TLS_KEY = "\ntls"  # the cell of TLS failures not attributable to an app (no app name starts with a newline)
FIRST_TLS = FIRST_BUCKET + BUCKETS
FIRST_TLS_BUCKET = FIRST_TLS + 2 + len(TLS_REASONS)
RECORD = FIRST_TLS_BUCKET + TLS_BUCKETS  # int64s per cell in a records row
_I64 = ctypes.c_int64


class AppStats(ctypes.Structure):
    """One app's monotonic counters in one worker: its record in the worker's row (private memory when the
    worker has no table). The data path adds to the fields directly: nothing is collected or pushed."""

    _fields_ = [*((name, _I64) for name in APP_SCALARS), ("buckets", _I64 * BUCKETS), ("handshakes", _I64),
                *((f"tls_{reason}", _I64) for reason in TLS_REASONS), ("handshake_ns", _I64),
                ("tls_buckets", _I64 * TLS_BUCKETS)]
    total: int
    failed: int
    failovers: int
    refused: int  # at HardLimit, or every target at MaxConns
    bytes_in: int  # from clients
    bytes_out: int  # to clients
    connect_ns: int  # sum of connect latencies
    buckets: Any
    handshakes: int
    handshake_ns: int
    tls_buckets: Any

    def observe_handshake(self, seconds: float) -> None:
        self.handshakes += 1
        self.tls_buckets[bisect.bisect_left(HANDSHAKE_BUCKETS, seconds)] += 1
        self.handshake_ns += int(seconds * 1e9)

    def tls_failed(self, reason: str) -> None:
        name = f"tls_{reason}"
        setattr(self, name, getattr(self, name) + 1)

    def observe_connect(self, seconds: float) -> None:
        self.buckets[bisect.bisect_left(CONNECT_BUCKETS, seconds)] += 1
        self.connect_ns += int(seconds * 1e9)


class TargetCounts(ctypes.Structure):
    """One target's monotonic counters in one worker; indexable by failure reason like the dict it replaced."""

    _fields_ = [("connects", _I64), *((reason, _I64) for reason in REASONS)]
    connects: int

    def get(self, reason: str, default: int = 0) -> int:
        return int(getattr(self, _reason(reason)))

    def __getitem__(self, reason: str) -> int:
        return int(getattr(self, _reason(reason)))

    def __setitem__(self, reason: str, value: int) -> None:
        setattr(self, _reason(reason), value)


def _reason(reason: str) -> str:
    return reason if reason in REASONS else "error"


assert ctypes.sizeof(AppStats) == RECORD * 8 and ctypes.sizeof(TargetCounts) <= RECORD * 8


@dataclass(frozen=True, slots=True)
class Reading:
    """Plain values read from the table: per cell, summed over the rows that count (see CounterTable.read)."""

    counts: list[int]  # connections open, over the live workers
    down: list[int]  # workers that have the target marked down
    health: list[int]
    records: list[int]  # `width` fields per cell, over the workers and the retired row
    width: int = RECORD

    def record(self, cell: int) -> list[int]:
        return self.records[cell * self.width:(cell + 1) * self.width]

    def up(self, cell: int) -> bool:
        return self.health[cell] == HEALTH_UP and not self.down[cell]


class CounterTable:
    """The layout above over a shared buffer (an anonymous mmap unless given one)."""

    def __init__(self, workers: int, capacity: int = CAPACITY, buffer: Any = None) -> None:
        self.workers = workers
        self.capacity = capacity
        self.count_base = HEADER
        self.health_base = self.count_base + workers * capacity
        self.down_base = self.health_base + capacity
        self.record_base = self.down_base + workers * capacity
        self.check_base = self.record_base + (workers + 1) * capacity * RECORD
        self.buffer = buffer if buffer is not None else mmap.mmap(-1, self.size(workers, capacity))  # shared
        self.raw = memoryview(self.buffer)  # bytes, for the supervisor's whole-row operations
        self.view = self.raw.cast("q")

    @staticmethod
    def size(workers: int, capacity: int = CAPACITY) -> int:
        return (HEADER + (2 * workers + 2) * capacity + (workers + 1) * capacity * RECORD) * 8

    # --- gauges, health: read on the data path -------------------------------------------------------
    def total(self, index: int) -> int:
        return sum(self.view[self.count_base + index:self.health_base:self.capacity])

    def is_zero(self, index: int) -> bool:
        return not any(self.view[self.count_base + index:self.health_base:self.capacity])

    def health(self, index: int) -> int:
        return int(self.view[self.health_base + index])

    def set_health(self, index: int, verdict: int) -> None:
        self.view[self.health_base + index] = verdict

    def set_checked(self, index: int, epoch: float, failure: str | None) -> None:
        outcome = 0 if failure is None else 1 + REASONS.index(_reason(failure))
        self.view[self.check_base + index] = int(epoch * 1000) << 4 | outcome

    def checks(self, used: int) -> list[int]:
        """The checks row of cells [0, used) as written (see check_outcome)."""
        return self.view[self.check_base:self.check_base + used].tolist()

    # --- a worker's handles on its own row -----------------------------------------------------------
    def cell(self, slot: int, index: int) -> Cell:
        return Cell(self, index, slot * self.capacity + index)

    def app_stats(self, slot: int, index: int) -> AppStats:
        return AppStats.from_buffer(self.buffer, self._record(slot, index) * 8)

    def target_counts(self, slot: int, index: int) -> TargetCounts:
        return TargetCounts.from_buffer(self.buffer, self._record(slot, index) * 8)

    def _record(self, row: int, index: int) -> int:
        return self.record_base + (row * self.capacity + index) * RECORD

    # --- the supervisor's side -----------------------------------------------------------------------
    def retire(self, slot: int, used: int) -> None:
        """Worker `slot` is gone: its gauges go to zero, its records into the retired row, then to zero.
        `used` bounds the cells ever handed out (so untouched pages stay untouched)."""
        raw, n = self.raw, used * RECORD * 8
        mine, retired = self._record(slot, 0) * 8, self._record(self.workers, 0) * 8
        self.view[0] += 1  # odd: a reader that overlaps the fold reads again
        # Records are counts, never negative and far below 2**63: read as two integers in the machine's byte
        # order, each int64 lane is one 64-bit digit of them, and their sum carries nothing across lanes. One
        # C-speed addition instead of a loop over lanes.
        order = sys.byteorder
        total = int.from_bytes(raw[retired:retired + n], order) + int.from_bytes(raw[mine:mine + n], order)
        raw[retired:retired + n] = total.to_bytes(n, order)
        raw[mine:mine + n] = bytes(n)
        self.view[0] += 1
        for base in (self.count_base, self.down_base):
            start = (base + slot * self.capacity) * 8
            raw[start:start + used * 8] = bytes(used * 8)

    def reset(self, cells: Iterable[int]) -> None:
        """Cells handed to new names: no counts of a name that held them before, in any row."""
        view, zero = self.view, array("q", bytes(8 * RECORD))
        view[0] += 1
        for cell in cells:
            for row in range(self.workers + 1):
                start = self._record(row, cell)
                view[start:start + RECORD] = zero
            for row in range(self.workers):
                view[self.down_base + row * self.capacity + cell] = 0
            view[self.check_base + cell] = 0
        view[0] += 1

    def read(self, used: int, fields: tuple[int, ...] | None = None) -> Reading:
        """Cells [0, used): gauges over the workers, health, and records (every field, or only `fields`)
        over the workers and the retired row. Consistent with the supervisor's folds: a read that overlaps
        one (in another process) is taken again."""
        view, cap, w = self.view, self.capacity, self.workers
        for attempt in range(READ_ATTEMPTS):
            sequence = view[0]
            if sequence & 1 and attempt < READ_ATTEMPTS - 1:
                os.sched_yield()
                continue
            counts = [view[self.count_base + r * cap:self.count_base + r * cap + used].tolist() for r in range(w)]
            down = [view[self.down_base + r * cap:self.down_base + r * cap + used].tolist() for r in range(w)]
            health = view[self.health_base:self.health_base + used].tolist()
            if fields is None:
                rows = [view[self._record(r, 0):self._record(r, used)].tobytes() for r in range(w + 1)]
            else:
                rows = [view[self._record(r, 0) + f:self._record(r, used):RECORD].tobytes()
                        for r in range(w + 1) for f in fields]
            if view[0] == sequence:
                break  # else a fold overlapped: read again (the last attempt keeps what it read)
        records = _sum_rows([memoryview(row).cast("q").tolist() for row in rows], fields, w + 1)
        return Reading(_sum(counts, used), _sum(down, used), health, records,
                       RECORD if fields is None else len(fields))


def _sum(rows: list[list[int]], n: int) -> list[int]:
    return reduce(lambda a, b: list(map(add, a, b)), rows) if rows else [0] * n


def _sum_rows(rows: list[list[int]], fields: tuple[int, ...] | None, count: int) -> list[int]:
    if fields is None:
        return _sum(rows, 0)
    k = len(fields)  # rows are (row, field) pairs: sum each field over the rows, then interleave per cell
    per_field = [_sum(rows[i::k], 0) for i in range(k)]
    return [value for values in zip(*per_field, strict=True) for value in values]


class Cell:
    """One worker's handle on one gauge: it adds to its own row and reads every row."""

    __slots__ = ("down", "index", "mine", "table", "view")

    def __init__(self, table: CounterTable, index: int, mine: int) -> None:
        self.table = table
        self.view = table.view
        self.index = index
        self.mine = table.count_base + mine
        self.down = table.down_base + mine

    def add(self, delta: int) -> None:
        self.view[self.mine] += delta

    def total(self) -> int:
        return self.table.total(self.index)

    def healthy(self) -> bool:
        return self.view[self.table.health_base + self.index] == HEALTH_UP

    def set_down(self, down: bool) -> None:
        self.view[self.down] = 1 if down else 0


def check_outcome(value: int) -> tuple[float, str | None] | None:
    """Pure: a checks-row value as (epoch seconds, None when it passed or the reason it failed)."""
    if not value:
        return None
    code = value & 15
    return (value >> 4) / 1000, None if code == 0 else REASONS[code - 1]


def cell_keys(config: Config) -> list[str]:
    """One key per app and per (app, target); names hold no control characters, so a newline separates."""
    keys = [TLS_KEY] if config.tls is not None else []
    for app in config.apps:
        keys.append(app.name)
        keys.extend(f"{app.name}\n{target}" for target in app.targets)
    return keys


def target_key(app: str, target: object) -> str:
    return f"{app}\n{target}"


@dataclass(frozen=True, slots=True)
class CellMap:
    capacity: int = CAPACITY
    cells: Mapping[str, int] = field(default_factory=dict)
    freed: tuple[tuple[int, int], ...] = ()  # (version that freed it, cell)
    fresh: int = 0  # cells below this were handed out at least once
    departed: Mapping[int, str] = field(default_factory=dict)  # freed cell -> the key that held it

    def assign(self, config: Config, version: int, settled: int, is_zero: Callable[[int], bool]) -> CellMap:
        """The map for `config` served as `version`; `settled` is the version every worker has acknowledged.

        Raises ConfigError when the table is full (the caller keeps serving the old config).
        """
        keys = cell_keys(config)
        wanted = set(keys)
        cells = {k: c for k, c in self.cells.items() if k in wanted}
        gone = {c: k for k, c in self.cells.items() if k not in wanted}
        freed = list(self.freed) + [(version, c) for c in gone]
        reusable = sorted((c for v, c in freed if v <= settled and is_zero(c)), reverse=True)
        fresh = self.fresh
        for key in keys:
            if key in cells:
                continue
            if reusable:
                cells[key] = reusable.pop()
            elif fresh < self.capacity:
                cells[key] = fresh
                fresh += 1
            else:
                raise ConfigError("Apps", f"more than {self.capacity:,} apps and targets in total")
        used = set(cells.values())
        departed = {c: k for c, k in {**self.departed, **gone}.items() if c not in used}
        return CellMap(self.capacity, cells, tuple((v, c) for v, c in freed if c not in used), fresh, departed)

    def new_cells(self, previous: CellMap) -> list[int]:
        """Cells this map hands to names that did not hold them before (their counts and health need resetting)."""
        return [c for k, c in self.cells.items() if previous.cells.get(k) != c]
