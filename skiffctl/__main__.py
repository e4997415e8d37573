"""`python -m skiffctl --etcd etcd://HOST:PORT[,...]/PREFIX COMMAND`: put, get, delete and list apps, import a
config file, and show which node serves which revision.

Every document is validated before it is written, with the same one-line errors as `supervisor.py --check`.
Blocking HTTP to etcd's JSON gateway is fine here (this process never forks workers).
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path
from typing import Any

import orjson

from control.sources.etcdapi import Cluster, EtcdError
from proxy.cluster import EtcdUrl, app_put_ops, assemble, chunk_ops, lagging, parse_etcd_url
from proxy.config import load_config, parse_document
from proxy.errors import ConfigError, ConfigUnreadable

EXIT_INVALID = 1
EXIT_UNREACHABLE = 2


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="skiffctl", description="manage the apps a skiff fleet serves from etcd")
    parser.add_argument("--etcd", required=True, metavar="URL", help="etcd://HOST:PORT[,HOST:PORT...]/PREFIX")
    commands = parser.add_subparsers(dest="command", required=True)
    apps = commands.add_parser("apps", help="one app at a time").add_subparsers(dest="action", required=True)
    apps.add_parser("put", help="validate FILE (one app object) and write it").add_argument("file", type=Path)
    apps.add_parser("get", help="print one app's document").add_argument("name")
    apps.add_parser("delete", help="remove one app").add_argument("name")
    apps.add_parser("list", help="every app, with its revision and whether nodes can serve it")
    commands.add_parser("import", help="every app of a config file, in as few transactions as etcd allows"
                        ).add_argument("file", type=Path)
    commands.add_parser("nodes", help="which node serves which revision; lagging nodes are marked")
    return parser


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    try:
        url = parse_etcd_url(args.etcd)
    except ConfigError as exc:
        print(f"--etcd: {exc}", file=sys.stderr)
        return EXIT_INVALID
    etcd = Cluster(url.endpoints)
    try:
        if args.command == "apps":
            handler = {"put": put_app, "get": get_app, "delete": delete_app, "list": list_apps}[args.action]
            return handler(etcd, url, args)
        if args.command == "import":
            return import_config(etcd, url, args.file)
        return show_nodes(etcd, url)
    except EtcdError as exc:
        print(f"{url}: {exc}", file=sys.stderr)
        return EXIT_UNREACHABLE


def put_app(etcd: Cluster, url: EtcdUrl, args: argparse.Namespace) -> int:
    try:
        data = args.file.read_bytes()
    except OSError as exc:
        print(f"cannot read {args.file}: {exc.strerror or exc}", file=sys.stderr)
        return EXIT_INVALID
    try:
        document = orjson.loads(data)
        app = parse_document({"Apps": [document]}).apps[0]
    except orjson.JSONDecodeError as exc:
        print(f"{args.file}: invalid: not valid JSON: {exc}", file=sys.stderr)
        return EXIT_INVALID
    except ConfigError as exc:
        path = exc.path.removeprefix("Apps[0]").lstrip(".")
        print(f"{args.file}: invalid: {path + ': ' if path else ''}{exc.problem}", file=sys.stderr)
        return EXIT_INVALID
    revision = etcd.call("put", url.apps_key(app.name), orjson.dumps(document))
    print(f"{url.apps_key(app.name)}: written at revision {revision}")
    return 0


def get_app(etcd: Cluster, url: EtcdUrl, args: argparse.Namespace) -> int:
    document = etcd.call("get", url.apps_key(args.name))
    if document is None:
        print(f"{url.apps_key(args.name)}: no such app", file=sys.stderr)
        return EXIT_INVALID
    try:
        print(orjson.dumps(orjson.loads(document.value), option=orjson.OPT_INDENT_2).decode())
    except orjson.JSONDecodeError:
        print(document.value.decode(errors="replace"))
    return 0


def delete_app(etcd: Cluster, url: EtcdUrl, args: argparse.Namespace) -> int:
    revision, deleted = etcd.call("delete", url.apps_key(args.name))
    if not deleted:
        print(f"{url.apps_key(args.name)}: no such app", file=sys.stderr)
        return EXIT_INVALID
    print(f"{url.apps_key(args.name)}: deleted at revision {revision}")
    return 0


def list_apps(etcd: Cluster, url: EtcdUrl, args: argparse.Namespace) -> int:
    listing = etcd.call("list_prefix", url.apps_key())
    assembly = assemble(url, listing.documents, {})
    served = {a.name: a for a in assembly.config.apps}
    print(f"{'NAME':24} {'REVISION':>8}  PORTS / TARGETS")
    for key, document in sorted(listing.documents.items()):
        name = key.removeprefix(url.apps_key())
        app = served.get(name)
        shown = (f"{','.join(map(str, app.ports))} -> {', '.join(map(str, app.targets))}" if app is not None
                 else f"SKIPPED: {assembly.skipped.get(key, 'invalid')}")
        print(f"{name:24} {document.mod_revision:>8}  {shown}")
    print(f"{len(listing.documents)} apps at revision {listing.revision}")
    return EXIT_INVALID if assembly.skipped else 0


def import_config(etcd: Cluster, url: EtcdUrl, path: Path) -> int:
    try:
        config = load_config(path)
        chunks = chunk_ops(app_put_ops(url, config))
    except ConfigError as exc:
        print(str(exc) if isinstance(exc, ConfigUnreadable) else f"{path}: invalid: {exc}", file=sys.stderr)
        return EXIT_INVALID
    revision = 0
    for chunk in chunks:
        revision = etcd.call("put_all", chunk)
    how = "one transaction" if len(chunks) == 1 else f"{len(chunks)} transactions (etcd's per-transaction limits)"
    print(f"{path}: imported {len(config.apps)} apps in {how}, at revision {revision}")
    return 0


def show_nodes(etcd: Cluster, url: EtcdUrl) -> int:
    listing = etcd.call("list_prefix", url.nodes_key())
    config_revision = max((d.mod_revision for k, d in etcd.call("list_prefix", url.apps_key()).documents.items()),
                          default=0)
    nodes: dict[str, dict[str, Any]] = {}
    for key, document in listing.documents.items():
        try:
            nodes[key.removeprefix(url.nodes_key())] = orjson.loads(document.value)
        except orjson.JSONDecodeError:
            nodes[key.removeprefix(url.nodes_key())] = {}
    behind = lagging({n: int(r.get("applied_revision", 0)) for n, r in nodes.items()}, config_revision)
    print(f"{'NODE':24} {'REVISION':>8} {'VERSION':>7} {'WORKERS':>7}  {'STEERING':9} ETCD  LAST ERROR")
    for name, r in sorted(nodes.items()):
        workers = f"{r.get('workers_ready', '?')}/{r.get('workers', '?')}"
        mark = "  <- LAGGING" if name in behind else ""
        print(f"{name:24} {r.get('applied_revision', '?'):>8} {r.get('version', '?'):>7} {workers:>7}  "
              f"{r.get('steering', '?'):9} {'up' if r.get('etcd_up') else 'DOWN':4}  {r.get('last_error') or '-'}"
              f"{mark}")
    print(f"{len(nodes)} nodes; {len(behind)} lagging; newest app revision {config_revision}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
