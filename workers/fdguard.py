"""Running out of file descriptors: stop accepting before it happens, and never spin or die when it does.

What uvloop (libuv) does on EMFILE/ENFILE in accept: its "emfile trick" closes a spare descriptor, accepts
every queued connection and closes each at once, then takes the spare back. The worker neither spins nor
dies, but every client in the queue gets an immediate EOF and nothing is logged. We keep uvloop's accept
path (it is the fast one) and stay out of that state instead: the worker counts the descriptors its
connections hold, closes its uvloop servers (the listening sockets stay open and keep queueing) when it comes
within a reserve of RLIMIT_NOFILE, and serves them again once enough connections have finished. A connect or
accept that still fails with EMFILE/ENFILE (other descriptors, the whole system's table) pauses accepting
for PAUSE_AFTER_FAILURE seconds. Queued clients wait instead of being dropped. Both are logged at most once
per LOG_INTERVAL.
"""

from __future__ import annotations

import asyncio
import logging
import os
import resource
import time
from collections.abc import Callable

from proxy.logs import log_event

log = logging.getLogger("worker")

PAUSE_AFTER_FAILURE = 0.5
LOG_INTERVAL = 10.0


def open_fds() -> int:
    return len(os.listdir("/proc/self/fd"))


def fd_limit() -> int:
    soft, _hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    return soft if soft != resource.RLIM_INFINITY else 1 << 20


class AcceptGuard:
    """Pauses and resumes a worker's listeners around its descriptor limit. `in_use` estimates are
    `base + per-connection`, where base (listeners, channel, libraries) is recounted on boot and reload."""

    def __init__(self, slot: int, pause: Callable[[], None], resume: Callable[[], None]) -> None:
        self.slot = slot
        self.pause_listeners = pause
        self.resume_listeners = resume
        self.limit = fd_limit()
        # Room left for upstream connects, health checks, reloads' new listeners and resolver sockets.
        self.reserve = max(16, min(self.limit // 20, 512))
        self.base = 0
        self.paused = False
        self.held_until = 0.0  # after a real EMFILE, stay paused at least until then
        self.pauses = 0
        self.logged_at = -LOG_INTERVAL
        self.loop = asyncio.get_running_loop()

    def recount(self, connection_fds: int) -> None:
        self.base = max(0, open_fds() - connection_fds)

    def check(self, connection_fds: int) -> None:
        """After an accept: pause when the next few connections could run us out."""
        if not self.paused and self.base + connection_fds >= self.limit - self.reserve:
            self.pause(f"{self.base + connection_fds} of {self.limit} file descriptors in use")

    def relieved(self, connection_fds: int) -> None:
        """After a connection ended: resume once a second reserve is free again (hysteresis)."""
        if (self.paused and time.monotonic() >= self.held_until
                and self.base + connection_fds <= self.limit - 2 * self.reserve):
            self.resume()

    def exhausted(self) -> None:
        """A real EMFILE/ENFILE: pause for a moment, then try again whatever the estimate says."""
        self.held_until = time.monotonic() + PAUSE_AFTER_FAILURE
        if not self.paused:
            self.pause("EMFILE/ENFILE: out of file descriptors")
        self.loop.call_later(PAUSE_AFTER_FAILURE, self.retry)

    def retry(self) -> None:
        if self.paused and time.monotonic() >= self.held_until:
            self.resume()

    def pause(self, why: str) -> None:
        self.paused = True
        self.pauses += 1
        self.pause_listeners()
        now = time.monotonic()
        if now - self.logged_at >= LOG_INTERVAL:
            self.logged_at = now
            log_event(log, logging.WARNING, "accept_paused",
                      f"pausing accept: {why} (limit {self.limit}); queued clients wait "
                      f"({self.pauses} pause{'s' if self.pauses != 1 else ''} so far)", worker=self.slot)

    def resume(self) -> None:
        self.paused = False
        self.resume_listeners()
        log_event(log, logging.DEBUG, "accept_resumed", "resuming accept", worker=self.slot)
