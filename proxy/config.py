"""Config documents: parse and validate bytes into a frozen `Config`, naming every mistake by its path.

The seed's form loads unchanged: `{"Apps": [{"Name": ..., "Ports": [...], "Targets": ["host:port", ...]}]}`.
Optional per-app fields are listed in `OPTIONAL_APP_FIELDS` and documented in README.md.
"""

from __future__ import annotations

import ipaddress
import math
import re
from collections.abc import Callable
from dataclasses import dataclass, field
from functools import partial
from pathlib import Path
from typing import Any

import orjson

from proxy.errors import ConfigError, ConfigUnreadable
from proxy.tlsconfig import (
    DEFAULT_HANDSHAKE_TIMEOUT,
    DEFAULT_TLS_MODE,
    TlsSettings,
    check_app,
    check_tls,
    parse_file,
    parse_hostnames,
    parse_tls,
    parse_tls_mode,
)

DEFAULT_CONNECT_TIMEOUT = 2.0
DEFAULT_IDLE_TIMEOUT = 3600.0

REQUIRED_APP_FIELDS = ("Name", "Ports", "Targets")  # Ports may be left out by an app with Hostnames
PROXY_PROTOCOLS = ("v1", "v2")
MAX_CONNECTIONS = 10_000_000  # the highest limit a config may set; far above what one host can hold

_HOSTNAME = re.compile(r"^(?=.{1,253}$)[A-Za-z0-9_]([A-Za-z0-9_-]{0,62})(\.[A-Za-z0-9_]([A-Za-z0-9_-]{0,62}))*\.?$")
_CONTROL = re.compile(r"[\x00-\x1f\x7f]")


@dataclass(frozen=True, slots=True)
class Target:
    """A backend address as the operator wrote it; hostnames are resolved later, by the worker."""

    host: str
    port: int

    def __str__(self) -> str:
        return f"[{self.host}]:{self.port}" if ":" in self.host else f"{self.host}:{self.port}"


@dataclass(frozen=True, slots=True)
class HealthCheck:
    """Active TCP connect checks, like Fly's `tcp_checks`: `fall` failures in a row take a target out of
    rotation, `rise` successes in a row put it back."""

    interval: float = 1.0
    timeout: float = 0.5
    rise: int = 2
    fall: int = 3

    def to_document(self) -> dict[str, Any]:
        return {"Interval": self.interval, "Timeout": self.timeout, "Rise": self.rise, "Fall": self.fall}


@dataclass(frozen=True, slots=True)
class App:
    name: str
    ports: tuple[int, ...]
    targets: tuple[Target, ...]
    connect_timeout: float = DEFAULT_CONNECT_TIMEOUT
    idle_timeout: float = DEFAULT_IDLE_TIMEOUT
    half_close_timeout: float | None = None  # None: a half-closed connection lingers until IdleTimeout
    soft_limit: int | None = None  # connections per target (all workers) before it is avoided
    hard_limit: int | None = None  # connections per app (all workers) before new clients are refused
    max_conns: int | None = None  # connections per target (all workers) it never exceeds
    health_check: HealthCheck | None = None
    proxy_protocol: str | None = None  # "v1" or "v2"
    retry_on_reset: bool = False  # replay the client's bytes to another target after a reset before any answer
    # TLS (proxy/tlsconfig.py): served on Tls.Ports, routed by SNI; Certificate and Key are file paths.
    hostnames: tuple[str, ...] = ()
    tls_mode: str | None = None  # None: "terminate" (DEFAULT_TLS_MODE) for an app with Hostnames
    certificate: str | None = None
    key: str | None = None
    tls_handshake_timeout: float | None = None  # None: DEFAULT_HANDSHAKE_TIMEOUT

    @property
    def terminates(self) -> bool:
        return bool(self.hostnames) and (self.tls_mode or DEFAULT_TLS_MODE) == "terminate"

    @property
    def handshake_timeout(self) -> float:
        return self.tls_handshake_timeout or DEFAULT_HANDSHAKE_TIMEOUT

    def to_document(self) -> dict[str, Any]:
        document: dict[str, Any] = {"Name": self.name}
        if self.ports or not self.hostnames:
            document["Ports"] = list(self.ports)
        document["Targets"] = [str(t) for t in self.targets]
        if self.hostnames:
            document["Hostnames"] = list(self.hostnames)
        if self.connect_timeout != DEFAULT_CONNECT_TIMEOUT:
            document["ConnectTimeout"] = self.connect_timeout
        if self.idle_timeout != DEFAULT_IDLE_TIMEOUT:
            document["IdleTimeout"] = self.idle_timeout
        for name, value in (("HalfCloseTimeout", self.half_close_timeout), ("SoftLimit", self.soft_limit),
                            ("HardLimit", self.hard_limit), ("MaxConns", self.max_conns),
                            ("ProxyProtocol", self.proxy_protocol), ("TlsMode", self.tls_mode),
                            ("Certificate", self.certificate), ("Key", self.key),
                            ("TlsHandshakeTimeout", self.tls_handshake_timeout)):
            if value is not None:
                document[name] = value
        if self.health_check is not None:
            document["HealthCheck"] = self.health_check.to_document()
        if self.retry_on_reset:
            document["RetryOnReset"] = True
        return document


@dataclass(frozen=True, slots=True)
class Config:
    """A validated config: apps in document order; every port belongs to exactly one app, or to Tls.Ports
    (shared by the apps with Hostnames)."""

    apps: tuple[App, ...]
    tls: TlsSettings | None = None
    app_by_port: dict[int, App] = field(init=False, repr=False, compare=False)

    def __post_init__(self) -> None:
        object.__setattr__(self, "app_by_port", {p: a for a in self.apps for p in a.ports})

    @property
    def ports(self) -> frozenset[int]:
        """Every port listened on: the apps' own and the TLS ports."""
        return frozenset(self.app_by_port).union(self.tls.ports if self.tls is not None else ())

    @property
    def tls_ports(self) -> frozenset[int]:
        return frozenset(self.tls.ports) if self.tls is not None else frozenset()

    def to_document(self) -> dict[str, Any]:
        document: dict[str, Any] = {"Apps": [app.to_document() for app in self.apps]}
        if self.tls is not None:
            document["Tls"] = self.tls.to_document()
        return document

    def summary(self) -> str:
        targets = sum(len(a.targets) for a in self.apps)
        return f"{_count(len(self.apps), 'app')}, {_count(len(self.ports), 'port')}, {_count(targets, 'target')}"


def _count(n: int, noun: str) -> str:
    return f"{n} {noun}" if n == 1 else f"{n:,} {noun}s"


def load_config(path: Path) -> Config:
    """Read and validate a config file; every failure is a one-line ConfigError."""
    try:
        data = path.read_bytes()
    except OSError as exc:
        raise ConfigUnreadable("", f"cannot read {path}: {exc.strerror or exc}") from None
    config = parse_config(data)
    from proxy.certfiles import read_pairs  # certfiles imports this module

    read_pairs(config)  # the certificate files are part of the config: a bad one is reported like a bad field
    return config


def parse_config(data: bytes) -> Config:
    try:
        document = orjson.loads(data)
    except orjson.JSONDecodeError as exc:
        raise ConfigError("", f"not valid JSON: {exc}") from None
    return parse_document(document)


def parse_document(document: Any) -> Config:
    if not isinstance(document, dict):
        raise ConfigError("", f"the document must be an object with an Apps list, not {_kind(document)}")
    unknown = sorted(set(document) - {"Apps", "Tls"})
    if unknown:
        raise ConfigError(unknown[0], 'unknown field (the document has only "Apps" and "Tls")')
    if "Apps" not in document:
        raise ConfigError("Apps", "missing")
    apps_doc = document["Apps"]
    if not isinstance(apps_doc, list):
        raise ConfigError("Apps", f"must be a list of apps, not {_kind(apps_doc)}")
    apps: list[App] = []
    names: dict[str, int] = {}
    owner: dict[int, str] = {}
    for i, app_doc in enumerate(apps_doc):
        app = _parse_app(f"Apps[{i}]", app_doc)
        if app.name in names:
            raise ConfigError(f"Apps[{i}].Name", f'"{app.name}" is already the name of Apps[{names[app.name]}]')
        names[app.name] = i
        for j, port in enumerate(app.ports):
            if port in owner:
                where = "earlier in this app" if owner[port] == f"Apps[{i}]" else f"by {owner[port]}"
                raise ConfigError(f"Apps[{i}].Ports[{j}]", f"port {port} is already used {where}")
            owner[port] = f"Apps[{i}]"
        apps.append(app)
    tls = parse_tls("Tls", document["Tls"]) if "Tls" in document else None
    check_tls(tls, tuple(apps), owner)
    return Config(tuple(apps), tls)


def _parse_app(path: str, doc: Any) -> App:
    if not isinstance(doc, dict):
        raise ConfigError(path, f"must be an object, not {_kind(doc)}")
    for name in REQUIRED_APP_FIELDS:
        if name not in doc and not (name == "Ports" and "Hostnames" in doc):
            raise ConfigError(f"{path}.{name}", "missing")
    known = set(REQUIRED_APP_FIELDS) | set(OPTIONAL_APP_FIELDS)
    for name in doc:
        if name not in known:
            raise ConfigError(f"{path}.{name}", f"unknown field (known: {', '.join(sorted(known))})")
    options = {
        _snake(name): parse(f"{path}.{name}", doc[name])
        for name, parse in OPTIONAL_APP_FIELDS.items()
        if name in doc
    }
    app = App(
        name=_parse_name(f"{path}.Name", doc["Name"]),
        ports=_parse_ports(f"{path}.Ports", doc["Ports"], allow_none="Hostnames" in doc) if "Ports" in doc else (),
        targets=_parse_targets(f"{path}.Targets", doc["Targets"]),
        **options,
    )
    if app.soft_limit is not None and app.max_conns is not None and app.soft_limit > app.max_conns:
        raise ConfigError(f"{path}.SoftLimit", f"{app.soft_limit} is above MaxConns ({app.max_conns})")
    check_app(path, app)
    return app


def _snake(name: str) -> str:
    return re.sub(r"(?<!^)([A-Z])", r"_\1", name).lower()


def _parse_name(path: str, value: Any) -> str:
    if not isinstance(value, str):
        raise ConfigError(path, f"must be a string, not {_kind(value)}")
    if not value.strip():
        raise ConfigError(path, "must not be empty")
    if _CONTROL.search(value) or len(value) > 200:
        raise ConfigError(path, f"{_quote(value)} must be at most 200 printable characters")
    return value


def _parse_ports(path: str, value: Any, allow_none: bool = False) -> tuple[int, ...]:
    if not isinstance(value, list):
        raise ConfigError(path, f"must be a list of ports, not {_kind(value)}")
    if not value and not allow_none:
        raise ConfigError(path, "must list at least one port")
    ports: list[int] = []
    for j, port in enumerate(value):
        ports.append(_parse_port(f"{path}[{j}]", port))
    return tuple(ports)


def _parse_port(path: str, value: Any) -> int:
    # bool is an int subclass in Python, and 5001.0 is not a port either.
    if isinstance(value, bool) or not isinstance(value, int):
        raise ConfigError(path, f"{_show(value)} is not a port (an integer from 1 to 65535)")
    if not 1 <= value <= 65535:
        raise ConfigError(path, f"{value} is outside 1-65535")
    return value


def _parse_targets(path: str, value: Any) -> tuple[Target, ...]:
    if not isinstance(value, list):
        raise ConfigError(path, f"must be a list of host:port targets, not {_kind(value)}")
    if not value:
        raise ConfigError(path, "must list at least one target")
    targets: list[Target] = []
    for j, item in enumerate(value):
        target = parse_target(f"{path}[{j}]", item)
        if target in targets:
            raise ConfigError(f"{path}[{j}]", f'"{target}" is listed twice')
        targets.append(target)
    return tuple(targets)


def parse_target(path: str, value: Any) -> Target:
    """Parse `host:port`, `1.2.3.4:port` or `[v6]:port`."""
    if not isinstance(value, str):
        raise ConfigError(path, f"{_show(value)} is not host:port")
    host, sep, port_text = value.rpartition(":")
    if not sep or not host:
        raise ConfigError(path, f"{_quote(value)} is not host:port")
    if host.startswith("["):
        if not host.endswith("]"):
            raise ConfigError(path, f"{_quote(value)} is not host:port")
        host = host[1:-1]
        try:
            ipaddress.IPv6Address(host)
        except ValueError:
            raise ConfigError(path, f"{_quote(value)}: {_quote(host)} is not an IPv6 address") from None
    elif ":" in host:
        raise ConfigError(path, f"{_quote(value)}: write an IPv6 target as [address]:port")
    elif not _HOSTNAME.match(host):
        raise ConfigError(path, f"{_quote(value)}: {_quote(host)} is not a hostname or IPv4 address")
    if not port_text.isascii() or not port_text.isdigit():
        raise ConfigError(path, f"{_quote(value)}: {_quote(port_text)} is not a port")
    port = int(port_text)
    if not 1 <= port <= 65535:
        raise ConfigError(path, f"{_quote(value)}: port {port} is outside 1-65535")
    return Target(host, port)


def _parse_seconds(path: str, value: Any, lowest: float, highest: float) -> float:
    if isinstance(value, bool) or not isinstance(value, int | float) or not math.isfinite(value):
        raise ConfigError(path, f"{_show(value)} is not a number of seconds")
    if not lowest <= value <= highest:
        raise ConfigError(path, f"{value} is outside {lowest:g}-{highest:g} seconds")
    return float(value)


def _parse_count(path: str, value: Any) -> int:
    if isinstance(value, bool) or not isinstance(value, int):
        raise ConfigError(path, f"{_show(value)} is not a number of connections (a whole number)")
    if not 1 <= value <= MAX_CONNECTIONS:
        raise ConfigError(path, f"{value} is outside 1-{MAX_CONNECTIONS}")
    return value


def _parse_proxy_protocol(path: str, value: Any) -> str:
    if value not in PROXY_PROTOCOLS:
        raise ConfigError(path, f'{_show(value)} is not "v1" or "v2"')
    return str(value)


def _parse_flag(path: str, value: Any) -> bool:
    if not isinstance(value, bool):
        raise ConfigError(path, f"{_show(value)} is not true or false")
    return value


def _parse_health_check(path: str, value: Any) -> HealthCheck:
    if not isinstance(value, dict):
        raise ConfigError(path, f"must be an object with Interval, Timeout, Rise, Fall, not {_kind(value)}")
    fields: dict[str, Callable[[str, Any], Any]] = {
        "Interval": partial(_parse_seconds, lowest=0.05, highest=3600.0),
        "Timeout": partial(_parse_seconds, lowest=0.01, highest=300.0),
        "Rise": partial(_parse_small_count, highest=100),
        "Fall": partial(_parse_small_count, highest=100),
    }
    for name in value:
        if name not in fields:
            raise ConfigError(f"{path}.{name}", f"unknown field (known: {', '.join(fields)})")
    check = HealthCheck(**{name.lower(): parse(f"{path}.{name}", value[name])
                           for name, parse in fields.items() if name in value})
    if check.timeout > check.interval:
        raise ConfigError(f"{path}.Timeout", f"{check.timeout:g} is longer than Interval ({check.interval:g})")
    return check


def _parse_small_count(path: str, value: Any, highest: int) -> int:
    if isinstance(value, bool) or not isinstance(value, int):
        raise ConfigError(path, f"{_show(value)} is not a whole number")
    if not 1 <= value <= highest:
        raise ConfigError(path, f"{value} is outside 1-{highest}")
    return value


# Field name -> its parser (path, value) -> value; documented in README.md's Configuration table.
OPTIONAL_APP_FIELDS: dict[str, Callable[[str, Any], Any]] = {
    "ConnectTimeout": partial(_parse_seconds, lowest=0.001, highest=300.0),
    "IdleTimeout": partial(_parse_seconds, lowest=0.001, highest=7 * 86400.0),
    "HalfCloseTimeout": partial(_parse_seconds, lowest=0.001, highest=7 * 86400.0),
    "SoftLimit": _parse_count,
    "HardLimit": _parse_count,
    "MaxConns": _parse_count,
    "HealthCheck": _parse_health_check,
    "ProxyProtocol": _parse_proxy_protocol,
    "RetryOnReset": _parse_flag,
    "Hostnames": parse_hostnames,
    "TlsMode": parse_tls_mode,
    "Certificate": parse_file,
    "Key": parse_file,
    "TlsHandshakeTimeout": partial(_parse_seconds, lowest=0.01, highest=300.0),
}


def _kind(value: Any) -> str:
    return {
        dict: "an object", list: "a list", str: "a string", bool: "a boolean", int: "a number",
        float: "a number", type(None): "null",
    }.get(type(value), type(value).__name__)


def _quote(text: str) -> str:
    return orjson.dumps(text).decode()


def _show(value: Any) -> str:
    return orjson.dumps(value).decode() if not isinstance(value, dict | list) else _kind(value)
