"""ACME, supervisor side: which apps need a certificate, when to order or renew, the helper process, and the
hand-off of challenge and issued certificates to every worker.

Every terminated app without a configured Certificate gets one certificate for all its hostnames, issued once
per proxy instance by the helper (control/acme_helper.py, forked here, respawned when it dies) and kept under
Tls.StateDir. An order's challenge certificate is pushed to every worker, and the helper is told to answer the
challenge only when every ready worker confirmed it loaded it. An issued certificate joins the snapshot's
certificates (so a respawned worker starts with it) and is pushed to the running workers; it is renewed at 2/3
of its life. A failed order is retried with exponential backoff.
"""

from __future__ import annotations

import hashlib
import logging
import os
import re
import resource
import signal
import socket
import time
from dataclasses import replace
from pathlib import Path
from typing import TYPE_CHECKING, Any

import setproctitle
from cryptography import x509

from control.handle import WorkerHandle, WorkerState
from control.helper import HelperProcess
from proxy.certfiles import CertPair, check_pair
from proxy.config import App
from proxy.errors import ConfigError
from proxy.framing import encode
from proxy.logs import log_event
from proxy.tlsconfig import Acme

if TYPE_CHECKING:
    from control.arbiter import Supervisor

log = logging.getLogger("supervisor")

HELPER_RESPAWN = 1.0
BACKOFF_FIRST = 1.0
BACKOFF_MAX = 600.0
RENEW_AT = 2 / 3  # of a certificate's lifetime


def stored_paths(state_dir: Path, app: str) -> tuple[Path, Path]:
    """Where an app's issued certificate and key live (the name made safe, with a hash so two never clash)."""
    stem = re.sub(r"[^A-Za-z0-9_.-]", "_", app)[:64] + "-" + hashlib.sha256(app.encode()).hexdigest()[:8]
    return state_dir / "certs" / f"{stem}.crt", state_dir / "certs" / f"{stem}.key"


def wanted_apps(apps: tuple[App, ...]) -> dict[str, tuple[str, ...]]:
    """App name -> the hostnames ACME must cover: terminated apps without a configured certificate."""
    return {a.name: a.hostnames for a in apps if a.terminates and a.certificate is None}


def renew_time(pair: CertPair) -> float:
    cert = x509.load_pem_x509_certificate(pair.cert.encode())
    start, end = cert.not_valid_before_utc.timestamp(), cert.not_valid_after_utc.timestamp()
    return start + (end - start) * RENEW_AT


def covers(pair: CertPair, names: tuple[str, ...]) -> bool:
    cert = x509.load_pem_x509_certificate(pair.cert.encode())
    try:
        listed = set(cert.extensions.get_extension_for_class(x509.SubjectAlternativeName).value
                     .get_values_for_type(x509.DNSName))
    except x509.ExtensionNotFound:
        return False
    return set(names) <= listed


class AcmeManager:
    def __init__(self, supervisor: Supervisor) -> None:
        self.sup = supervisor
        self.settings: Acme | None = None
        self.state_dir: Path | None = None
        self.seen_version = 0
        self.wanted: dict[str, tuple[str, ...]] = {}
        self.due: dict[str, float] = {}  # app -> monotonic time of its next order
        self.failures: dict[str, int] = {}
        self.in_flight: str | None = None
        self.challenges: dict[str, dict[str, Any]] = {}  # hostname -> the challenge message for workers
        self.loaded: dict[str, set[int]] = {}  # hostname -> pids of workers that confirmed it
        self.helper = HelperProcess("ACME", self.sup.selector, self.on_message, self.helper_gone)
        self.respawn_at: float | None = None

    # --- the supervisor's hooks ----------------------------------------------------------------------
    def deadline(self) -> float | None:
        times = [t for t in (self.respawn_at, *([] if self.in_flight else self.due.values())) if t is not None]
        return min(times, default=None)

    def run_timers(self, now: float) -> None:
        if self.sup.snapshot.version != self.seen_version:
            self.configure()
            self.watch_certificate_files()
        if self.respawn_at is not None and self.respawn_at <= now:
            self.respawn_at = None
            self.spawn_helper()
        if self.in_flight is None and self.helper.running:
            ready = [app for app, due in self.due.items() if due <= now]
            if ready:
                app = min(ready, key=self.due.__getitem__)
                del self.due[app]
                self.in_flight = app
                self.send({"t": "order", "app": app, "names": list(self.wanted[app])})

    def worker_loaded(self, handle: WorkerHandle, message: dict[str, Any]) -> None:
        name = str(message.get("name"))
        if name not in self.challenges:
            return
        self.loaded.setdefault(name, set()).add(handle.pid)
        ready = {h.pid for h in self.sup.handles.values() if h.state is WorkerState.READY}
        if ready <= self.loaded[name]:
            self.send({"t": "loaded", "name": name})

    def close_in_child(self) -> None:
        self.helper.close_in_child()

    def close(self) -> None:
        self.helper.close()  # the helper reads EOF and exits

    def watch_certificate_files(self) -> None:
        """A configured Certificate or Key replaced on disk reloads like a config change (its hash is part of
        the digest, so the reload makes a new snapshot only when the content changed)."""
        watcher = self.sup.watcher
        if watcher is not None:
            apps = self.sup.snapshot.config.apps
            watcher.watch_also([Path(f) for a in apps for f in (a.certificate, a.key) if f is not None])

    # --- what to order -------------------------------------------------------------------------------
    def configure(self) -> None:
        sup = self.sup
        self.seen_version = sup.snapshot.version
        tls = sup.snapshot.config.tls
        self.settings = tls.acme if tls is not None else None
        self.state_dir = Path(tls.state_dir) if tls is not None and tls.state_dir else None
        self.wanted = wanted_apps(sup.snapshot.config.apps) if self.settings is not None else {}
        issued = sup.certs.issued
        for app in [a for a in issued if a not in self.wanted]:
            del issued[app]
        for app in [a for a in self.due if a not in self.wanted]:
            del self.due[app]
        now_wall, now = time.time(), time.monotonic()
        for app, names in self.wanted.items():
            pair = issued.get(app)
            if pair is None or not covers(pair, names):
                pair = self.stored(app, names)
                if pair is not None:
                    self.adopt(app, pair, push=True)
            if app in issued:
                self.due.setdefault(app, now + max(renew_time(issued[app]) - now_wall, 0.0))
            elif app != self.in_flight:
                self.due.setdefault(app, now)
        if self.wanted and not self.helper.running and self.respawn_at is None:
            self.spawn_helper()

    def stored(self, app: str, names: tuple[str, ...]) -> CertPair | None:
        """A certificate issued before (by this instance or a predecessor) that still covers the names."""
        if self.state_dir is None:
            return None
        cert_path, key_path = stored_paths(self.state_dir, app)
        try:
            pair = CertPair(cert_path.read_text(), key_path.read_text())
            check_pair(app, pair.cert, pair.key)
        except (OSError, ValueError, ConfigError):
            return None
        if not covers(pair, names) or pair.not_after() <= time.time():
            return None
        return pair

    def adopt(self, app: str, pair: CertPair, push: bool) -> None:
        sup = self.sup
        sup.certs.issued[app] = pair
        sup.snapshot = replace(sup.snapshot, certs=sup.certs.merged(sup.snapshot))
        if push:
            message = encode({"t": "certs", "certs": {app: [pair.cert, pair.key]}})
            for handle in list(sup.handles.values()):
                handle.channel.send_frame(message)

    # --- the helper ----------------------------------------------------------------------------------
    def spawn_helper(self) -> None:
        sup = self.sup
        if sup.stopping or self.settings is None or self.state_dir is None:
            return
        self.state_dir.mkdir(mode=0o700, parents=True, exist_ok=True)
        settings, state_dir = self.settings, self.state_dir
        self.helper.start(lambda sock: _helper_main(sock, settings, state_dir))

    def on_message(self, message: dict[str, Any]) -> None:
        sup, kind = self.sup, message.get("t")
        if kind == "challenge":
            name = str(message["name"])
            self.challenges[name] = message
            self.loaded[name] = set()
            frame = encode(message)
            for handle in list(sup.handles.values()):
                handle.channel.send_frame(frame)
        elif kind == "challenge_done":
            name = str(message["name"])
            self.challenges.pop(name, None)
            self.loaded.pop(name, None)
            frame = encode({"t": "challenge_done", "name": name})
            for handle in list(sup.handles.values()):
                handle.channel.send_frame(frame)
        elif kind == "issued":
            app = str(message["app"])
            self.in_flight = None
            self.failures.pop(app, None)
            sup.certs.orders["issued"] += 1
            if app not in self.wanted:
                return
            pair = CertPair(str(message["cert"]), str(message["key"]))
            self.adopt(app, pair, push=True)
            self.due[app] = time.monotonic() + max(renew_time(pair) - time.time(), 0.0)
            log_event(log, logging.INFO, "acme_issued", f"ACME: certificate issued for {app} "
                      f"({', '.join(self.wanted[app])})", app=app)
        elif kind == "failed":
            self.order_failed(str(message["app"]), str(message["error"]))

    def order_failed(self, app: str, error: str) -> None:
        self.in_flight = None
        self.sup.certs.orders["failed"] += 1
        failures = self.failures[app] = self.failures.get(app, 0) + 1
        delay = min(BACKOFF_FIRST * 2 ** (failures - 1), BACKOFF_MAX)
        if app in self.wanted:
            self.due[app] = time.monotonic() + delay
        log_event(log, logging.WARNING, "acme_failed",
                  f"ACME: the order for {app} failed ({error}); retrying in {delay:g} s", app=app, error=error)

    def send(self, message: dict[str, Any]) -> None:
        self.helper.send(message)

    def helper_gone(self) -> None:
        """The helper's channel broke (HelperProcess killed it): its challenges and order end here."""
        sup = self.sup
        for name in list(self.challenges):
            self.on_message({"t": "challenge_done", "name": name})
        if self.in_flight is not None:
            self.order_failed(self.in_flight, "the ACME helper exited")
        if sup.stopping:
            return
        log_event(log, logging.ERROR, "acme_helper_exit", f"the ACME helper exited; restarting it in "
                  f"{HELPER_RESPAWN:g} s")
        self.respawn_at = time.monotonic() + HELPER_RESPAWN


def _helper_main(sock: socket.socket, settings: Acme, state_dir: Path) -> int:
    """The helper child's first acts: default signals, nothing inherited but its channel, no capabilities.
    The `acme` library (and requests) is imported here, so neither the supervisor nor its workers carry it."""
    from control.acme_helper import run_helper
    from workers.privileges import PrivilegeError, drop_all_capabilities

    signal.set_wakeup_fd(-1)
    for signum in (signal.SIGHUP, signal.SIGUSR1, signal.SIGUSR2, signal.SIGINT):
        signal.signal(signum, signal.SIG_IGN)
    for signum in (signal.SIGTERM, signal.SIGCHLD, signal.SIGQUIT):
        signal.signal(signum, signal.SIG_DFL)
    keep = sock.fileno()
    os.closerange(3, keep)
    os.closerange(keep + 1, resource.getrlimit(resource.RLIMIT_NOFILE)[0])
    setproctitle.setproctitle("skiff: acme helper")
    try:
        drop_all_capabilities()
    except PrivilegeError as exc:
        log_event(log, logging.ERROR, "acme_helper_failed", f"the ACME helper cannot drop its capabilities: {exc}")
        return 1
    sock.setblocking(True)
    return run_helper(sock, settings, state_dir)
