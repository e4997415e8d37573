"""The tester's view of skiff's config.json, read with skiff's own validation (`proxy.config`): one source of
truth, so the tester refuses exactly what the proxy refuses, with the same one-line message.

It keeps what the tester needs (each app's name, ports and targets) and, for the reload scenario, edits the
operator's document in place: only Ports and Targets of the apps it changes, every other field as it was.
"""

from __future__ import annotations

import copy
import ipaddress
import os
import stat
import tempfile
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import orjson

from proxy import config as proxy_config
from proxy.errors import ConfigError as ProxyConfigError


class ConfigError(ValueError):
    """The config file cannot be used for a test run."""


@dataclass(frozen=True)
class App:
    name: str
    ports: tuple[int, ...]
    targets: tuple[str, ...]


def split_host_port(text: str) -> tuple[str, int]:
    """`host:port`, `1.2.3.4:5` or `[v6]:port` to (host, port); the host keeps no brackets."""
    try:
        target = proxy_config.parse_target("", text)
    except ProxyConfigError as exc:
        raise ConfigError(exc.problem) from None
    return target.host, target.port


def is_local(host: str) -> bool:
    """True for hosts the tester may serve itself: loopback only (127/8, ::1, localhost)."""
    if host.lower() in ("localhost", "localhost.localdomain"):
        return True
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        return False


def parse_config(data: bytes) -> list[App]:
    """Validate the bytes as skiff does; ConfigError carries skiff's own one-line message."""
    try:
        config = proxy_config.parse_config(data)
    except ProxyConfigError as exc:
        raise ConfigError(str(exc)) from None
    if not config.apps:
        raise ConfigError("Apps: the config lists no app to test")
    return [App(a.name, a.ports, tuple(str(t) for t in a.targets)) for a in config.apps]


def read_config(path: Path) -> list[App]:
    try:
        data = path.read_bytes()
    except OSError as exc:
        raise ConfigError(f"{path}: {exc.strerror}") from exc
    try:
        return parse_config(data)
    except ConfigError as exc:
        raise ConfigError(f"{path}: {exc}") from None


def edit_document(data: bytes, apps: list[App]) -> bytes:
    """The operator's document with each app's Ports and Targets replaced by `apps`' (matched by Name); every
    other field, and every app the edit leaves alone, exactly as it was."""
    document: Any = copy.deepcopy(orjson.loads(data))
    wanted = {a.name: a for a in apps}
    for raw in document["Apps"]:
        app = wanted.get(raw.get("Name"))
        if app is not None:
            raw["Ports"] = list(app.ports)
            raw["Targets"] = list(app.targets)
    return orjson.dumps(document, option=orjson.OPT_INDENT_2) + b"\n"


def write_atomically(path: Path, data: bytes, like: os.stat_result | None = None) -> None:
    """Write-then-rename in the same directory, so a watcher never sees a half-written file. The new file
    takes the mode (and, when we may, the owner) of `like`, by default the file it replaces."""
    if like is None:
        try:
            like = path.stat()
        except FileNotFoundError:
            like = None
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", dir=path.parent)
    try:
        with os.fdopen(fd, "wb") as f:
            f.write(data)
            f.flush()
            if like is not None:
                os.fchmod(f.fileno(), stat.S_IMODE(like.st_mode))
                if os.geteuid() == 0:
                    os.fchown(f.fileno(), like.st_uid, like.st_gid)
            os.fsync(f.fileno())
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise
