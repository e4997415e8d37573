"""Watches the config file's directory with inotify, so every way of changing a file is seen.

In-place writes (close after write), write-then-rename (editors, config managers) and symlink swaps (the
Kubernetes ConfigMap `..data` pattern) all show up as events in the directory, not always on the file itself.
When the config path is a symlink, the directory of the file it resolves to is watched as well (and followed
when the link moves), so an in-place write to the real file is seen too. The supervisor coalesces bursts of
events into one reload after a short quiet period.
"""

from __future__ import annotations

import os
from pathlib import Path

from inotify_simple import INotify, flags

# MODIFY too: an in-place write in progress keeps pushing the reload back (the quiet period), so a reload
# rarely reads a half-written file; when it does, that reload fails and the CLOSE_WRITE brings the next one.
WATCH_FLAGS = (
    flags.MODIFY | flags.CLOSE_WRITE | flags.MOVED_TO | flags.MOVED_FROM | flags.CREATE | flags.DELETE | flags.ATTRIB
    | flags.DELETE_SELF | flags.MOVE_SELF
)


class ConfigWatcher:
    def __init__(self, path: Path) -> None:
        self.path = path.absolute()
        self.inotify = INotify()
        self.watches: dict[Path, int] = {}
        self.follow()

    def directories(self) -> set[Path]:
        wanted = {self.path.parent}
        try:
            wanted.add(Path(os.path.realpath(self.path)).parent)
        except OSError:
            pass
        return wanted

    def follow(self) -> None:
        """Watch the config's own directory and, for a symlink, the directory of what it points at now."""
        wanted = self.directories()
        for directory in set(self.watches) - wanted:
            try:
                self.inotify.rm_watch(self.watches.pop(directory))
            except OSError:
                pass  # Already gone with its directory.
        for directory in wanted - set(self.watches):
            try:
                self.watches[directory] = self.inotify.add_watch(directory, WATCH_FLAGS)
            except OSError:
                if directory == self.path.parent:
                    raise

    def fileno(self) -> int:
        fd: int = self.inotify.fileno()
        return fd

    def read(self) -> int:
        """Consume pending events; returns how many there were (any event may be a change)."""
        count: int = len(self.inotify.read(timeout=0))
        if count:
            self.follow()
        return count

    def close(self) -> None:
        self.inotify.close()
