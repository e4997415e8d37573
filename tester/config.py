"""The tester's own, tolerant reader of skiff's config.json (the proxy's validator lives elsewhere).

It keeps what the tester needs: each app's name, ports and targets. It refuses only what makes a test
impossible (no apps, a port that is not a number) and says where, so a typo is not mistaken for a proxy bug.
"""

from __future__ import annotations

import ipaddress
import os
import tempfile
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import orjson


class ConfigError(ValueError):
    """The config file cannot be used for a test run."""


@dataclass(frozen=True)
class App:
    name: str
    ports: tuple[int, ...]
    targets: tuple[str, ...]


def split_host_port(text: str) -> tuple[str, int]:
    """`host:port`, `1.2.3.4:5` or `[v6]:port` to (host, port); the host keeps no brackets."""
    host, sep, port = text.strip().rpartition(":")
    if not sep or not host or not port.isdigit() or not 0 < int(port) < 65536:
        raise ConfigError(f"{text!r} is not host:port")
    if host.startswith("["):
        if not host.endswith("]"):
            raise ConfigError(f"{text!r} has an unclosed [")
        host = host[1:-1]
    elif ":" in host:
        raise ConfigError(f"{text!r}: an IPv6 address needs brackets, [addr]:port")
    return host, int(port)


def is_local(host: str) -> bool:
    """True for hosts the tester may serve itself: loopback only (127/8, ::1, localhost)."""
    if host.lower() in ("localhost", "localhost.localdomain"):
        return True
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        return False


def parse_config(data: bytes) -> list[App]:
    """Parse the bytes of a config file; unknown keys are ignored, key case is forgiven."""
    try:
        document: Any = orjson.loads(data)
    except orjson.JSONDecodeError as exc:
        raise ConfigError(f"not JSON: {exc}") from exc
    apps_raw = _get(document, "Apps") if isinstance(document, dict) else None
    if not isinstance(apps_raw, list) or not apps_raw:
        raise ConfigError("Apps: expected a non-empty list")
    apps = []
    for i, raw in enumerate(apps_raw):
        if not isinstance(raw, dict):
            raise ConfigError(f"Apps[{i}]: expected an object")
        name = _get(raw, "Name")
        ports = _get(raw, "Ports") or []
        targets = _get(raw, "Targets") or []
        if not isinstance(ports, list) or not all(isinstance(p, int) and 0 < p < 65536 for p in ports):
            raise ConfigError(f"Apps[{i}].Ports: expected a list of TCP port numbers")
        if not isinstance(targets, list) or not all(isinstance(t, str) for t in targets):
            raise ConfigError(f"Apps[{i}].Targets: expected a list of host:port strings")
        for j, target in enumerate(targets):
            try:
                split_host_port(target)
            except ConfigError as exc:
                raise ConfigError(f"Apps[{i}].Targets[{j}]: {exc}") from None
        apps.append(App(str(name) if name else f"app{i}", tuple(ports), tuple(targets)))
    return apps


def read_config(path: Path) -> list[App]:
    try:
        data = path.read_bytes()
    except OSError as exc:
        raise ConfigError(f"{path}: {exc.strerror}") from exc
    try:
        return parse_config(data)
    except ConfigError as exc:
        raise ConfigError(f"{path}: {exc}") from None


def render_config(apps: list[App]) -> bytes:
    document = {"Apps": [{"Name": a.name, "Ports": list(a.ports), "Targets": list(a.targets)} for a in apps]}
    return orjson.dumps(document, option=orjson.OPT_INDENT_2) + b"\n"


def write_atomically(path: Path, data: bytes) -> None:
    """Write-then-rename in the same directory, so a watcher never sees a half-written file."""
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", dir=path.parent)
    try:
        with os.fdopen(fd, "wb") as f:
            f.write(data)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise


def _get(obj: dict[str, Any], key: str) -> Any:
    if key in obj:
        return obj[key]
    lowered = {k.lower(): v for k, v in obj.items() if isinstance(k, str)}
    return lowered.get(key.lower())
