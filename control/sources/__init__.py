"""Config sources: where the supervisor's config comes from and when a reload is due.

The supervisor holds one `ConfigSource`. The file source reads `-c FILE` (its inotify watcher stays in the
supervisor); the etcd source (`control/sources/etcd.py`) follows a prefix through a helper process. Everything
after `load()` is shared: validate → Snapshot → plan → workers → BPF map diff.
"""

from __future__ import annotations

from pathlib import Path
from typing import TYPE_CHECKING, Any, Protocol

from proxy.config import Config, load_config

if TYPE_CHECKING:
    from control.arbiter import Supervisor


class ConfigSource(Protocol):
    watches_file: bool  # the supervisor's inotify watcher applies (file source only)

    def load(self) -> Config:
        """The config to serve now; a ConfigError keeps the current one."""

    def revision(self) -> int:
        """The source's own version of what `load()` returned (etcd revision; 0 for a file)."""

    def start(self, supervisor: Supervisor) -> None:
        """Before the first worker is forked."""

    def refresh(self) -> None:
        """SIGHUP: read everything again."""

    def applied(self, version: int) -> None:
        """Every worker serves snapshot `version`."""

    def deadline(self) -> float | None: ...

    def run_timers(self, now: float) -> None: ...

    def status(self) -> dict[str, Any]: ...

    def metrics_text(self) -> bytes:
        """The source's own Prometheus families, appended to /metrics (empty for a file)."""

    def close_in_child(self) -> None:
        """In a freshly forked worker: drop what belongs to the supervisor."""

    def close(self) -> None: ...


class FileSource:
    """`-c FILE`: read on every reload (inotify and SIGHUP trigger it in the supervisor)."""

    watches_file = True

    def __init__(self, path: Path) -> None:
        self.path = path

    def load(self) -> Config:
        return load_config(self.path)

    def revision(self) -> int:
        return 0

    def start(self, supervisor: Supervisor) -> None:
        pass

    def refresh(self) -> None:
        pass

    def applied(self, version: int) -> None:
        pass

    def deadline(self) -> float | None:
        return None

    def run_timers(self, now: float) -> None:
        pass

    def status(self) -> dict[str, Any]:
        return {"kind": "file", "path": str(self.path)}

    def metrics_text(self) -> bytes:
        return b""

    def close_in_child(self) -> None:
        pass

    def close(self) -> None:
        pass
