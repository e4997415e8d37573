"""The etcd config source, supervisor side: forks the helper, turns its documents into reloads, keeps the cache.

The supervisor's loop stays a selector with no threads: all etcd I/O happens in the helper process
(`control/sources/etcd_helper.py`), which sends every config document at one revision after each coalesced
burst. Here they are assembled (`proxy.cluster.assemble`: invalid or conflicting documents skipped, their last
good version kept), handed to the same reload path as a file, and, once every worker applied them, persisted to
`--config-cache` and reported to the node's record in etcd.
"""

from __future__ import annotations

import contextlib
import logging
import os
import signal
import socket
import time
from collections.abc import Iterator
from pathlib import Path
from typing import TYPE_CHECKING, Any

import orjson
import setproctitle
from prometheus_client import CollectorRegistry, generate_latest
from prometheus_client.core import GaugeMetricFamily, HistogramMetricFamily, Metric

from control.handle import WorkerState
from control.helper import HelperProcess
from control.sources.etcdapi import Cluster, EtcdError, unb64
from proxy.cluster import Assembly, Document, EtcdUrl, assemble
from proxy.config import App, Config, parse_document
from proxy.errors import ConfigError
from proxy.logs import log_event
from proxy.snapshot import digest_of

if TYPE_CHECKING:
    from control.arbiter import Supervisor

log = logging.getLogger("supervisor")

HELPER_RESPAWN = 1.0
REPORT_INTERVAL = 2.0  # workers come and go between config changes; the helper writes only what changed
APPLY_BUCKETS = (0.05, 0.1, 0.15, 0.2, 0.3, 0.5, 0.75, 1.0, 2.0, 5.0)


def initial_config(url: EtcdUrl, cache: Path | None) -> tuple[Assembly, int, str]:
    """Before the supervisor starts: (assembly, revision, where from). etcd first; when it does not answer, the
    cache. A ConfigError line when neither has a config."""
    cached = read_cache(cache) if cache is not None else None
    last_good = {a.name: a for a in cached[0].apps} if cached else {}
    try:
        listing = Cluster(url.endpoints).call("list_prefix", url.prefix + "/")
    except EtcdError as exc:
        if cached is None:
            where = f" and no cache at {cache}" if cache is not None else " (and no --config-cache)"
            raise ConfigError("", f"{url}: {exc}{where}") from None
        return Assembly(cached[0], {}), cached[1], f"the cache {cache} (etcd: {exc})"
    return assemble(url, listing.documents, last_good), listing.revision, f"etcd at revision {listing.revision}"


def read_cache(path: Path) -> tuple[Config, int] | None:
    try:
        document = orjson.loads(path.read_bytes())
        return parse_document(document["config"]), int(document["revision"])
    except (OSError, orjson.JSONDecodeError, KeyError, TypeError, ValueError, ConfigError):
        return None


def write_cache(path: Path, config: Config, revision: int, cluster_id: str) -> None:
    """Atomically (write, fsync, rename): a crash leaves the old cache or the new one, never half of one."""
    tmp = path.with_name(f".{path.name}.tmp")
    data = orjson.dumps({"revision": revision, "cluster_id": cluster_id, "config": config.to_document()})
    with open(tmp, "wb") as f:
        f.write(data)
        f.flush()
        os.fsync(f.fileno())
    os.replace(tmp, path)


class EtcdSource:
    watches_file = False

    def __init__(self, url: EtcdUrl, node_id: str, cache: Path | None, first: Assembly, revision: int) -> None:
        self.url, self.node_id, self.cache = url, node_id, cache
        self.config = first.config
        self.skipped: dict[str, str] = {}
        self.pending_revision = revision
        self.applied_revision = revision
        self.cluster_id = ""
        self.up = False
        self.detail = "starting"
        self.waiting: dict[int, tuple[int, float]] = {}  # snapshot version -> (revision, first event)
        self.apply_seconds: list[int] = [0] * (len(APPLY_BUCKETS) + 1)
        self.apply_sum = 0.0
        self.supervisor: Supervisor | None = None
        self.helper: HelperProcess | None = None
        self.respawn_at: float | None = None
        self.report_at: float | None = None
        self.note_skipped(first.skipped)
        self.registry = CollectorRegistry(auto_describe=False)
        self.registry.register(SourceCollector(self))

    # --- the ConfigSource interface ------------------------------------------------------------------
    def load(self) -> Config:
        return self.config

    def revision(self) -> int:
        return self.pending_revision

    def start(self, supervisor: Supervisor) -> None:
        self.supervisor = supervisor
        self.spawn_helper()

    def refresh(self) -> None:
        self.send({"t": "relist"})

    def metrics_text(self) -> bytes:
        """A handful of families: rendered on the loop when a /metrics render starts, appended by the child."""
        return generate_latest(self.registry)

    def applied(self, version: int) -> None:
        revision, first_event = self.waiting.pop(version, (None, 0.0))
        for older in [v for v in self.waiting if v < version]:
            del self.waiting[older]  # superseded before every worker had it
        if revision is None:
            return
        self.observe(time.monotonic() - first_event)
        self.served(revision)

    def deadline(self) -> float | None:
        return min((t for t in (self.respawn_at, self.report_at) if t is not None), default=None)

    def run_timers(self, now: float) -> None:
        if self.respawn_at is not None and self.respawn_at <= now:
            self.respawn_at = None
            self.spawn_helper()
        if self.report_at is not None and self.report_at <= now:
            self.report()

    def status(self) -> dict[str, Any]:
        return {"kind": "etcd", "url": str(self.url), "node": self.node_id, "up": self.up, "detail": self.detail,
                "cluster_id": self.cluster_id, "revision": self.applied_revision,
                "pending_revision": self.pending_revision, "skipped": dict(self.skipped)}

    def close_in_child(self) -> None:
        if self.helper is not None:
            self.helper.close_in_child()

    def close(self) -> None:
        if self.helper is not None:
            self.helper.close()  # the helper revokes the node's lease and exits

    # --- the helper ----------------------------------------------------------------------------------
    def spawn_helper(self) -> None:
        sup = self.supervisor
        assert sup is not None
        if sup.stopping:
            return
        if self.helper is None:
            self.helper = HelperProcess("etcd", sup.selector, self.on_message, self.helper_gone)
        url, node_id = self.url, self.node_id
        self.helper.start(lambda sock: run_helper(url, sock, node_id))
        self.report()

    def on_message(self, message: dict[str, Any]) -> None:
        if message.get("t") == "state":
            self.on_state(message)
        elif message.get("t") == "source":
            self.up, self.detail = bool(message["up"]), str(message["detail"])
            self.report()

    def helper_gone(self) -> None:
        sup = self.supervisor
        assert sup is not None
        if sup.stopping:
            return
        self.up, self.detail = False, "the etcd helper exited"
        log_event(log, logging.ERROR, "etcd_helper_exit",
                  f"the etcd helper exited; serving the last good config, restarting it in {HELPER_RESPAWN:g} s")
        self.respawn_at = time.monotonic() + HELPER_RESPAWN

    def send(self, message: dict[str, Any]) -> None:
        # A helper that does not read (stopped?) drops a report: the next change sends another.
        if self.helper is not None:
            self.helper.send(message, droppable=True)

    def report(self) -> None:
        sup = self.supervisor
        if sup is None:
            return
        self.report_at = None if sup.stopping else time.monotonic() + REPORT_INTERVAL
        ready = sum(1 for h in sup.handles.values()
                    if h.state is WorkerState.READY and h.acked_version == sup.snapshot.version)
        status = sup.reload_status
        self.send({"t": "report", "applied_revision": self.applied_revision, "version": sup.snapshot.version,
                   "workers_ready": ready, "workers": sup.options.workers, "steering": sup.options.steering,
                   "bind": sup.options.bind, "etcd_up": self.up,
                   "last_error": (status.error if not status.ok else None) or (None if self.up else self.detail),
                   "skipped": sorted(self.skipped)})

    # --- documents → reload --------------------------------------------------------------------------
    def on_state(self, message: dict[str, Any]) -> None:
        sup = self.supervisor
        assert sup is not None
        documents = {k: Document(unb64(v), int(r)) for k, (v, r) in message["documents"].items()}
        # The last good version of an app is the one serving now (not one a failed reload never started).
        last_good: dict[str, App] = {a.name: a for a in sup.snapshot.config.apps}
        assembly = assemble(self.url, documents, last_good)
        self.note_skipped(assembly.skipped)
        self.config, self.cluster_id = assembly.config, str(message["cluster_id"])
        self.pending_revision = revision = int(message["revision"])
        if digest_of(assembly.config) == sup.snapshot.digest:  # identical content: no new snapshot
            version = sup.snapshot.version
            if version in self.waiting:  # still on its way to the workers: it will serve this revision too
                self.waiting[version] = (revision, self.waiting[version][1])
            else:
                self.served(revision)
            return
        before = sup.snapshot.version
        sup.reload(f"etcd revision {revision}")
        if sup.snapshot.version != before:
            self.waiting[sup.snapshot.version] = (revision, float(message["first_event"]))
        self.report()

    def served(self, revision: int) -> None:
        self.applied_revision = revision  # a new etcd cluster may start lower: what we serve is what we say
        if self.cache is not None and self.supervisor is not None:
            try:
                write_cache(self.cache, self.supervisor.snapshot.config, revision, self.cluster_id)
            except OSError as exc:
                log_event(log, logging.WARNING, "cache_failed", f"cannot write the config cache {self.cache}: {exc}")
        self.report()

    def note_skipped(self, skipped: dict[str, str]) -> None:
        """One log line per skipped key and reason (not per snapshot), and one when a key is fine again."""
        for key, reason in sorted(skipped.items()):
            if self.skipped.get(key) != reason:
                log_event(log, logging.ERROR, "document_skipped",
                          f"{reason} (skipped; its last good version, if any, keeps serving)", key=key, error=reason)
        for key in sorted(set(self.skipped) - set(skipped)):
            log_event(log, logging.INFO, "document_ok", f"{key}: no longer skipped", key=key)
        self.skipped = dict(skipped)

    def observe(self, seconds: float) -> None:
        self.apply_sum += seconds
        for i, bound in enumerate(APPLY_BUCKETS):
            if seconds <= bound:
                self.apply_seconds[i] += 1
                return
        self.apply_seconds[-1] += 1


def run_helper(url: EtcdUrl, channel: socket.socket, node_id: str) -> int:
    """In the forked child: shed the supervisor's signal handling and descriptors, then run the helper."""
    from control.sources.etcd_helper import helper_main

    signal.set_wakeup_fd(-1)
    for signum in (signal.SIGHUP, signal.SIGCHLD, signal.SIGUSR1, signal.SIGUSR2):
        signal.signal(signum, signal.SIG_DFL)
    # SIGTERM/SIGINT to the process group stop the supervisor, which then closes our channel: we revoke the
    # lease and exit on EOF, so those two are ignored here.
    signal.signal(signal.SIGTERM, signal.SIG_IGN)
    signal.signal(signal.SIGINT, signal.SIG_IGN)
    setproctitle.setproctitle(f"skiff: etcd helper ({node_id})")
    keep = {0, 1, 2, channel.fileno()}
    for name in os.listdir("/proc/self/fd"):
        if int(name) not in keep:
            with contextlib.suppress(OSError):
                os.close(int(name))
    return helper_main(url, channel, node_id)


class SourceCollector:
    """skiff_config_source_* and the apply latency, next to the supervisor's own metrics."""

    def __init__(self, source: EtcdSource) -> None:
        self.source = source

    def collect(self) -> Iterator[Metric]:
        s = self.source
        yield GaugeMetricFamily("skiff_config_source_up", "1 while the etcd watch is connected", value=int(s.up))
        yield GaugeMetricFamily("skiff_config_source_revision", "The etcd revision every worker serves",
                                value=s.applied_revision)
        yield GaugeMetricFamily("skiff_config_documents_skipped", "Documents skipped as invalid or conflicting",
                                value=len(s.skipped))
        cumulative, buckets = 0, []
        for bound, n in zip((*map(str, APPLY_BUCKETS), "+Inf"), s.apply_seconds, strict=True):
            cumulative += n
            buckets.append((bound, cumulative))
        yield HistogramMetricFamily("skiff_config_apply_seconds",
                                    "From the etcd watch event to every worker applying it",
                                    buckets=buckets, sum_value=s.apply_sum)
