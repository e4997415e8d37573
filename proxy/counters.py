"""Connection counts and health verdicts shared by every worker, and the stable cell each name gets.

`CounterTable` is an anonymous shared mmap the supervisor creates before it forks, so every worker (respawned
ones too) inherits the same pages. Layout, all int64: `workers` rows of `capacity` cells (row r is written only
by worker r: a connection count per app and per target), then one row of health verdicts (cell i is written
only by the worker that checks target i). One writer per cell needs no lock and no atomic instruction; a reader
sums a column and may be a few connections behind, which the limits allow for (see workers/policy.py).

`CellMap` names every app and every (app, target) with a cell. The supervisor owns it and sends the mapping in
each snapshot: a name keeps its cell for as long as it stays in the config, so counts survive a reload, and a
freed cell is reused only when every worker has acknowledged the version that freed it and its column reads
zero, so a new name never inherits connections of an old one.
"""

from __future__ import annotations

import mmap
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from typing import Any

from proxy.config import Config
from proxy.errors import ConfigError

CAPACITY = 1 << 17  # cells per row: apps + targets; pages are only touched when used
HEALTH_UP = 0
HEALTH_DOWN = 1


class CounterTable:
    """`workers` count rows and one health row over a shared buffer (an anonymous mmap unless given one)."""

    def __init__(self, workers: int, capacity: int = CAPACITY, buffer: Any = None) -> None:
        self.workers = workers
        self.capacity = capacity
        size = (workers + 1) * capacity * 8
        self.buffer = buffer if buffer is not None else mmap.mmap(-1, size)  # MAP_SHARED | MAP_ANONYMOUS
        self.view = memoryview(self.buffer).cast("q")
        self.health_base = workers * capacity

    def total(self, index: int) -> int:
        return sum(self.view[index:self.health_base:self.capacity])

    def is_zero(self, index: int) -> bool:
        return not any(self.view[index:self.health_base:self.capacity])

    def health(self, index: int) -> int:
        return int(self.view[self.health_base + index])

    def set_health(self, index: int, verdict: int) -> None:
        self.view[self.health_base + index] = verdict

    def zero_row(self, slot: int) -> None:
        """A worker's connections died with it: the supervisor clears its row before respawning the slot."""
        start = slot * self.capacity * 8
        self.buffer[start:start + self.capacity * 8] = bytes(self.capacity * 8)

    def cell(self, slot: int, index: int) -> Cell:
        return Cell(self, index, slot * self.capacity + index)


class Cell:
    """One worker's handle on one counter: it adds to its own row and reads every row."""

    __slots__ = ("index", "mine", "table", "view")

    def __init__(self, table: CounterTable, index: int, mine: int) -> None:
        self.table = table
        self.view = table.view
        self.index = index
        self.mine = mine

    def add(self, delta: int) -> None:
        self.view[self.mine] += delta

    def total(self) -> int:
        return self.table.total(self.index)

    def healthy(self) -> bool:
        return self.view[self.table.health_base + self.index] == HEALTH_UP


def cell_keys(config: Config) -> list[str]:
    """One key per app and per (app, target); names hold no control characters, so a newline separates."""
    keys = []
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

    def assign(self, config: Config, version: int, settled: int, is_zero: Callable[[int], bool]) -> CellMap:
        """The map for `config` served as `version`; `settled` is the version every worker has acknowledged.

        Raises ConfigError when the table is full (the caller keeps serving the old config).
        """
        keys = cell_keys(config)
        wanted = set(keys)
        cells = {k: c for k, c in self.cells.items() if k in wanted}
        freed = list(self.freed) + [(version, c) for k, c in self.cells.items() if k not in wanted]
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
        return CellMap(self.capacity, cells, tuple((v, c) for v, c in freed if c not in used), fresh)

    def new_cells(self, previous: CellMap) -> list[int]:
        """Cells this map hands to names that did not hold them before (their health row needs resetting)."""
        return [c for k, c in self.cells.items() if previous.cells.get(k) != c]
