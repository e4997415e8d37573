"""The live progress bar: rich, on stderr, only for a human (a TTY and no --quiet)."""

from __future__ import annotations

import sys
from types import TracebackType

from rich.console import Console
from rich.progress import (
    BarColumn,
    MofNCompleteColumn,
    SpinnerColumn,
    TaskID,
    TextColumn,
    TimeElapsedColumn,
)
from rich.progress import Progress as RichProgress


class Progress:
    """Counts finished connections; a no-op when disabled so scenarios never need to ask."""

    def __init__(self, enabled: bool) -> None:
        self._rich: RichProgress | None = None
        self._task: TaskID | None = None
        if enabled and sys.stderr.isatty():
            self._rich = RichProgress(
                SpinnerColumn(),
                TextColumn("{task.description}"),
                BarColumn(),
                MofNCompleteColumn(),
                TextColumn("{task.fields[note]}"),
                TimeElapsedColumn(),
                console=Console(stderr=True),
                transient=True,
            )

    def __enter__(self) -> Progress:
        if self._rich is not None:
            self._rich.start()
        return self

    def __exit__(
        self, kind: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None
    ) -> None:
        if self._rich is not None:
            self._rich.stop()

    def begin(self, description: str, total: int | None) -> None:
        if self._rich is None:
            return
        if self._task is not None:
            self._rich.remove_task(self._task)
        self._task = self._rich.add_task(description, total=total, note="")

    def advance(self, n: int = 1) -> None:
        if self._rich is not None and self._task is not None:
            self._rich.advance(self._task, n)

    def note(self, text: str) -> None:
        if self._rich is not None and self._task is not None:
            self._rich.update(self._task, note=text)
