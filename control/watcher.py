"""Watches the config file's directory with inotify, so every way of changing a file is seen.

In-place writes (close after write), write-then-rename (editors, config managers) and symlink swaps (the
Kubernetes ConfigMap `..data` pattern) all show up as events in the directory, not always on the file itself.
The supervisor coalesces bursts of events into one reload after a short quiet period.
"""

from __future__ import annotations

from pathlib import Path

from inotify_simple import INotify, flags

WATCH_FLAGS = (
    flags.CLOSE_WRITE | flags.MOVED_TO | flags.MOVED_FROM | flags.CREATE | flags.DELETE | flags.ATTRIB
    | flags.DELETE_SELF | flags.MOVE_SELF
)


class ConfigWatcher:
    def __init__(self, path: Path) -> None:
        self.directory = path.absolute().parent
        self.inotify = INotify()
        self.watch = self.inotify.add_watch(self.directory, WATCH_FLAGS)

    def fileno(self) -> int:
        return self.inotify.fileno()

    def read(self) -> int:
        """Consume pending events; returns how many there were (any event may be a change)."""
        return len(self.inotify.read(timeout=0))

    def close(self) -> None:
        self.inotify.close()
