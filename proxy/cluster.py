"""The clustered config's pure core: etcd URLs and key layout, documents → Config, import chunking, node lag.

Layout under a PREFIX: `PREFIX/apps/NAME` holds one app in the seed form (its `Name` equals NAME) and
`PREFIX/settings` the top-level fields; nodes report at `PREFIX/nodes/NODE_ID`. `assemble` turns the documents
read at one revision into a `Config`, skipping what is invalid or conflicting (an app's last good version keeps
serving) and saying why per key. No sockets here: plain values in, plain values out.
"""

from __future__ import annotations

import re
from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from typing import Any

import orjson

from proxy.config import App, Config, parse_document
from proxy.errors import ConfigError

MAX_TXN_OPS = 128  # etcd's default --max-txn-ops
MAX_TXN_BYTES = 1_400_000  # under etcd's default --max-request-bytes (1.5 MiB), leaving room for the envelope
_ENDPOINT = re.compile(r"^(\[[0-9A-Fa-f:.]+\]|[A-Za-z0-9.-]+):(\d{1,5})$")


@dataclass(frozen=True, slots=True)
class EtcdUrl:
    """`etcd://HOST:PORT[,HOST:PORT...]/PREFIX`: the endpoints to try in order and the key prefix (no slash at
    the end)."""

    endpoints: tuple[tuple[str, int], ...]
    prefix: str

    def __str__(self) -> str:
        hosts = ",".join(f"[{h}]:{p}" if ":" in h else f"{h}:{p}" for h, p in self.endpoints)
        return f"etcd://{hosts}{self.prefix}"

    def apps_key(self, name: str = "") -> str:
        return f"{self.prefix}/apps/{name}"

    @property
    def settings_key(self) -> str:
        return f"{self.prefix}/settings"

    def nodes_key(self, node: str = "") -> str:
        return f"{self.prefix}/nodes/{node}"


def is_etcd_url(text: str) -> bool:
    return text.startswith("etcd://")


def parse_etcd_url(text: str) -> EtcdUrl:
    """One ConfigError line naming what is wrong with the URL."""
    if not is_etcd_url(text):
        raise ConfigError("", f"{text!r} is not etcd://HOST:PORT[,HOST:PORT...]/PREFIX")
    rest = text[len("etcd://"):]
    hosts, slash, prefix = rest.partition("/")
    if not slash or not prefix.strip("/"):
        raise ConfigError("", f"{text!r}: missing /PREFIX after the endpoints")
    endpoints = []
    for item in hosts.split(","):
        match = _ENDPOINT.match(item)
        if not match or not 1 <= int(match.group(2)) <= 65535:
            raise ConfigError("", f"{text!r}: {item!r} is not HOST:PORT")
        endpoints.append((match.group(1).strip("[]"), int(match.group(2))))
    return EtcdUrl(tuple(endpoints), "/" + prefix.strip("/"))


@dataclass(frozen=True, slots=True)
class Document:
    """One key's value as read from etcd, with the revision that last modified it."""

    value: bytes
    mod_revision: int


@dataclass(frozen=True, slots=True)
class Assembly:
    """What a set of documents makes: the config to serve and, per skipped key, the one-line reason."""

    config: Config
    skipped: dict[str, str]


def parse_app_document(key: str, name: str, value: bytes) -> App:
    """Validate one `apps/NAME` document; the error names the key, like `--check` names the file."""
    try:
        document = orjson.loads(value)
    except orjson.JSONDecodeError as exc:
        raise ConfigError(key, f"not valid JSON: {exc}") from None
    try:
        config = parse_document({"Apps": [document]})
    except ConfigError as exc:
        path = exc.path.removeprefix("Apps[0]").lstrip(".")
        raise ConfigError(f"{key}{': ' + path if path else ''}", exc.problem) from None
    app = config.apps[0]
    if app.name != name:
        raise ConfigError(f"{key}: Name", f"{app.name!r} must equal the key's name {name!r}")
    return app


def parse_settings(key: str, value: bytes) -> dict[str, Any]:
    """The top-level fields (everything but Apps); today the document has none, so only `{}` is valid."""
    try:
        document = orjson.loads(value)
    except orjson.JSONDecodeError as exc:
        raise ConfigError(key, f"not valid JSON: {exc}") from None
    if not isinstance(document, dict):
        raise ConfigError(key, "must be an object")
    if "Apps" in document:
        raise ConfigError(f"{key}: Apps", f"apps live under their own keys ({key.rsplit('/', 1)[0]}/apps/NAME)")
    try:
        parse_document({"Apps": [], **document})
    except ConfigError as exc:
        raise ConfigError(f"{key}: {exc.path}", exc.problem) from None
    return dict(document)


def assemble(url: EtcdUrl, documents: Mapping[str, Document], last_good: Mapping[str, App]) -> Assembly:
    """The config that `documents` (key → value under the prefix) make.

    An invalid app document is skipped; its last good version (from `last_good`, by name) serves instead.
    Of two apps that claim the same port, the one whose document has the later mod_revision is skipped (its
    last good version serves if that one claims nothing already taken). Apps come out sorted by name, so the
    same documents always make the same config (and digest).
    """
    skipped: dict[str, str] = {}
    valid: list[tuple[int, str, App]] = []  # (mod_revision, key, app)
    apps_prefix = url.apps_key()
    for key in sorted(documents):
        document = documents[key]
        if key == url.settings_key:
            try:
                parse_settings(key, document.value)
            except ConfigError as exc:
                skipped[key] = str(exc)
            continue
        if not key.startswith(apps_prefix):
            continue
        name = key[len(apps_prefix):]
        try:
            valid.append((document.mod_revision, key, parse_app_document(key, name, document.value)))
        except ConfigError as exc:
            skipped[key] = str(exc)
            if name in last_good:
                valid.append((0, key, last_good[name]))  # the last good version: older than any document
    owner: dict[int, str] = {}
    chosen: dict[str, App] = {}
    for _revision, key, app in sorted(valid, key=lambda item: (item[0], item[1])):
        candidates = [app]
        fallback = last_good.get(app.name)
        if fallback is not None and fallback != app:
            candidates.append(fallback)
        for candidate in candidates:
            taken = [port for port in candidate.ports if port in owner]
            if not taken:
                chosen[app.name] = candidate
                owner.update((port, key) for port in candidate.ports)
                break
            if candidate is app:
                skipped.setdefault(key, f"{key}: Ports: port {taken[0]} is already used by {owner[taken[0]]} "
                                        "(the later document is skipped)")
    return Assembly(Config(tuple(chosen[name] for name in sorted(chosen))), skipped)


def app_put_ops(url: EtcdUrl, config: Config) -> list[tuple[str, bytes]]:
    """(key, value) for every app of a config file, in the layout the nodes read."""
    return [(url.apps_key(app.name), orjson.dumps(app.to_document())) for app in config.apps]


def chunk_ops(ops: Iterable[tuple[str, bytes]], max_ops: int = MAX_TXN_OPS,
              max_bytes: int = MAX_TXN_BYTES) -> list[list[tuple[str, bytes]]]:
    """Split puts into transactions etcd accepts by default: at most `max_ops` each and about `max_bytes`
    of keys and values (base64 makes them 4/3 larger on the wire). Order is kept."""
    chunks: list[list[tuple[str, bytes]]] = []
    size = 0
    for key, value in ops:
        cost = _wire_size(key, value)
        if cost > max_bytes:
            raise ConfigError(key, f"the document is {len(value):,} bytes: too large for one etcd request")
        if not chunks or len(chunks[-1]) >= max_ops or size + cost > max_bytes:
            chunks.append([])
            size = 0
        chunks[-1].append((key, value))
        size += cost
    return chunks


def _wire_size(key: str, value: bytes) -> int:
    return (len(key.encode()) + len(value) + 2) * 4 // 3 + 64


def lagging(applied: Mapping[str, int], newest: int) -> set[str]:
    """Nodes whose applied revision is below `newest`, the revision of the newest app or settings document.
    (Node reports bump etcd's revision too, so nodes that listed at different moments report different
    revisions for the same content: only a revision below the newest document's means missing a change.)"""
    return {node for node, revision in applied.items() if revision < newest}
