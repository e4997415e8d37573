"""The workers as the supervisor keeps them: forking, their channels' messages, liveness, reaping and respawning.

Policy in one place:
- a worker that dies after it was ready is respawned at once (its queue waits in the supervisor's sockets);
  one that keeps dying soon after its start is respawned with backoff (0.1 s doubling to 5 s);
- a failed fork (EAGAIN, EMFILE, ENOMEM) is retried with the same backoff;
- a worker that cannot boot is retried with backoff; MAX_BOOT_FAILURES in a row stop a supervisor only if it
  was never ready (a broken install) — once it has served, it keeps serving and keeps retrying;
- a ready worker that leaves PING_MISSES pings in a row unanswered, lets its outbox overflow or sends a bad
  frame is hung: it is killed, and reaped and respawned like any crash.
The supervisor owns everything else a worker touches; the pool calls back into it (`Supervisor`) for the
child's start and for what a worker's readiness, acknowledgements and exit mean to the rest.
"""

from __future__ import annotations

import errno
import logging
import os
import signal
import socket
import time
from typing import TYPE_CHECKING, Any

from control.channel import WorkerChannel
from control.handle import WorkerHandle, WorkerState
from proxy import failpoints
from proxy.logs import log_event

if TYPE_CHECKING:
    from control.arbiter import Supervisor

log = logging.getLogger("supervisor")

MAX_BOOT_FAILURES = 5
BOOT_BACKOFF_FIRST = 0.1
BOOT_BACKOFF_MAX = 5.0
QUICK_CRASH = 10.0  # a ready worker that exits sooner than this after its start counts towards backoff
PING_INTERVAL = 1.0  # liveness: every ready worker is pinged this often...
PING_MISSES = 3  # ...and one that leaves this many pings in a row unanswered is hung


def backoff(failures: int) -> float:
    return float(min(BOOT_BACKOFF_FIRST * 2 ** (failures - 1), BOOT_BACKOFF_MAX))


class WorkerPool:
    def __init__(self, supervisor: Supervisor, size: int) -> None:
        self.supervisor = supervisor
        self.size = size
        self.handles: dict[int, WorkerHandle] = {}  # slot -> live worker
        self.by_pid: dict[int, WorkerHandle] = {}
        self.boot_failures = [0] * size
        self.quick_crashes = [0] * size  # exits soon after start, in a row, per slot
        self.spawn_failures = [0] * size  # fork/socketpair failures in a row, per slot
        self.respawn_at: dict[int, float] = {}
        self.next_ping: float | None = None
        self.restarts = 0  # workers that exited unexpectedly

    # --- starting ------------------------------------------------------------------------------------
    def spawn(self, slot: int) -> None:
        """Fork the worker of `slot`; a failed fork is retried with backoff."""
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
            delay = backoff(failures)
            log_event(log, logging.ERROR, "spawn_failed",
                      f"cannot start worker {slot}: {exc.strerror or exc}; retrying in {delay:.1f} s",
                      worker=slot, error=str(exc))
            self.respawn_at[slot] = time.monotonic() + delay
            return
        self.spawn_failures[slot] = 0
        if pid == 0:
            parent_end.close()
            self.supervisor.run_child(slot, child_end)  # never returns
        child_end.close()
        handle: WorkerHandle
        channel = WorkerChannel(parent_end, self.supervisor.selector,
                                lambda message: self.on_message(handle, message),
                                lambda why: self.hung(handle, why))
        handle = WorkerHandle(slot, pid, channel, time.monotonic())
        self.handles[slot] = handle
        self.by_pid[pid] = handle
        log_event(log, logging.DEBUG, "worker_spawned", f"worker {slot} spawned (pid {pid})", worker=slot, pid=pid)

    def close_in_child(self) -> None:
        for handle in self.handles.values():
            handle.channel.close_in_child()

    # --- messages ------------------------------------------------------------------------------------
    def on_message(self, handle: WorkerHandle, message: dict[str, Any]) -> None:
        kind = message.get("t")
        if kind == "pong":
            handle.unanswered_pings = 0
        elif kind == "ready":
            handle.acked_version = int(message["version"])
            if handle.state is WorkerState.STARTING:
                handle.move_to(WorkerState.READY)
            self.boot_failures[handle.slot] = 0
            if self.next_ping is None and not self.supervisor.stopping:
                self.next_ping = time.monotonic() + PING_INTERVAL
            self.supervisor.worker_ready(handle)
        elif kind == "ack":
            handle.acked_version = max(handle.acked_version, int(message["version"]))
            self.supervisor.reloads.check_pending()
        else:
            self.supervisor.worker_message(handle, message)

    def all_ready(self) -> bool:
        return len(self.handles) == self.size and all(h.state is WorkerState.READY for h in self.handles.values())

    def send_all(self, message: dict[str, Any]) -> None:
        for handle in list(self.handles.values()):
            handle.channel.send(message)

    # --- liveness ------------------------------------------------------------------------------------
    def ping(self) -> None:
        """A ready worker that leaves PING_MISSES pings unanswered is hung (no reload needed to find it)."""
        self.next_ping = time.monotonic() + PING_INTERVAL
        for handle in list(self.handles.values()):
            if handle.state is not WorkerState.READY:
                continue
            if handle.unanswered_pings >= PING_MISSES:
                self.hung(handle, f"answered none of the last {PING_MISSES} pings ({PING_MISSES * PING_INTERVAL:g} s)")
                continue
            handle.unanswered_pings += 1
            handle.channel.send({"t": "ping"}, coalesce="ping")

    def hung(self, handle: WorkerHandle, why: str) -> None:
        log_event(log, logging.ERROR, "worker_hung", f"worker {handle.slot} (pid {handle.pid}) {why}; killing it",
                  worker=handle.slot, pid=handle.pid)
        kill(handle.pid)

    def kill_all(self) -> None:
        for handle in self.handles.values():
            kill(handle.pid)

    def stop_respawning(self) -> None:
        self.respawn_at.clear()
        self.next_ping = None

    # --- timers --------------------------------------------------------------------------------------
    def deadlines(self) -> list[float]:
        return [*self.respawn_at.values(), *([self.next_ping] if self.next_ping is not None else [])]

    def run_timers(self, now: float) -> None:
        for slot, due in list(self.respawn_at.items()):
            if due <= now and not self.supervisor.stopping:
                del self.respawn_at[slot]
                self.spawn(slot)
        if self.next_ping is not None and self.next_ping <= now:
            self.ping()

    # --- exits ---------------------------------------------------------------------------------------
    def reap(self) -> None:
        while True:
            try:
                pid, status = os.waitpid(-1, os.WNOHANG)
            except ChildProcessError:
                return
            if pid == 0:
                return
            handle = self.by_pid.pop(pid, None)
            if handle is not None:
                self.exited(handle, status)

    def exited(self, handle: WorkerHandle, status: int) -> None:
        was_ready = handle.state in (WorkerState.READY, WorkerState.DRAINING)
        handle.move_to(WorkerState.EXITED)
        if self.handles.get(handle.slot) is handle:
            del self.handles[handle.slot]
        handle.channel.close()
        self.supervisor.worker_gone(handle)
        how = describe_exit(status)
        if self.supervisor.stopping:
            log_event(log, logging.INFO, "worker_exit", f"worker {handle.slot} (pid {handle.pid}) {how}",
                      worker=handle.slot, pid=handle.pid)
            return
        self.restarts += 1
        if was_ready:
            # At once, so what the kernel queued for the slot is served; but a worker that keeps dying soon
            # after it started (a crash on some connection) is respawned with backoff, not in a tight loop.
            quick = time.monotonic() - handle.started < QUICK_CRASH
            crashes = self.quick_crashes[handle.slot] = self.quick_crashes[handle.slot] + 1 if quick else 0
            delay = 0.0 if crashes <= 1 else backoff(crashes - 1)
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
        if failures >= MAX_BOOT_FAILURES and not self.supervisor.announced_ready:
            self.supervisor.cannot_boot(f"worker {handle.slot} failed to boot {failures} times in a row "
                                        f"(last: {how}); giving up: see the errors above", handle.slot)
            return
        delay = backoff(failures)
        log_event(log, logging.WARNING, "worker_boot_failed",
                  f"worker {handle.slot} (pid {handle.pid}) {how} before it was ready; retrying in {delay:.1f} s",
                  worker=handle.slot, pid=handle.pid)
        self.respawn_at[handle.slot] = time.monotonic() + delay


def kill(pid: int) -> None:
    signal_pid(pid, signal.SIGKILL)


def signal_pid(pid: int, signum: int) -> None:
    try:
        os.kill(pid, signum)
    except ProcessLookupError:
        pass


def describe_exit(status: int) -> str:
    if os.WIFSIGNALED(status):
        return f"was killed by {signal.Signals(os.WTERMSIG(status)).name}"
    return f"exited with code {os.waitstatus_to_exitcode(status)}"
