"""The supervisor: the one wait point, and what it owns — every listening socket, the BPF steering, the serving
Snapshot and the shared counter table.

One selector over the signal wakeup socket, the inotify fd, the worker channels, the HTTP server and the config
source. Signal handlers only record the signal (Python writes its number to the wakeup socket); the loop logs,
forks, reaps and reloads, each callback behind an exception barrier. The work is split by seam: the workers'
lives in control/pool.py, reloads in control/reloads.py, hand-overs between supervisors in control/handover.py,
what people are told in control/status.py.
"""

from __future__ import annotations

import contextlib
import logging
import os
import selectors
import signal
import socket
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any, NoReturn

import setproctitle

from bpf.errors import SteeringError
from control.acme import AcmeManager
from control.certs import CertKeeper
from control.fdstore import FdStore, keep_for_restart, names_for
from control.handle import WorkerHandle, WorkerState
from control.handover import Handover, Takeover
from control.http import HttpError, HttpServer
from control.notify import Notifier
from control.pool import WorkerPool, kill
from control.reloads import Reloader, ReloadStatus
from control.sockets import ListenError, enable_request_migration, raise_fd_limit
from control.sources import ConfigSource, FileSource
from control.status import Observer
from control.steering import BpfListeners, Listeners, ReuseportListeners
from control.watcher import ConfigWatcher
from proxy.counters import CellMap, CounterTable
from proxy.logs import log_event, plural
from proxy.snapshot import Snapshot
from workers.worker import EXIT_CRASHED, WorkerOptions, worker_main

log = logging.getLogger("supervisor")

EXIT_OK = 0
EXIT_FORCED = 1
EXIT_WORKERS_CANNOT_BOOT = 2
EXIT_CANNOT_LISTEN = 3
EXIT_STEERING_FAILED = 4
EXIT_TAKEOVER_FAILED = 5

ACK_TIMEOUT = 5.0  # default: a worker that has not acknowledged a snapshot by then is hung (killed, respawned)
KILL_MARGIN = 5.0  # after the grace period, workers that still run are killed
ERROR_LOG_INTERVAL = 10.0  # at most one traceback per callback per this many seconds
TAKEOVER_WAIT = 10.0  # how long a committed successor waits for its predecessor to release the BPF lock


@dataclass(frozen=True, slots=True)
class Options:
    config_path: Path
    workers: int
    grace: float
    bind: str
    watch: bool = True
    steering: str = "reuseport"  # "reuseport" or "bpf" (auto is resolved before we start)
    instance: str = "default"
    bpf_object: Path = Path("bpf/skiff.bpf.o")
    bpf_pin_root: Path = Path("/sys/fs/bpf")
    metrics: str | None = None  # HOST:PORT for /metrics, /healthz, /status
    metrics_max_connections: int = 64  # concurrent HTTP connections; more are closed at once
    takeover: int | None = None  # pid of a running supervisor to take over from (zero-gap restart)
    ack_timeout: float = ACK_TIMEOUT  # seconds a worker has to acknowledge a snapshot before it counts as hung
    source: ConfigSource | None = None  # where the config comes from (default: the file at config_path)
    fd_store: bool = False  # keep the listening sockets in systemd's descriptor store (control/fdstore.py)


class Supervisor:
    def __init__(self, options: Options, snapshot: Snapshot) -> None:
        self.options = options
        # Connection counts, health verdicts and every counter the metrics show, shared by every worker (limits
        # hold across workers; nothing is pushed): created before any fork, so every worker maps the same pages.
        self.counters = CounterTable(options.workers)
        self.cells = CellMap().assign(snapshot.config, snapshot.version, snapshot.version, self.counters.is_zero)
        self.snapshot = replace(snapshot, cells=self.cells.cells)
        # systemd's descriptor store hook (control/fdstore.py): sockets kept across a restart are adopted.
        self.fdstore = FdStore.from_environment(options.fd_store)
        self.listeners: Listeners = (
            BpfListeners(options.bind, options.workers, options.instance, options.bpf_object, options.bpf_pin_root,
                         wait_for_lock=TAKEOVER_WAIT if options.takeover else 0.0, inherited=self.fdstore.inherited)
            if options.steering == "bpf" else ReuseportListeners(options.bind, options.workers, self.fdstore.inherited))
        self.pool = WorkerPool(self, options.workers)
        self.handles = self.pool.handles  # slot -> live worker (the pool's own dict, for the observers)
        self.reloads = Reloader(self)
        self.stop_signals = 0
        self.error_logged: dict[str, float] = {}  # callback name -> when its last traceback was logged
        self.selector = selectors.DefaultSelector()
        self.wake_r, self.wake_w = socket.socketpair()
        self.watcher: ConfigWatcher | None = None
        self.announced_ready = False
        self.stopping = False
        self.kill_at: float | None = None
        self.exit_code = EXIT_OK
        self.notifier = Notifier.from_environment()  # before any fork: workers must not inherit NOTIFY_SOCKET
        self.http: HttpServer | None = None
        self.observer = Observer(self)
        self.certs = CertKeeper()  # TLS certificates and ACME (control/certs.py, control/acme.py)
        self.acme = AcmeManager(self)
        # Config source hook: where the config comes from and when a reload is due (control/sources/).
        self.source: ConfigSource = options.source or FileSource(options.config_path)
        self.handover = Handover(self.selector, self.listeners)  # our side when a successor takes over from us
        self.takeover = None if options.takeover is None else Takeover(
            options.takeover, self.selector, self.listeners, self.takeover_failed)

    # --- start ---------------------------------------------------------------------------------------
    def run(self) -> int:
        raise_fd_limit()
        if self.takeover is not None and (problem := self.takeover.connect()):
            log_event(log, logging.ERROR, "takeover_failed", f"--takeover {self.takeover.pid}: {problem}",
                      error=problem)
            return EXIT_TAKEOVER_FAILED
        try:
            # A successor opens in standby: its predecessor keeps steering until the commit (control/handover.py).
            self.listeners.open(self.snapshot.config.ports, standby=self.takeover is not None and self.takeover.standby)
        except ListenError as exc:
            log_event(log, logging.ERROR, "listen_failed", str(exc), error=str(exc))
            return EXIT_CANNOT_LISTEN
        except SteeringError as exc:
            log_event(log, logging.ERROR, "steering_failed", str(exc), error=str(exc))
            return EXIT_STEERING_FAILED
        self.fdstore.sync(names_for(self.listeners))  # fdstore hook
        problem = enable_request_migration()
        if problem:
            log_event(log, logging.WARNING, "migrate_req_off",
                      f"{problem}; connections queued on a closing listener may be reset", error=problem)
        self.install_signals()
        if self.options.metrics:
            try:
                self.http = self.observer.serve(self.options.metrics, self.selector,
                                                self.options.metrics_max_connections)
            except HttpError as exc:
                log_event(log, logging.ERROR, "listen_failed", str(exc), error=str(exc))
                self.listeners.stop()
                return EXIT_CANNOT_LISTEN
        self.source.start(self)
        if self.options.watch and self.source.watches_file:
            try:
                self.watcher = ConfigWatcher(self.options.config_path)
                self.selector.register(self.watcher, selectors.EVENT_READ, self.on_config_event)
            except OSError as exc:
                log_event(log, logging.WARNING, "watch_failed",
                          f"cannot watch {self.options.config_path} for changes ({exc}); SIGHUP still reloads")
        log_event(log, logging.INFO, "start",
                  f"starting: config v{self.snapshot.version} ({self.snapshot.config.summary()}), "
                  f"{plural(self.options.workers, 'worker')}, listening on {self.options.bind}, "
                  f"{self.listeners.summary()}",
                  version=self.snapshot.version, workers=self.options.workers)
        for slot in range(self.options.workers):
            self.pool.spawn(slot)
        self.set_title()
        try:
            self.loop()
        finally:
            self.cleanup()
        return self.exit_code

    def install_signals(self) -> None:
        self.wake_w.setblocking(False)
        self.wake_r.setblocking(False)
        signal.set_wakeup_fd(self.wake_w.fileno(), warn_on_full_buffer=False)
        for signum in (signal.SIGTERM, signal.SIGINT, signal.SIGHUP, signal.SIGCHLD, signal.SIGUSR1, signal.SIGUSR2):
            signal.signal(signum, _record_only)
        self.selector.register(self.wake_r, selectors.EVENT_READ, self.on_signals)

    # --- the one wait point --------------------------------------------------------------------------
    def loop(self) -> None:
        while not (self.stopping and not self.handles):
            for key, _ in self.selector.select(self.next_timeout()):
                # An earlier callback of this same batch may have unregistered this one (a reaped worker's
                # channel): skip what is no longer registered.
                if self.selector.get_map().get(key.fd) is not key:
                    continue
                callback: Callable[[], None] = key.data
                self.guarded(callback)
            self.guarded(self.run_timers)

    def guarded(self, callback: Callable[[], None]) -> None:
        """The exception barrier around every callback: a bug in one costs that callback's work, never the loop."""
        try:
            callback()
        except Exception:
            name = getattr(callback, "__qualname__", repr(callback))
            now = time.monotonic()
            if now - self.error_logged.get(name, -ERROR_LOG_INTERVAL) >= ERROR_LOG_INTERVAL:
                self.error_logged[name] = now
                log.exception("supervisor: %s failed; carrying on", name, extra={"event": "supervisor_error"})

    def next_timeout(self) -> float | None:
        deadlines = [t for t in (self.kill_at, self.source.deadline(), self.acme.deadline()) if t is not None]
        deadlines += self.pool.deadlines() + self.reloads.deadlines()
        if self.http is not None and (deadline := self.http.next_deadline()) is not None:
            deadlines.append(deadline)
        if not deadlines:
            return None
        return max(0.0, min(deadlines) - time.monotonic())

    def run_timers(self) -> None:
        now = time.monotonic()
        if self.http is not None:
            self.http.expire(now)
        self.source.run_timers(now)
        self.acme.run_timers(now)
        self.pool.run_timers(now)
        self.reloads.run_timers(now)
        if self.kill_at is not None and self.kill_at <= now:
            self.kill_at = None
            for handle in self.handles.values():
                log_event(log, logging.WARNING, "worker_killed",
                          f"worker {handle.slot} (pid {handle.pid}) still running after the grace period; killing",
                          worker=handle.slot, pid=handle.pid)
                kill(handle.pid)

    # --- signals -------------------------------------------------------------------------------------
    def on_signals(self) -> None:
        try:
            received = self.wake_r.recv(4096)
        except BlockingIOError:
            return
        for signum in received:
            if signum == signal.SIGCHLD:
                self.pool.reap()
            elif signum == signal.SIGHUP:
                self.source.refresh()
                self.reload("SIGHUP")
            elif signum in (signal.SIGTERM, signal.SIGINT):
                self.on_stop_signal(signal.Signals(signum).name)
            elif signum == signal.SIGUSR1:
                log_event(log, logging.INFO, "status", self.observer.status_line())
            elif signum == signal.SIGUSR2:
                self.handover.invite()

    # --- what the worker pool asks of the supervisor ---------------------------------------------------
    def run_child(self, slot: int, channel: socket.socket) -> NoReturn:
        """The forked child's life: drop what it must not hold, then be the worker of `slot`."""
        code = EXIT_CRASHED
        try:
            self.forget_in_child(slot, channel)
            options = WorkerOptions(grace=self.options.grace, steered=self.listeners.steered, counters=self.counters)
            code = worker_main(slot, channel, self.listeners.for_slot(slot), self.snapshot, options)
        except BaseException:
            log.exception("worker %d failed to start", slot, extra={"event": "worker_crashed", "worker": slot})
        finally:
            logging.shutdown()
            os._exit(code)

    def forget_in_child(self, slot: int, child_end: socket.socket) -> None:
        """Drop what the child inherited but must not hold: other slots' sockets, channels, the wait point."""
        signal.set_wakeup_fd(-1)
        self.selector.close()  # closing our copy only; never unregister here (the epoll set is shared)
        if self.http is not None:
            self.http.abandon()
        self.notifier.close()
        self.source.close_in_child()
        self.acme.close_in_child()
        self.wake_r.close()
        self.wake_w.close()
        if self.watcher is not None:
            self.watcher.close()
        self.pool.close_in_child()
        self.listeners.close_others_in_child(slot)
        self.handover.forget_in_child()
        if self.takeover is not None:
            self.takeover.forget_in_child()
        keep = {0, 1, 2, child_end.fileno(), *(s.fileno() for s in self.listeners.for_slot(slot).values())}
        # Whatever else was inherited (BPF map, link and lock descriptors, library fds) is not the worker's.
        for name in os.listdir("/proc/self/fd"):
            fd = int(name)
            if fd not in keep:
                with contextlib.suppress(OSError):
                    os.close(fd)

    def worker_ready(self, handle: WorkerHandle) -> None:
        if not self.announced_ready and self.pool.all_ready():
            self.announced_ready = True
            config = self.snapshot.config
            ports = sorted(config.ports)
            shown = ", ".join(map(str, ports[:12])) + (f" and {len(ports) - 12:,} more" if len(ports) > 12 else "")
            log_event(log, logging.INFO, "ready",
                      f"ready: config v{self.snapshot.version} ({config.summary()}) served by "
                      f"{plural(len(self.handles), 'worker')} on {self.options.bind} ports {shown}",
                      version=self.snapshot.version, workers=len(self.handles), ports=len(ports))
            self.notifier.ready(f"serving config v{self.snapshot.version} ({config.summary()})")
            if self.takeover is not None:
                self.takeover.workers_ready()
        self.reloads.check_pending()

    def worker_message(self, handle: WorkerHandle, message: dict[str, Any]) -> None:
        """A message the pool does not handle itself."""
        if message.get("t") == "challenge_loaded":
            self.acme.worker_loaded(handle, message)

    def worker_gone(self, handle: WorkerHandle) -> None:
        # Its connections died with it: their counts must not hold other workers' clients at a limit until the
        # slot is respawned (up to the boot backoff later). Its counters move to the retired row.
        self.counters.retire(handle.slot, self.cells.fresh)

    def cannot_boot(self, message: str, slot: int) -> None:
        log_event(log, logging.CRITICAL, "workers_cannot_boot", message, worker=slot)
        self.exit_code = EXIT_WORKERS_CANNOT_BOOT
        self.begin_stop("workers cannot boot")

    # --- reload --------------------------------------------------------------------------------------
    def on_config_event(self) -> None:
        assert self.watcher is not None
        if self.watcher.read():
            self.reloads.file_changed()

    def reload(self, trigger: str) -> None:
        self.reloads.reload(trigger)

    @property
    def reload_status(self) -> ReloadStatus:
        return self.reloads.status

    @property
    def reload_history(self) -> Sequence[tuple[ReloadStatus, int]]:
        """The last reloads' outcomes with the version served after each (the status page shows them)."""
        return self.reloads.history

    @property
    def worker_restarts(self) -> int:
        return self.pool.restarts

    # --- stop ----------------------------------------------------------------------------------------
    def on_stop_signal(self, name: str) -> None:
        """The first SIGTERM/SIGINT drains; only a repeated signal forces."""
        self.stop_signals += 1
        if self.stop_signals > 1:
            log_event(log, logging.WARNING, "forced_stop", f"{name} again: killing workers now")
            self.pool.kill_all()
            self.exit_code = self.exit_code or EXIT_FORCED
            return
        self.begin_stop(name)

    def begin_stop(self, reason: str) -> None:
        if self.stopping:
            return
        self.stopping = True
        self.pool.stop_respawning()
        self.notifier.stopping()
        active = self.active_connections()
        log_event(log, logging.INFO, "stopping",
                  f"{reason}: stopping; draining connections for up to {self.options.grace:g} s"
                  + (f" ({active} active at last count)" if active else ""))
        for handle in list(self.handles.values()):
            if handle.state is not WorkerState.EXITED:
                handle.move_to(WorkerState.DRAINING)
                handle.channel.send({"t": "drain"})
        keep_for_restart(self.fdstore, self.listeners)  # fdstore hook: a systemd restart keeps sockets and pins
        # New connections are refused from here on: the program is detached (bpf) and our copies of the
        # listeners go; each worker closes its own once it has taken over what the kernel already queued.
        self.listeners.stop()
        self.kill_at = time.monotonic() + self.options.grace + KILL_MARGIN

    def takeover_failed(self, reason: str) -> None:
        self.exit_code = EXIT_TAKEOVER_FAILED
        self.begin_stop(reason)

    def cleanup(self) -> None:
        if self.http is not None:
            self.http.close()
        self.handover.close()
        self.notifier.close()
        self.fdstore.close()
        self.source.close()
        self.acme.close()
        self.listeners.stop()
        if self.watcher is not None:
            self.watcher.close()
        signal.set_wakeup_fd(-1)
        log_event(log, logging.INFO, "stopped", f"stopped (exit code {self.exit_code})")

    def active_connections(self) -> int:
        return sum(self.counters.total(c) for k, c in self.cells.cells.items() if "\n" not in k)

    def set_title(self) -> None:
        setproctitle.setproctitle(
            f"skiff: supervisor (config v{self.snapshot.version}, {plural(self.options.workers, 'worker')}) "
            f"instance {self.options.instance}")


def _record_only(signum: int, frame: object) -> None:
    """The wakeup socket carries the signal number to the loop; nothing else happens in the handler."""
