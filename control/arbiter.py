"""The supervisor: forks and watches the workers, owns the listening sockets, applies reloads.

One class, one wait point: a selector over the signal wakeup socket, the inotify fd and the worker channels.
Signal handlers only record the signal (Python writes its number to the wakeup socket); the loop logs, forks,
reaps and reloads.
"""

from __future__ import annotations

import contextlib
import errno
import logging
import os
import selectors
import signal
import socket
import time
from collections.abc import Callable
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any

import setproctitle

from bpf.errors import SteeringError
from control.acme import AcmeManager
from control.certs import CertKeeper
from control.handle import WorkerHandle, WorkerState
from control.handover import Handover, Takeover
from control.http import HttpError, HttpServer
from control.notify import Notifier
from control.sockets import ListenError, enable_request_migration
from control.sources import ConfigSource, FileSource
from control.status import Observer
from control.steering import BpfListeners, Listeners, ReuseportListeners
from control.watcher import ConfigWatcher
from proxy import failpoints
from proxy.counters import CellMap, CounterTable
from proxy.errors import ConfigError
from proxy.framing import FramingError, encode
from proxy.logs import log_event
from proxy.plan import Plan, plan
from proxy.snapshot import Snapshot, next_snapshot
from workers.channel import write_some
from workers.worker import EXIT_CRASHED, WorkerOptions, worker_main

log = logging.getLogger("supervisor")

EXIT_OK = 0
EXIT_FORCED = 1
EXIT_WORKERS_CANNOT_BOOT = 2
EXIT_CANNOT_LISTEN = 3
EXIT_STEERING_FAILED = 4
EXIT_TAKEOVER_FAILED = 5

MAX_BOOT_FAILURES = 5
BOOT_BACKOFF_FIRST = 0.1
BOOT_BACKOFF_MAX = 5.0
QUICK_CRASH = 10.0  # a ready worker that exits sooner than this after its start counts towards backoff
RELOAD_QUIET = 0.1  # seconds without file events before a reload
RELOAD_MAX_DELAY = 1.0  # a steady stream of events still reloads this often
ACK_TIMEOUT = 5.0  # default: a worker that has not acknowledged a snapshot by then is hung (killed, respawned)
PING_INTERVAL = 1.0  # liveness: every ready worker is pinged this often...
PING_MISSES = 3  # ...and one that leaves this many pings in a row unanswered is hung
KILL_MARGIN = 5.0  # after the grace period, workers that still run are killed
FDS_PER_MESSAGE = 250  # under the kernel's SCM_MAX_FD (253)
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


class Supervisor:
    def __init__(self, options: Options, snapshot: Snapshot) -> None:
        self.options = options
        # Connection counts, health verdicts and every counter the metrics show, shared by every worker (limits
        # hold across workers; nothing is pushed): created before any fork, so every worker maps the same pages.
        self.counters = CounterTable(options.workers)
        self.cells = CellMap().assign(snapshot.config, snapshot.version, snapshot.version, self.counters.is_zero)
        self.snapshot = replace(snapshot, cells=self.cells.cells)
        self.listeners: Listeners = (
            BpfListeners(options.bind, options.workers, options.instance, options.bpf_object, options.bpf_pin_root,
                         wait_for_lock=TAKEOVER_WAIT if options.takeover else 0.0)
            if options.steering == "bpf" else ReuseportListeners(options.bind, options.workers))
        self.handles: dict[int, WorkerHandle] = {}  # slot -> live worker
        self.by_pid: dict[int, WorkerHandle] = {}
        self.boot_failures = [0] * options.workers
        self.quick_crashes = [0] * options.workers  # exits soon after start, in a row, per slot
        self.respawn_at: dict[int, float] = {}
        self.spawn_failures = [0] * options.workers  # fork/socketpair failures in a row, per slot
        self.next_ping: float | None = None
        self.stop_signals = 0
        self.error_logged: dict[str, float] = {}  # callback name -> when its last traceback was logged
        self.selector = selectors.DefaultSelector()
        self.wake_r, self.wake_w = socket.socketpair()
        self.watcher: ConfigWatcher | None = None
        self.reload_due: float | None = None
        self.reload_first_event: float | None = None
        self.pending: list[PendingReload] = []
        self.reload_status = ReloadStatus()
        self.announced_ready = False
        self.stopping = False
        self.kill_at: float | None = None
        self.exit_code = EXIT_OK
        self.worker_restarts = 0
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
                  f"{self.options.workers} workers, listening on {self.options.bind}, {self.listeners.summary()}",
                  version=self.snapshot.version, workers=self.options.workers)
        for slot in range(self.options.workers):
            self.spawn(slot)
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
        while self.handles or not self.stopping or self.respawn_at:
            if self.stopping and not self.handles:
                break
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
        deadlines = [t for t in (self.reload_due, self.kill_at, self.next_ping, self.source.deadline(),
                                 self.acme.deadline()) if t is not None]
        deadlines += self.respawn_at.values()
        deadlines += [p.started + self.options.ack_timeout for p in self.pending]
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
        for slot, due in list(self.respawn_at.items()):
            if due <= now and not self.stopping:
                del self.respawn_at[slot]
                self.spawn(slot)
        if self.reload_due is not None and self.reload_due <= now:
            self.reload_due = self.reload_first_event = None
            self.reload("file change")
        for pending in list(self.pending):
            if pending.started + self.options.ack_timeout <= now:
                self.ack_deadline_passed(pending)
        if self.next_ping is not None and self.next_ping <= now:
            self.ping_workers()
        if self.kill_at is not None and self.kill_at <= now:
            self.kill_at = None
            for handle in self.handles.values():
                log_event(log, logging.WARNING, "worker_killed",
                          f"worker {handle.slot} (pid {handle.pid}) still running after the grace period; killing",
                          worker=handle.slot, pid=handle.pid)
                _kill(handle.pid)

    def ack_deadline_passed(self, pending: PendingReload) -> None:
        """Workers that have not acknowledged a snapshot in time are hung: kill them (the supervisor keeps their
        sockets, so what the kernel queued waits for the respawned worker, which starts on the current config)."""
        self.pending.remove(pending)
        laggards = [h for h in self.handles.values()
                    if h.state is WorkerState.READY and h.acked_version < pending.version]
        for handle in laggards:
            log_event(log, logging.ERROR, "worker_hung",
                      f"worker {handle.slot} (pid {handle.pid}) did not acknowledge config v{pending.version} within "
                      f"{self.options.ack_timeout:g} s; killing it", worker=handle.slot, pid=handle.pid,
                      version=pending.version)
            _kill(handle.pid)
        self.listeners.acknowledged(pending.ports)
        if not self.pending:
            self.notifier.ready(f"serving config v{self.snapshot.version} ({self.snapshot.config.summary()})")

    def ping_workers(self) -> None:
        """Liveness without a reload: a ready worker that leaves PING_MISSES pings unanswered is hung."""
        self.next_ping = time.monotonic() + PING_INTERVAL
        for handle in list(self.handles.values()):
            if handle.state is not WorkerState.READY:
                continue
            if handle.unanswered_pings >= PING_MISSES:
                log_event(log, logging.ERROR, "worker_hung",
                          f"worker {handle.slot} (pid {handle.pid}) answered none of the last {PING_MISSES} pings "
                          f"({PING_MISSES * PING_INTERVAL:g} s); killing it", worker=handle.slot, pid=handle.pid)
                _kill(handle.pid)
                continue
            handle.unanswered_pings += 1
            self.send(handle, {"t": "ping"}, coalesce="ping")

    # --- signals -------------------------------------------------------------------------------------
    def on_signals(self) -> None:
        try:
            received = self.wake_r.recv(4096)
        except BlockingIOError:
            return
        for signum in received:
            if signum == signal.SIGCHLD:
                self.reap()
            elif signum == signal.SIGHUP:
                self.source.refresh()
                self.reload("SIGHUP")
            elif signum in (signal.SIGTERM, signal.SIGINT):
                self.on_stop_signal(signal.Signals(signum).name)
            elif signum == signal.SIGUSR1:
                log_event(log, logging.INFO, "status", self.observer.status_line())
            elif signum == signal.SIGUSR2:
                self.handover.invite()

    # --- workers -------------------------------------------------------------------------------------
    def spawn(self, slot: int) -> None:
        """Fork the worker of `slot`; a failed fork (EAGAIN, EMFILE, ENOMEM) is retried with backoff."""
        try:
            if failpoints.active("supervisor-fork"):
                raise OSError(errno.EAGAIN, "failpoint supervisor-fork: fork fails on purpose")
            parent_end, child_end = socket.socketpair()
            try:
                pid = os.fork()
            except OSError:
                parent_end.close()
                child_end.close()
                raise
        except OSError as exc:
            failures = self.spawn_failures[slot] = self.spawn_failures[slot] + 1
            delay = min(BOOT_BACKOFF_FIRST * 2 ** (failures - 1), BOOT_BACKOFF_MAX)
            log_event(log, logging.ERROR, "spawn_failed",
                      f"cannot start worker {slot}: {exc.strerror or exc}; retrying in {delay:.1f} s",
                      worker=slot, error=str(exc))
            self.respawn_at[slot] = time.monotonic() + delay
            return
        self.spawn_failures[slot] = 0
        if pid == 0:  # the child
            code = EXIT_CRASHED
            try:
                parent_end.close()
                self.forget_in_child(slot, child_end)
                options = WorkerOptions(grace=self.options.grace, steered=self.listeners.steered,
                                        counters=self.counters)
                code = worker_main(slot, child_end, self.listeners.for_slot(slot), self.snapshot, options)
            except BaseException:
                log.exception("worker %d failed to start", slot, extra={"event": "worker_crashed", "worker": slot})
            finally:
                logging.shutdown()
                os._exit(code)
        child_end.close()
        parent_end.setblocking(False)
        handle = WorkerHandle(slot, pid, parent_end, time.monotonic())
        self.handles[slot] = handle
        self.by_pid[pid] = handle
        self.selector.register(parent_end, selectors.EVENT_READ, lambda: self.on_channel(handle))
        log_event(log, logging.DEBUG, "worker_spawned", f"worker {slot} spawned (pid {pid})", worker=slot, pid=pid)

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
        for handle in self.handles.values():
            handle.channel.close()
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

    def on_channel(self, handle: WorkerHandle) -> None:
        """Readable or (while the outbox waits) writable: write what waits, then read what came."""
        if handle.state is WorkerState.EXITED:
            return
        if handle.outbox:
            self.flush(handle)
        try:
            data = handle.channel.recv(1 << 20)
        except (BlockingIOError, TimeoutError):
            return
        except OSError:
            data = b""
        if not data:
            try:
                self.selector.unregister(handle.channel)  # Exited: SIGCHLD does the rest.
            except (KeyError, ValueError):
                pass
            return
        try:
            messages = handle.decoder.feed(data)
        except FramingError as exc:
            log_event(log, logging.ERROR, "channel_error", f"worker {handle.slot}: {exc}; killing it",
                      worker=handle.slot)
            _kill(handle.pid)
            return
        for message in messages:
            self.on_message(handle, message)

    def on_message(self, handle: WorkerHandle, message: dict[str, Any]) -> None:
        kind = message.get("t")
        if kind == "ready":
            handle.acked_version = int(message["version"])
            if handle.state is WorkerState.STARTING:
                handle.move_to(WorkerState.READY)
            self.boot_failures[handle.slot] = 0
            if not self.announced_ready and all(h.state is WorkerState.READY for h in self.handles.values()) \
                    and len(self.handles) == self.options.workers:
                self.announced_ready = True
                config = self.snapshot.config
                ports = sorted(config.ports)
                shown = ", ".join(map(str, ports[:12])) + (f" and {len(ports) - 12:,} more" if len(ports) > 12 else "")
                log_event(log, logging.INFO, "ready",
                          f"ready: config v{self.snapshot.version} ({config.summary()}) served by "
                          f"{len(self.handles)} workers on {self.options.bind} ports {shown}",
                          version=self.snapshot.version, workers=len(self.handles), ports=len(ports))
                self.notifier.ready(f"serving config v{self.snapshot.version} ({config.summary()})")
                if self.takeover is not None:
                    self.takeover.workers_ready()
            self.check_pending()
            if self.next_ping is None and not self.stopping:
                self.next_ping = time.monotonic() + PING_INTERVAL
        elif kind == "pong":
            handle.unanswered_pings = 0
        elif kind == "challenge_loaded":
            self.acme.worker_loaded(handle, message)
        elif kind == "ack":
            handle.acked_version = max(handle.acked_version, int(message["version"]))
            self.check_pending()

    def reap(self) -> None:
        while True:
            try:
                pid, status = os.waitpid(-1, os.WNOHANG)
            except ChildProcessError:
                return
            if pid == 0:
                return
            handle = self.by_pid.pop(pid, None)
            if handle is None:
                continue
            self.worker_exited(handle, status)

    def worker_exited(self, handle: WorkerHandle, status: int) -> None:
        was_ready = handle.state in (WorkerState.READY, WorkerState.DRAINING)
        handle.move_to(WorkerState.EXITED)
        # Its connections died with it: their counts must not hold other workers' clients at a limit until the
        # slot is respawned (up to BOOT_BACKOFF_MAX later). Its counters move to the retired row.
        self.counters.retire(handle.slot, self.cells.fresh)
        if self.handles.get(handle.slot) is handle:
            del self.handles[handle.slot]
        try:
            self.selector.unregister(handle.channel)
        except (KeyError, ValueError):
            pass
        for fd in handle.outbox.clear():
            os.close(fd)
        handle.channel.close()
        how = _describe_exit(status)
        if self.stopping:
            log_event(log, logging.INFO, "worker_exit", f"worker {handle.slot} (pid {handle.pid}) {how}",
                      worker=handle.slot, pid=handle.pid)
            return
        self.worker_restarts += 1
        if was_ready:
            # At once, so what the kernel queued for the slot is served; but a worker that keeps dying soon
            # after it started (a crash on some connection) is respawned with backoff, not in a tight loop.
            quick = time.monotonic() - handle.started < QUICK_CRASH
            crashes = self.quick_crashes[handle.slot] = self.quick_crashes[handle.slot] + 1 if quick else 0
            delay = 0.0 if crashes <= 1 else min(BOOT_BACKOFF_FIRST * 2 ** (crashes - 2), BOOT_BACKOFF_MAX)
            log_event(log, logging.WARNING, "worker_exit",
                      f"worker {handle.slot} (pid {handle.pid}) {how}; respawning"
                      + (f" in {delay:.1f} s ({crashes} quick exits in a row)" if delay else ""),
                      worker=handle.slot, pid=handle.pid)
            if delay:
                self.respawn_at[handle.slot] = time.monotonic() + delay
            else:
                self.spawn(handle.slot)
            return
        failures = self.boot_failures[handle.slot] = self.boot_failures[handle.slot] + 1
        # Giving up is for a supervisor that never served (a broken install); once it has served, it keeps
        # serving with the workers it has and keeps retrying the missing one.
        if failures >= MAX_BOOT_FAILURES and not self.announced_ready:
            message = (f"worker {handle.slot} failed to boot {failures} times in a row (last: {how}); "
                       "giving up: see the errors above")
            log_event(log, logging.CRITICAL, "workers_cannot_boot", message, worker=handle.slot)
            self.exit_code = EXIT_WORKERS_CANNOT_BOOT
            self.begin_stop("workers cannot boot")
            return
        delay = min(BOOT_BACKOFF_FIRST * 2 ** (failures - 1), BOOT_BACKOFF_MAX)
        log_event(log, logging.WARNING, "worker_boot_failed",
                  f"worker {handle.slot} (pid {handle.pid}) {how} before it was ready; retrying in {delay:.1f} s",
                  worker=handle.slot, pid=handle.pid)
        self.respawn_at[handle.slot] = time.monotonic() + delay

    def send(self, handle: WorkerHandle, message: dict[str, Any], fds: list[int] | None = None,
             coalesce: str | None = None) -> bool:
        return self.send_frame(handle, encode(message), fds, coalesce)

    def send_frame(self, handle: WorkerHandle, frame: bytes, fds: list[int] | None = None,
                   coalesce: str | None = None) -> bool:
        """Queue a frame for a worker and write what its channel takes now; never blocks the loop. A worker
        that lets its outbox overflow is not reading: it is hung, and killed (its sockets wait for the next)."""
        if handle.state is WorkerState.EXITED:
            return False
        owned = tuple(os.dup(fd) for fd in fds or ())  # a reload may close ours before the frame goes out
        if not handle.outbox.push(frame, owned, coalesce):
            for fd in (*owned, *handle.outbox.clear()):
                os.close(fd)
            log_event(log, logging.ERROR, "worker_hung",
                      f"worker {handle.slot} (pid {handle.pid}) has not read {handle.outbox.size:,} queued bytes; "
                      "killing it", worker=handle.slot, pid=handle.pid)
            _kill(handle.pid)
            return False
        return self.flush(handle)

    def flush(self, handle: WorkerHandle) -> bool:
        """Write what the channel takes; watch it for writability while something waits. False when the
        worker is gone (its exit is handled when it is reaped)."""
        reachable = True
        try:
            empty = write_some(handle.channel, handle.outbox)
        except OSError:
            for fd in handle.outbox.clear():
                os.close(fd)
            empty, reachable = True, False
        if empty == handle.writing:
            handle.writing = not empty
            events = selectors.EVENT_READ | (selectors.EVENT_WRITE if handle.writing else 0)
            try:
                self.selector.modify(handle.channel, events, lambda: self.on_channel(handle))
            except (KeyError, ValueError):
                pass  # the channel is no longer registered: the worker exited
        return reachable

    # --- reload --------------------------------------------------------------------------------------
    def on_config_event(self) -> None:
        assert self.watcher is not None
        if not self.watcher.read():
            return
        now = time.monotonic()
        if self.reload_first_event is None:
            self.reload_first_event = now
        self.reload_due = min(now + RELOAD_QUIET, self.reload_first_event + RELOAD_MAX_DELAY)

    def reload(self, trigger: str) -> None:
        if self.stopping:
            return
        # systemd's reload (ExecReload= sends SIGHUP) waits for READY=1: every SIGHUP is answered with
        # RELOADING=1 then READY=1, whatever it finds. A file change announces only a change it applies.
        announce = trigger == "SIGHUP" and self.announced_ready
        if announce:
            self.notifier.reloading()
        current = self.snapshot
        try:
            config = self.source.load()
            new = next_snapshot(current, config)  # reads the certificate files the config names
        except ConfigError as exc:
            self.reload_failed(trigger, str(exc))
            if announce:
                self.ready_again()
            return
        if new is None:
            level = logging.INFO if trigger == "SIGHUP" else logging.DEBUG
            log_event(log, level, "reload_unchanged", f"{trigger}: config unchanged, still v{current.version}",
                      version=current.version)
            if not self.reload_status.ok:
                # The file is back to what we serve: the failure is over (an alert on it must resolve).
                status = self.reload_status
                self.reload_status = ReloadStatus(True, time.time(), None, status.reloads, status.failures)
                log_event(log, logging.INFO, "reload_recovered",
                          f"{trigger}: the file is back to the serving config v{current.version}; "
                          "last reload ok again", version=current.version)
            if announce:
                self.ready_again()
            return
        if not announce:
            self.notifier.reloading()
        change = plan(current.config, config)
        settled = min((h.acked_version for h in self.handles.values()), default=current.version)
        try:
            cells = self.cells.assign(config, new.version, settled, self.counters.is_zero)
            added = self.listeners.prepare(change.added_ports)  # Sockets exist before any worker is told.
        except (ConfigError, ListenError) as exc:
            self.reload_failed(trigger, str(exc))
            self.ready_again()
            return
        handed = cells.new_cells(self.cells)
        # A reused cell counts from zero: a new name never inherits old totals (cells never handed out are zero).
        self.counters.reset([c for c in handed if c < self.cells.fresh])
        for cell in handed:
            self.counters.set_health(cell, 0)  # a reused cell starts in rotation, like any new target
        self.cells = cells
        new = replace(new, cells=cells.cells, revision=self.source.revision())
        new = replace(new, certs=self.certs.merged(new))  # with the certificates ACME issued
        self.snapshot = new
        self.pending.append(PendingReload(new.version, time.monotonic(), change, config.ports))
        frame = encode({"t": "snapshot", "snapshot": new.to_wire()})
        for handle in list(self.handles.values()):
            self.send_snapshot(handle, added, frame)
        # reuseport: our copies of removed ports go now; each worker closes its own after draining its queue.
        # bpf: the port map follows once every worker knows the new routes (check_pending).
        self.listeners.told(change.removed_ports)
        self.reload_status = ReloadStatus(True, time.time(), None, self.reload_status.reloads + 1,
                                          self.reload_status.failures)
        self.set_title()
        log_event(log, logging.DEBUG, "reload_sent", f"{trigger}: config v{new.version} sent ({change.summary()})",
                  version=new.version)
        self.check_pending()

    def send_snapshot(self, handle: WorkerHandle, added: list[int], frame: bytes) -> None:
        """The new ports' sockets for this worker's slot, then the snapshot (encoded once for every worker)."""
        for start in range(0, len(added), FDS_PER_MESSAGE):
            chunk = added[start:start + FDS_PER_MESSAGE]
            fds = self.listeners.descriptors(handle.slot, chunk)
            if not self.send(handle, {"t": "sockets", "ports": chunk}, fds):
                return
        self.send_frame(handle, frame)

    def ready_again(self) -> None:
        """READY=1 after a reload that changed nothing; a reload still waiting for acks sends its own."""
        if not self.pending:
            failed = "" if self.reload_status.ok else "; last reload failed"
            self.notifier.ready(f"serving config v{self.snapshot.version} ({self.snapshot.config.summary()}){failed}")

    def reload_failed(self, trigger: str, error: str) -> None:
        status = self.reload_status
        self.reload_status = ReloadStatus(False, time.time(), error, status.reloads, status.failures + 1)
        log_event(log, logging.ERROR, "reload_failed",
                  f"{trigger}: reload failed, still serving config v{self.snapshot.version}: {error}",
                  version=self.snapshot.version, error=error)

    def check_pending(self) -> None:
        for pending in list(self.pending):
            # A worker still starting counts once it is ready: it reports the version it serves then.
            live = list(self.handles.values())
            if all(h.acked_version >= pending.version for h in live):
                self.pending.remove(pending)
                self.listeners.acknowledged(pending.ports)
                self.source.applied(pending.version)
                ms = (time.monotonic() - pending.started) * 1000
                log_event(log, logging.INFO, "reload_applied",
                          f"config v{pending.version} applied by {len(live)}/{self.options.workers} workers in "
                          f"{ms:.0f} ms ({pending.plan.summary()})", version=pending.version, ms=round(ms, 1))
                if not self.pending:
                    self.notifier.ready(f"serving config v{pending.version} ({self.snapshot.config.summary()})")

    # --- stop ----------------------------------------------------------------------------------------
    def on_stop_signal(self, name: str) -> None:
        """The first SIGTERM/SIGINT drains; only a repeated signal forces."""
        self.stop_signals += 1
        if self.stop_signals > 1:
            log_event(log, logging.WARNING, "forced_stop", f"{name} again: killing workers now")
            for handle in self.handles.values():
                _kill(handle.pid)
            self.exit_code = self.exit_code or EXIT_FORCED
            return
        self.begin_stop(name)

    def begin_stop(self, reason: str) -> None:
        if self.stopping:
            return
        self.stopping = True
        self.next_ping = None
        self.notifier.stopping()
        self.respawn_at.clear()
        active = self.active_connections()
        log_event(log, logging.INFO, "stopping",
                  f"{reason}: stopping; draining connections for up to {self.options.grace:g} s"
                  + (f" ({active} active at last count)" if active else ""))
        for handle in list(self.handles.values()):
            if handle.state is not WorkerState.EXITED:
                handle.move_to(WorkerState.DRAINING)
                self.send(handle, {"t": "drain"})
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
            f"skiff: supervisor (config v{self.snapshot.version}, {self.options.workers} workers)")


def raise_fd_limit() -> None:
    """Thousands of ports and connections need descriptors: take the soft limit up to the hard one."""
    import resource

    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    if soft < hard:
        try:
            resource.setrlimit(resource.RLIMIT_NOFILE, (hard, hard))
        except (OSError, ValueError) as exc:
            log_event(log, logging.WARNING, "rlimit", f"cannot raise the open-file limit to {hard}: {exc}")


def _record_only(signum: int, frame: object) -> None:
    """The wakeup socket carries the signal number to the loop; nothing else happens in the handler."""


def _kill(pid: int) -> None:
    _signal(pid, signal.SIGKILL)


def _signal(pid: int, signum: int) -> None:
    try:
        os.kill(pid, signum)
    except ProcessLookupError:
        pass


def _describe_exit(status: int) -> str:
    if os.WIFSIGNALED(status):
        return f"was killed by {signal.Signals(os.WTERMSIG(status)).name}"
    return f"exited with code {os.waitstatus_to_exitcode(status)}"

