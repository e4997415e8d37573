"""Watches the config file and its symlink chain with inotify; only events that name them count as a change.

Every way of changing the file shows up as an event *in a directory* that names it: an in-place write
(MODIFY/CLOSE_WRITE on the file), write-then-rename (MOVED_TO the file's name), a symlink swap (the link's name
replaced) and the Kubernetes ConfigMap pattern (`config.json -> ..data/config.json`, `..data -> ..2026_...`,
swapped by renaming a new `..data`). So the watcher resolves the path link by link, and watches the directory of
each link it passes and of the file it ends at, each for that one name. Events about other names in the same
directories (a log, a pid file, skiff's own log) are consumed and ignored: they must never cause a reload, or a
broken config beside a busy file would log one failure per write (and skiff's own error lines would feed the next
reload). The chain is resolved again after every relevant event, so a swapped link is followed. The supervisor
coalesces bursts of events into one reload after a short quiet period.
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
MAX_LINKS = 40  # as the kernel's own limit on symlinks followed in one lookup (ELOOP)


def symlink_chain(path: Path) -> dict[Path, set[str]]:
    """Directory -> the names in it that resolving `path` depends on: each symlink passed, and the final file.

    Resolves one component at a time, like the kernel, so a link anywhere in the path (the file itself, or a
    directory such as a ConfigMap's `..data`) is recorded where it lives. A missing component ends the walk:
    its name is recorded, so its creation is seen.
    """
    chain: dict[Path, set[str]] = {}
    pending = list(Path(os.path.abspath(path)).parts[1:])
    resolved = Path("/")
    links = 0
    while links <= MAX_LINKS:  # bounded: each turn consumes a component, or follows one of MAX_LINKS links
        if not pending:
            chain.setdefault(resolved.parent, set()).add(resolved.name)
            return chain
        name = pending.pop(0)
        if name in ("", "."):
            continue
        if name == "..":
            resolved = resolved.parent
            continue
        candidate = resolved / name
        try:
            target = os.readlink(candidate)
        except FileNotFoundError:
            chain.setdefault(resolved, set()).add(name)
            return chain
        except OSError:  # not a link (EINVAL), or unreadable: an ordinary component
            resolved = candidate
            continue
        chain.setdefault(resolved, set()).add(name)
        links += 1
        if os.path.isabs(target):
            resolved = Path("/")
        pending = [*Path(target).parts[1 if os.path.isabs(target) else 0:], *pending]
    return chain  # a link loop: what was seen so far is what can change it


class ConfigWatcher:
    def __init__(self, path: Path) -> None:
        self.path = path.absolute()
        self.extra: tuple[Path, ...] = ()  # files the config names (TLS certificates): a change to one reloads too
        self.inotify = INotify()
        self.watches: dict[Path, int] = {}  # directory -> watch descriptor
        self.names: dict[int, set[str]] = {}  # watch descriptor -> the names in it that matter
        self.follow()

    def follow(self) -> None:
        """Watch each directory of the config's symlink chain as it is now; drop the ones no longer in it.

        add_watch is called again for every directory, since a path may now name another directory; two paths
        of one directory share a watch descriptor, so the names are gathered per descriptor.
        """
        wanted = symlink_chain(self.path)
        wanted.setdefault(self.path.parent, set()).add(self.path.name)
        for path in self.extra:
            for directory, extra_names in symlink_chain(path).items():
                wanted.setdefault(directory, set()).update(extra_names)
            wanted.setdefault(path.parent, set()).add(path.name)
        watches: dict[Path, int] = {}
        names: dict[int, set[str]] = {}
        for directory, wanted_names in wanted.items():
            try:
                wd = self.inotify.add_watch(directory, WATCH_FLAGS)
            except OSError:
                if directory == self.path.parent:
                    raise
                continue
            watches[directory] = wd
            names.setdefault(wd, set()).update(wanted_names)
        for wd in set(self.watches.values()) - set(names):
            try:
                self.inotify.rm_watch(wd)
            except OSError:
                pass  # Already gone with its directory.
        self.watches, self.names = watches, names

    def watch_also(self, paths: list[Path]) -> None:
        """Watch these files (and their symlink chains) as well, instead of the ones given before."""
        extra = tuple(sorted({path.absolute() for path in paths}))
        if extra != self.extra:
            self.extra = extra
            self.follow()

    def fileno(self) -> int:
        fd: int = self.inotify.fileno()
        return fd

    def relevant(self, wd: int, mask: int, name: str) -> bool:
        if mask & flags.Q_OVERFLOW:
            return True  # the kernel dropped events: one of them may have been ours
        names = self.names.get(wd)
        if names is None:
            return False  # a watch we already dropped (its IN_IGNORED, or events queued before)
        if name:
            return name in names
        # No name: the watched directory itself was deleted or moved, so the chain through it changed.
        return bool(mask & (flags.DELETE_SELF | flags.MOVE_SELF))

    def read(self) -> int:
        """Consume pending events; returns how many name the config file or a link on its way."""
        count = sum(1 for event in self.inotify.read(timeout=0) if self.relevant(event.wd, event.mask, event.name))
        if count:
            self.follow()
        return count

    def close(self) -> None:
        self.inotify.close()
