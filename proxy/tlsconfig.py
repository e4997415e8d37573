"""The TLS part of a config document: the top-level `Tls` object and the per-app TLS fields' parsers.

`Tls.Ports` are shared by every app that lists `Hostnames`; they never appear in an app's `Ports`. An app's
TLS fields (Hostnames, TlsMode, Certificate, Key, TlsHandshakeTimeout) are parsed here and checked across the
document by `check_tls` (one hostname belongs to one app; a wildcard needs Certificate/Key, RFC 8737; an app
with Hostnames needs Tls.Ports; a terminated app needs a certificate or Tls.Acme).
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

import orjson

from proxy.errors import ConfigError

if TYPE_CHECKING:
    from proxy.config import App

TLS_MODES = ("terminate", "passthrough")
DEFAULT_TLS_MODE = "terminate"
DEFAULT_HANDSHAKE_TIMEOUT = 10.0
_LABEL = r"[a-z0-9]([a-z0-9-]{0,61}[a-z0-9])?"
_HOSTNAME = re.compile(rf"^(\*\.)?{_LABEL}(\.{_LABEL})+$")


@dataclass(frozen=True, slots=True)
class Acme:
    directory: str
    email: str | None = None
    ca_file: str | None = None  # trust for the directory's HTTPS (pebble's own CA in tests)

    def to_document(self) -> dict[str, Any]:
        document: dict[str, Any] = {"Directory": self.directory}
        if self.email is not None:
            document["Email"] = self.email
        if self.ca_file is not None:
            document["CaFile"] = self.ca_file
        return document


@dataclass(frozen=True, slots=True)
class TlsSettings:
    ports: tuple[int, ...] = ()
    acme: Acme | None = None
    state_dir: str | None = None

    def to_document(self) -> dict[str, Any]:
        document: dict[str, Any] = {"Ports": list(self.ports)}
        if self.acme is not None:
            document["Acme"] = self.acme.to_document()
        if self.state_dir is not None:
            document["StateDir"] = self.state_dir
        return document


def parse_tls(path: str, value: Any) -> TlsSettings:
    if not isinstance(value, dict):
        raise ConfigError(path, f"must be an object with Ports, Acme, StateDir, not {_kind(value)}")
    known = ("Ports", "Acme", "StateDir")
    for name in value:
        if name not in known:
            raise ConfigError(f"{path}.{name}", f"unknown field (known: {', '.join(known)})")
    if "Ports" not in value:
        raise ConfigError(f"{path}.Ports", "missing")
    ports = value["Ports"]
    if not isinstance(ports, list) or not ports:
        raise ConfigError(f"{path}.Ports", "must list at least one port")
    seen: list[int] = []
    for j, port in enumerate(ports):
        if isinstance(port, bool) or not isinstance(port, int) or not 1 <= port <= 65535:
            raise ConfigError(f"{path}.Ports[{j}]", f"{_show(port)} is not a port (an integer from 1 to 65535)")
        if port in seen:
            raise ConfigError(f"{path}.Ports[{j}]", f"port {port} is listed twice")
        seen.append(port)
    acme = _parse_acme(f"{path}.Acme", value["Acme"]) if "Acme" in value else None
    state_dir = _parse_path(f"{path}.StateDir", value["StateDir"]) if "StateDir" in value else None
    if acme is not None and state_dir is None:
        raise ConfigError(f"{path}.StateDir", "missing (Acme stores its account key and certificates there)")
    return TlsSettings(tuple(seen), acme, state_dir)


def _parse_acme(path: str, value: Any) -> Acme:
    if not isinstance(value, dict):
        raise ConfigError(path, f"must be an object with Directory, Email, CaFile, not {_kind(value)}")
    known = ("Directory", "Email", "CaFile")
    for name in value:
        if name not in known:
            raise ConfigError(f"{path}.{name}", f"unknown field (known: {', '.join(known)})")
    directory = value.get("Directory")
    if not isinstance(directory, str) or not directory.startswith(("https://", "http://")):
        raise ConfigError(f"{path}.Directory", f"{_show(directory)} is not an http(s) URL")
    email = value.get("Email")
    if email is not None and (not isinstance(email, str) or "@" not in email):
        raise ConfigError(f"{path}.Email", f"{_show(email)} is not an email address")
    ca_file = _parse_path(f"{path}.CaFile", value["CaFile"]) if "CaFile" in value else None
    return Acme(directory, email, ca_file)


def _parse_path(path: str, value: Any) -> str:
    if not isinstance(value, str) or not value or "\x00" in value:
        raise ConfigError(path, f"{_show(value)} is not a file path")
    return value


def parse_hostnames(path: str, value: Any) -> tuple[str, ...]:
    if not isinstance(value, list) or not value:
        raise ConfigError(path, "must list at least one hostname")
    names: list[str] = []
    for j, item in enumerate(value):
        if not isinstance(item, str):
            raise ConfigError(f"{path}[{j}]", f"{_show(item)} is not a hostname")
        name = item.lower().rstrip(".")
        if not _HOSTNAME.match(name) or len(name) > 253:
            raise ConfigError(f"{path}[{j}]", f"{_show(item)} is not a hostname (a wildcard only as *.name.tld)")
        if name in names:
            raise ConfigError(f"{path}[{j}]", f"{_show(item)} is listed twice")
        names.append(name)
    return tuple(names)


def parse_tls_mode(path: str, value: Any) -> str:
    if value not in TLS_MODES:
        raise ConfigError(path, f'{_show(value)} is not "terminate" or "passthrough"')
    return str(value)


def parse_file(path: str, value: Any) -> str:
    return _parse_path(path, value)


def check_app(path: str, app: App) -> None:
    """An app's TLS fields taken together."""
    if not app.hostnames:
        for name, value in (("TlsMode", app.tls_mode), ("Certificate", app.certificate), ("Key", app.key),
                            ("TlsHandshakeTimeout", app.tls_handshake_timeout)):
            if value is not None:
                raise ConfigError(f"{path}.{name}", "only for an app with Hostnames")
        return
    if (app.certificate is None) != (app.key is None):
        missing = "Key" if app.key is None else "Certificate"
        raise ConfigError(f"{path}.{missing}", "missing (Certificate and Key go together)")
    if app.tls_mode == "passthrough":
        for name, value in (("Certificate", app.certificate), ("TlsHandshakeTimeout", app.tls_handshake_timeout)):
            if value is not None:
                raise ConfigError(f"{path}.{name}", "not for a passthrough app (its targets hold the certificate)")
        return
    if app.certificate is None:
        for j, name in enumerate(app.hostnames):
            if name.startswith("*."):
                raise ConfigError(f"{path}.Hostnames[{j}]", f'"{name}": a wildcard needs Certificate and Key '
                                  "(ACME's TLS-ALPN-01 cannot validate wildcards, RFC 8737)")


def check_tls(tls: TlsSettings | None, apps: tuple[App, ...], app_ports: dict[int, str]) -> None:
    """The document's TLS fields taken together: ports, hostname owners, where certificates come from."""
    owner: dict[str, int] = {}
    for i, app in enumerate(apps):
        for j, name in enumerate(app.hostnames):
            if name in owner:
                raise ConfigError(f"Apps[{i}].Hostnames[{j}]", f'"{name}" already belongs to Apps[{owner[name]}]')
            owner[name] = i
        if app.hostnames and tls is None:
            raise ConfigError(f"Apps[{i}].Hostnames", "needs the top-level Tls.Ports to be served on")
        if app.hostnames and app.tls_mode != "passthrough" and app.certificate is None and (
                tls is None or tls.acme is None):
            raise ConfigError(f"Apps[{i}].Certificate", "missing (a terminated app needs Certificate and Key, or "
                              "Tls.Acme to obtain one)")
    if tls is not None:
        for j, port in enumerate(tls.ports):
            if port in app_ports:
                raise ConfigError(f"Tls.Ports[{j}]", f"port {port} is already used by {app_ports[port]}")


def _kind(value: Any) -> str:
    return {dict: "an object", list: "a list", str: "a string", bool: "a boolean", int: "a number",
            float: "a number", type(None): "null"}.get(type(value), type(value).__name__)


def _show(value: Any) -> str:
    return orjson.dumps(value).decode() if not isinstance(value, dict | list) else _kind(value)
