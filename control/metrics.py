"""/metrics: rendered by a forked child from the shared table, at most once per MAX_AGE, shared by every scrape.

The supervisor has one loop and no threads, and the text for 2,000 apps x 3 targets is megabytes. So the loop
only forks (copy-on-write: the child sees the config, the cell map and the shared table as they are) and reads
the child's pipe as it becomes readable; the child reads the table, writes the whole HTTP response and exits.
A scrape that finds a response younger than MAX_AGE gets it at once; one that finds a render running waits for
it; otherwise it starts one, so there is at most one render per MAX_AGE however many scrape. A render that
fails (or outlives RENDER_DEADLINE, then it is killed) answers its waiters 503; the next scrape tries again.

The child's first acts: default signal handling, close every descriptor but its pipe (it must not keep a
listening socket or the BPF lock alive). It is reaped by the supervisor's SIGCHLD handling like any child
that is not a worker; the pipe's end is what the loop waits for.
"""

from __future__ import annotations

import contextlib
import fcntl
import logging
import os
import resource
import selectors
import signal
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import NoReturn

import setproctitle

from control.http import Reply, render
from proxy.logs import log_event

log = logging.getLogger("supervisor")

MAX_AGE = 1.0  # seconds a rendered response is served to every scrape
RENDER_DEADLINE = 10.0
PIPE_SIZE = 1 << 20  # fewer wake-ups per render when the kernel allows it
Job = Callable[[], bytes]  # runs in the child: the whole HTTP response


@dataclass(eq=False)
class _Render:
    pid: int
    fd: int
    started: float
    data: bytearray = field(default_factory=bytearray)


class MetricsCache:
    def __init__(self, selector: selectors.BaseSelector, prepare: Callable[[], Job], max_age: float = MAX_AGE,
                 deadline: float = RENDER_DEADLINE) -> None:
        self.selector = selector
        self.prepare = prepare  # in the supervisor, at fork time: what the child will run
        self.max_age = max_age
        self.deadline = deadline
        self.renders = 0
        self.failures = 0
        self.response: bytes | None = None
        self.fresh_until = 0.0
        self.waiters: list[Reply] = []
        self.running: _Render | None = None

    def request(self, reply: Reply) -> None:
        if self.response is not None and time.monotonic() < self.fresh_until:
            reply(self.response)
            return
        self.waiters.append(reply)
        if self.running is None:
            self.start()

    def start(self) -> None:
        self.renders += 1
        job = self.prepare()
        try:
            read_end, write_end = os.pipe()
        except OSError as exc:
            self.fail(f"cannot render /metrics: {exc}")
            return
        try:
            pid = os.fork()
        except OSError as exc:
            os.close(read_end)
            os.close(write_end)
            self.fail(f"cannot render /metrics: {exc}")
            return
        if pid == 0:
            _child(job, write_end)
        os.close(write_end)
        os.set_blocking(read_end, False)
        with contextlib.suppress(OSError):
            fcntl.fcntl(read_end, fcntl.F_SETPIPE_SZ, PIPE_SIZE)  # fs.pipe-max-size may refuse: fine
        self.running = _Render(pid, read_end, time.monotonic())
        self.selector.register(read_end, selectors.EVENT_READ, self.on_readable)

    def on_readable(self) -> None:
        running = self.running
        assert running is not None
        for _ in range(64):  # bounded: other callbacks get their turn during a large body
            try:
                chunk = os.read(running.fd, PIPE_SIZE)
            except (BlockingIOError, InterruptedError):
                return
            except OSError:
                chunk = b""
            if not chunk:
                self.finished(running)
                return
            running.data += chunk

    def finished(self, running: _Render) -> None:
        self.stop_reading(running)
        data = running.data
        size = int.from_bytes(data[:8], "little") if len(data) >= 8 else -1
        if size != len(data) - 8:
            self.fail(f"/metrics render (pid {running.pid}) ended before its answer was complete")
            return
        self.response = bytes(memoryview(data)[8:])
        self.fresh_until = running.started + self.max_age
        waiters, self.waiters = self.waiters, []
        for reply in waiters:
            reply(self.response)

    def fail(self, why: str) -> None:
        self.failures += 1
        if self.failures == 1 or self.failures % 100 == 0:
            log_event(log, logging.ERROR, "metrics_failed", f"{why} ({self.failures} so far)", error=why)
        waiters, self.waiters = self.waiters, []
        response = render(503, "text/plain", b"metrics unavailable: rendering failed; try again\n")
        for reply in waiters:
            reply(response)

    def stop_reading(self, running: _Render) -> None:
        self.running = None
        with contextlib.suppress(KeyError, ValueError):
            self.selector.unregister(running.fd)
        os.close(running.fd)

    def next_deadline(self) -> float | None:
        return None if self.running is None else self.running.started + self.deadline

    def expire(self, now: float) -> None:
        running = self.running
        if running is not None and running.started + self.deadline <= now:
            with contextlib.suppress(ProcessLookupError):
                os.kill(running.pid, signal.SIGKILL)
            self.stop_reading(running)
            self.fail(f"/metrics render (pid {running.pid}) took longer than {self.deadline:g} s; killed")

    def close(self) -> None:
        if self.running is not None:
            self.stop_reading(self.running)  # the child meets EPIPE and exits

    def abandon(self) -> None:
        """In a forked worker: close our copy without touching the (shared) selector."""
        if self.running is not None:
            os.close(self.running.fd)


def _child(job: Job, write_end: int) -> NoReturn:
    code = 1
    try:
        signal.set_wakeup_fd(-1)
        for signum in (signal.SIGTERM, signal.SIGINT, signal.SIGHUP, signal.SIGCHLD, signal.SIGUSR1,
                       signal.SIGUSR2):
            signal.signal(signum, signal.SIG_DFL)
        setproctitle.setproctitle("skiff: metrics render")  # not a worker, to ps and to the tests' helpers
        os.closerange(3, write_end)
        os.closerange(write_end + 1, resource.getrlimit(resource.RLIMIT_NOFILE)[0])
        response = job()
        view = memoryview(len(response).to_bytes(8, "little") + response)
        while view:
            view = view[os.write(write_end, view):]
        code = 0
    except BaseException:
        log.exception("/metrics render child failed", extra={"event": "metrics_failed"})
    finally:
        os._exit(code)
