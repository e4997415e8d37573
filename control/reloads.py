"""Reloads: from a trigger (file change, SIGHUP, a config source) to every worker serving the new snapshot.

    source.load() ──validate──▶ next_snapshot ──plan(old, new)──▶ cells, new sockets first
        ──▶ frames to every worker ──▶ acknowledgements ──▶ BPF port map, READY=1

An invalid config never replaces the serving snapshot: one line, the old version keeps serving, and the
failure clears as soon as the source is back to the serving content. systemd's reload waits for READY=1, so
every SIGHUP is answered with RELOADING=1 then READY=1 whatever it finds. A worker that has not acknowledged a
snapshot within the acknowledgement deadline is hung: it is killed and respawned on the current snapshot.
"""

from __future__ import annotations

import logging
import time
from collections import deque
from dataclasses import dataclass, field, replace
from typing import TYPE_CHECKING

from control.fdstore import names_for
from control.handle import WorkerHandle, WorkerState
from control.sockets import ListenError
from proxy.errors import ConfigError
from proxy.framing import encode
from proxy.logs import log_event
from proxy.plan import Plan, plan
from proxy.snapshot import next_snapshot

if TYPE_CHECKING:
    from control.arbiter import Supervisor

log = logging.getLogger("supervisor")

RELOAD_QUIET = 0.1  # seconds without file events before a reload
RELOAD_MAX_DELAY = 1.0  # a steady stream of events still reloads this often
FDS_PER_MESSAGE = 250  # under the kernel's SCM_MAX_FD (253)


@dataclass(slots=True)
class PendingReload:
    version: int
    started: float
    plan: Plan
    ports: frozenset[int]


@dataclass(slots=True)
class ReloadStatus:
    ok: bool = True
    at: float = field(default_factory=time.time)
    error: str | None = None
    reloads: int = 0
    failures: int = 0


class Reloader:
    def __init__(self, supervisor: Supervisor) -> None:
        self.supervisor = supervisor
        self.pending: list[PendingReload] = []
        self._status = ReloadStatus()
        self.history: deque[tuple[ReloadStatus, int]] = deque(maxlen=10)  # (outcome, version served after it)
        self.due: float | None = None  # a file change waits for a quiet period...
        self.first_event: float | None = None  # ...but not forever

    @property
    def status(self) -> ReloadStatus:
        return self._status

    @status.setter
    def status(self, status: ReloadStatus) -> None:
        self._status = status
        self.history.append((status, self.supervisor.snapshot.version))

    # --- triggers ------------------------------------------------------------------------------------
    def file_changed(self) -> None:
        now = time.monotonic()
        if self.first_event is None:
            self.first_event = now
        self.due = min(now + RELOAD_QUIET, self.first_event + RELOAD_MAX_DELAY)

    def deadlines(self) -> list[float]:
        timeout = self.supervisor.options.ack_timeout
        return [p.started + timeout for p in self.pending] + ([self.due] if self.due is not None else [])

    def run_timers(self, now: float) -> None:
        if self.due is not None and self.due <= now:
            self.due = self.first_event = None
            self.reload("file change")
        for pending in list(self.pending):
            if pending.started + self.supervisor.options.ack_timeout <= now:
                self.ack_deadline_passed(pending)

    # --- the reload ----------------------------------------------------------------------------------
    def reload(self, trigger: str) -> None:
        s = self.supervisor
        if s.stopping:
            return
        announce = trigger == "SIGHUP" and s.announced_ready
        if announce:
            s.notifier.reloading()
        current = s.snapshot
        try:
            config = s.source.load()
            new = next_snapshot(current, config)  # reads the certificate files the config names
        except ConfigError as exc:
            self.failed(trigger, str(exc))
            if announce:
                self.ready_again()
            return
        if new is None:
            level = logging.INFO if trigger == "SIGHUP" else logging.DEBUG
            log_event(log, level, "reload_unchanged", f"{trigger}: config unchanged, still v{current.version}",
                      version=current.version)
            if not self.status.ok:
                # The source is back to what we serve: the failure is over (an alert on it must resolve).
                self.status = replace(self.status, ok=True, at=time.time(), error=None)
                log_event(log, logging.INFO, "reload_recovered",
                          f"{trigger}: the file is back to the serving config v{current.version}; "
                          "last reload ok again", version=current.version)
            if announce:
                self.ready_again()
            return
        if not announce:
            s.notifier.reloading()
        change = plan(current.config, config)
        settled = min((h.acked_version for h in s.handles.values()), default=current.version)
        try:
            cells = s.cells.assign(config, new.version, settled, s.counters.is_zero)
            added = s.listeners.prepare(change.added_ports)  # Sockets exist before any worker is told.
        except (ConfigError, ListenError) as exc:
            self.failed(trigger, str(exc))
            self.ready_again()
            return
        handed = cells.new_cells(s.cells)
        # A reused cell counts from zero: a new name never inherits old totals (cells never handed out are zero).
        s.counters.reset([c for c in handed if c < s.cells.fresh])
        for cell in handed:
            s.counters.set_health(cell, 0)  # a reused cell starts in rotation, like any new target
        s.cells = cells
        new = replace(new, cells=cells.cells, revision=s.source.revision())
        new = replace(new, certs=s.certs.merged(new))  # with the certificates ACME issued
        s.snapshot = new
        self.pending.append(PendingReload(new.version, time.monotonic(), change, config.ports))
        frame = encode({"t": "snapshot", "snapshot": new.to_wire()})
        for handle in list(s.handles.values()):
            self.send_snapshot(handle, added, frame)
        # reuseport: our copies of removed ports go now; each worker closes its own after draining its queue.
        # bpf: the port map follows once every worker knows the new routes (check_pending).
        s.listeners.told(change.removed_ports)
        s.fdstore.sync(names_for(s.listeners))  # systemd's descriptor store follows the sockets
        self.status = ReloadStatus(True, time.time(), None, self.status.reloads + 1, self.status.failures)
        s.set_title()
        log_event(log, logging.DEBUG, "reload_sent", f"{trigger}: config v{new.version} sent ({change.summary()})",
                  version=new.version)
        self.check_pending()

    def send_snapshot(self, handle: WorkerHandle, added: list[int], frame: bytes) -> None:
        """The new ports' sockets for this worker's slot, then the snapshot (encoded once for every worker)."""
        for start in range(0, len(added), FDS_PER_MESSAGE):
            chunk = added[start:start + FDS_PER_MESSAGE]
            fds = self.supervisor.listeners.descriptors(handle.slot, chunk)
            if not handle.channel.send({"t": "sockets", "ports": chunk}, fds):
                return
        handle.channel.send_frame(frame)

    def failed(self, trigger: str, error: str) -> None:
        self.status = ReloadStatus(False, time.time(), error, self.status.reloads, self.status.failures + 1)
        log_event(log, logging.ERROR, "reload_failed",
                  f"{trigger}: reload failed, still serving config v{self.supervisor.snapshot.version}: {error}",
                  version=self.supervisor.snapshot.version, error=error)

    def ready_again(self) -> None:
        """READY=1 after a reload that changed nothing; a reload still waiting for acks sends its own."""
        if not self.pending:
            s = self.supervisor
            failed = "" if self.status.ok else "; last reload failed"
            s.notifier.ready(f"serving config v{s.snapshot.version} ({s.snapshot.config.summary()}){failed}")

    # --- acknowledgements ----------------------------------------------------------------------------
    def check_pending(self) -> None:
        s = self.supervisor
        for pending in list(self.pending):
            # A worker still starting counts once it is ready: it reports the version it serves then.
            live = list(s.handles.values())
            if all(h.acked_version >= pending.version for h in live):
                self.pending.remove(pending)
                s.listeners.acknowledged(pending.ports)
                s.source.applied(pending.version)
                ms = (time.monotonic() - pending.started) * 1000
                log_event(log, logging.INFO, "reload_applied",
                          f"config v{pending.version} applied by {len(live)}/{s.options.workers} workers in "
                          f"{ms:.0f} ms ({pending.plan.summary()})", version=pending.version, ms=round(ms, 1))
                self.ready_again()

    def ack_deadline_passed(self, pending: PendingReload) -> None:
        """Workers that have not acknowledged a snapshot in time are hung: kill them (the supervisor keeps their
        sockets, so what the kernel queued waits for the respawned worker, which starts on the current config)."""
        s = self.supervisor
        self.pending.remove(pending)
        for handle in [h for h in s.handles.values()
                       if h.state is WorkerState.READY and h.acked_version < pending.version]:
            s.pool.hung(handle, f"did not acknowledge config v{pending.version} within {s.options.ack_timeout:g} s")
        s.listeners.acknowledged(pending.ports)
        self.ready_again()
