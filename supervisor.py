"""skiff's entry point: parse the command line, validate the config, run the supervisor.

    python supervisor.py [-c CONFIG | -c etcd://HOST:PORT[,...]/PREFIX] [--config-cache PATH] [-w N] [--check]
                         [--grace SECONDS] [--log-format text|json] [--log-level LEVEL] [--bind ADDRESS]
                         [--steering reuseport|bpf|auto] [--instance NAME] [--takeover PID] [--share-ports]
                         [--fd-store]
"""

from __future__ import annotations

import argparse
import ipaddress
import logging
import os
import re
import socket
import sys
from collections.abc import Callable
from dataclasses import replace
from pathlib import Path
from typing import TypeVar

from control.arbiter import ACK_TIMEOUT, EXIT_CANNOT_LISTEN, Options, Supervisor
from control.exclusive import conflict
from control.http import MAX_CONNECTIONS
from control.sources.etcd import EtcdSource, initial_config
from control.steering import DEFAULT_OBJECT, MODES, SteeringUnavailable, choose_steering
from proxy.cluster import is_etcd_url, parse_etcd_url
from proxy.config import Config, load_config
from proxy.errors import ConfigError, ConfigUnreadable
from proxy.logs import setup_logging
from proxy.snapshot import first_snapshot

LOG_LEVELS = ("debug", "info", "warning", "error")
T = TypeVar("T", int, float)


def ranged(convert: Callable[[str], T], lowest: T, highest: T, what: str, unit: str = "") -> Callable[[str], T]:
    """An argparse type: `convert`, then a bounds check; both errors are one line naming the value."""

    def parse(text: str) -> T:
        try:
            value = convert(text)
        except ValueError:
            raise argparse.ArgumentTypeError(f"{text!r} is not {what}") from None
        if not lowest <= value <= highest:
            raise argparse.ArgumentTypeError(f"{value:g} is outside {lowest:g}-{highest:g}{unit}")
        return value

    return parse


workers_count = ranged(int, 1, 1024, "a whole number")
seconds = ranged(float, 0.0, 86400.0, "a number of seconds", " seconds")


def address(text: str) -> str:
    try:
        return str(ipaddress.ip_address(text))
    except ValueError:
        raise argparse.ArgumentTypeError(f"{text!r} is not an IP address") from None


def instance_name(text: str) -> str:
    if not re.fullmatch(r"[A-Za-z0-9][A-Za-z0-9_.-]{0,63}", text):
        raise argparse.ArgumentTypeError(f"{text!r} is not a name (letters, digits, _ . -; up to 64)")
    return text


def takeover_problem(pid: int) -> str | None:
    """None when pid is a running skiff supervisor (the only process --takeover may signal)."""
    try:
        title = Path(f"/proc/{pid}/cmdline").read_bytes().replace(b"\0", b" ").decode(errors="replace")
    except OSError:
        return "no such process"
    if not title.startswith("skiff: supervisor"):
        return f"process {pid} is not a skiff supervisor ({title.strip()[:60]!r})"
    return None


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="supervisor.py", description="skiff: a hot-reloading L4 TCP proxy")
    parser.add_argument("-c", "--config", default="config.json",
                        help="config file (./config.json), or etcd://HOST:PORT[,HOST:PORT...]/PREFIX")
    parser.add_argument("--config-cache", type=Path, metavar="PATH",
                        help="with etcd://: keep the last good config here, so a restart while etcd is down serves")
    parser.add_argument("--node-id", type=instance_name,
                        help="with etcd://: this node's name under PREFIX/nodes/ (default: hostname-instance)")
    parser.add_argument("-w", "--workers", type=workers_count, default=os.cpu_count() or 1,
                        help="worker processes (default: number of CPUs)")
    parser.add_argument("--check", action="store_true", help="validate the config, print a summary and exit")
    parser.add_argument("--grace", type=seconds, default=30.0,
                        help="on SIGTERM/SIGINT, how long open connections may finish (default 30)")
    parser.add_argument("--bind", type=address, default="0.0.0.0", help="address to listen on (default 0.0.0.0)")
    parser.add_argument("--log-format", choices=("text", "json"), default="text")
    parser.add_argument("--log-level", choices=LOG_LEVELS, default="info", type=str.lower)
    parser.add_argument("--no-watch", dest="watch", action="store_false",
                        help="do not watch the config file; reload on SIGHUP only")
    parser.add_argument("--steering", choices=MODES, default="reuseport",
                        help="reuseport: one socket per port per worker (default); bpf: sk_lookup steering onto "
                             "one listener per worker; auto: bpf when it works here, else reuseport")
    parser.add_argument("--instance", type=instance_name, default="default",
                        help="name of this proxy's pinned BPF state (default: default)")
    parser.add_argument("--metrics", metavar="HOST:PORT",
                        help="serve /metrics (Prometheus), /healthz and /status here, e.g. 127.0.0.1:9901")
    parser.add_argument("--ack-timeout", type=ranged(float, 0.5, 3600.0, "a number of seconds", " seconds"),
                        default=ACK_TIMEOUT, metavar="SECONDS",
                        help=f"a worker that has not applied a reload within this many seconds is hung: it is killed "
                             f"and respawned (default {ACK_TIMEOUT:g})")
    parser.add_argument("--metrics-max-connections", metavar="N", type=ranged(int, 1, 10000, "a whole number"),
                        default=MAX_CONNECTIONS,
                        help=f"HTTP connections served at once; more are closed at once (default {MAX_CONNECTIONS})")
    parser.add_argument("--takeover", metavar="PID", type=int,
                        help="restart without a gap: take over from the running supervisor PID (it keeps serving "
                             "until this one is ready, then drains and exits)")
    parser.add_argument("--share-ports", action="store_true",
                        help="start even when another skiff (or another process of this user) already serves "
                             "these ports; without it skiff refuses, naming the other one")
    parser.add_argument("--fd-store", action="store_true",
                        help="under systemd (FileDescriptorStoreMax= set): keep the listening sockets in systemd's "
                             "descriptor store, so `systemctl restart` refuses no connection")
    parser.add_argument("--bpf-object", type=Path, default=DEFAULT_OBJECT, help=argparse.SUPPRESS)
    parser.add_argument("--bpf-pin-root", type=Path, default=Path("/sys/fs/bpf"), help=argparse.SUPPRESS)
    return parser


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    log = setup_logging(args.log_format, args.log_level, "supervisor")
    if is_etcd_url(args.config):
        return main_etcd(args, log)
    args.config = Path(args.config)
    try:
        config = load_config(args.config)
    except ConfigError as exc:
        line = str(exc) if isinstance(exc, ConfigUnreadable) else f"{args.config}: invalid: {exc}"
        if args.check:
            print(line, file=sys.stderr)
        else:
            log.error("%s", line, extra={"event": "config_invalid", "error": str(exc)})
        return 1
    if args.check:
        print(f"{args.config}: ok: {config.summary()}")
        return 0
    return serve(args, log, config)


def main_etcd(args: argparse.Namespace, log: logging.Logger) -> int:
    """-c etcd://...: the first config from etcd (or the cache), then the etcd source follows the prefix."""
    try:
        url = parse_etcd_url(args.config)
        # --check reads etcd itself: a cache would hide that etcd cannot be reached.
        assembly, revision, origin = initial_config(url, None if args.check else args.config_cache)
    except ConfigError as exc:
        if args.check:
            print(str(exc), file=sys.stderr)
        else:
            log.error("%s", exc, extra={"event": "config_invalid", "error": str(exc)})
        return 1
    if args.check:
        for reason in assembly.skipped.values():
            print(reason, file=sys.stderr)
        verdict = "ok" if not assembly.skipped else f"{len(assembly.skipped)} invalid"
        print(f"{url}: {verdict}: {assembly.config.summary()} at revision {revision}")
        return 1 if assembly.skipped else 0
    log.info("config from %s: %s", origin, assembly.config.summary(), extra={"event": "config_source"})
    node_id = args.node_id or f"{socket.gethostname()}-{args.instance}"
    source = EtcdSource(url, node_id, args.config_cache, assembly, revision)
    args.watch = False  # no inotify: the source watches etcd
    return serve(args, log, assembly.config, source, revision)


def serve(args: argparse.Namespace, log: logging.Logger, config: Config, source: EtcdSource | None = None,
          revision: int = 0) -> int:
    if args.takeover is not None and (problem := takeover_problem(args.takeover)):
        log.error("--takeover %d: %s", args.takeover, problem, extra={"event": "takeover_failed", "error": problem})
        return 1
    if args.takeover is None and not args.share_ports and (
            clash := conflict(args.bind, config.ports, args.bpf_pin_root, args.instance)):
        line = (f"refusing to start: {clash}; pass --share-ports to share them, or --takeover PID to replace "
                "that supervisor")
        log.error("%s", line, extra={"event": "ports_taken", "error": clash})
        return EXIT_CANNOT_LISTEN
    try:
        steering = choose_steering(args.steering, args.bpf_object)
    except SteeringUnavailable as exc:
        log.error("%s", exc, extra={"event": "steering_failed", "error": str(exc)})
        return 1
    if steering.mode == "bpf" and config.tls is not None:
        problem = "Tls.Ports: TLS ports are served with --steering reuseport only (not by bpf steering yet)"
        log.error("%s", problem, extra={"event": "config_invalid", "error": problem})
        return 1
    options = Options(config_path=Path(args.config), workers=args.workers, grace=args.grace, bind=args.bind,
                      watch=args.watch, steering=steering.mode, instance=args.instance,
                      bpf_object=args.bpf_object, bpf_pin_root=args.bpf_pin_root, metrics=args.metrics,
                      metrics_max_connections=args.metrics_max_connections, takeover=args.takeover,
                      ack_timeout=args.ack_timeout, source=source, fd_store=args.fd_store)
    return Supervisor(options, replace(first_snapshot(config), revision=revision)).run()


if __name__ == "__main__":
    sys.exit(main())
