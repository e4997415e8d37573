"""The exception barrier for a worker's connection callbacks: one connection's bug costs that connection only.

uvloop already contains an exception raised in a Protocol callback to its transport: it closes that transport
(the relay then passes the reset on and releases what it holds) and hands the error to the loop's exception
handler. This module is that handler: it counts every error and logs sparingly (the first traceback, then one
summary line per interval), so a bug that hits every connection cannot flood the log or stall the loop.
"""

from __future__ import annotations

import asyncio
import logging
import time
from typing import Any

from proxy import failpoints
from proxy.logs import log_event
from workers.relay import ClientSide

log = logging.getLogger("worker")

LOG_INTERVAL = 10.0


class CallbackErrors:
    def __init__(self, slot: int) -> None:
        self.slot = slot
        self.total = 0
        self.unlogged = 0
        self.logged_at = -LOG_INTERVAL
        self.summary_due = False

    def handle(self, loop: asyncio.AbstractEventLoop, context: dict[str, Any]) -> None:
        self.total += 1
        now = time.monotonic()
        if now - self.logged_at >= LOG_INTERVAL:
            self.logged_at = now
            exc = context.get("exception")
            log.error("worker %d: a connection callback failed (%s); that connection was closed (%d so far)",
                      self.slot, context.get("message", "error"), self.total, exc_info=exc,
                      extra={"event": "callback_error", "worker": self.slot})
            return
        self.unlogged += 1
        if not self.summary_due:
            self.summary_due = True
            loop.call_later(self.logged_at + LOG_INTERVAL - now, self.log_summary)

    def log_summary(self) -> None:
        self.summary_due = False
        if self.unlogged:
            self.logged_at = time.monotonic()
            log_event(log, logging.ERROR, "callback_error",
                      f"{self.unlogged} more connection callbacks failed in the last {LOG_INTERVAL:g} s; each closed "
                      f"its connection only ({self.total} so far)", worker=self.slot)
            self.unlogged = 0


class FailingClientSide(ClientSide):
    """Failpoint `relay-callback`: a relay whose client data callback raises, to prove the barrier above."""

    __slots__ = ()

    def data_received(self, data: bytes) -> None:
        raise RuntimeError("failpoint relay-callback: a connection callback fails on purpose")


def client_side_class() -> type[ClientSide]:
    """The relay class for the next accepted connection (the failing one only while its failpoint is on)."""
    return FailingClientSide if failpoints.active("relay-callback") else ClientSide
