"""The relay: the thin adapter between uvloop transports and one connection's state machine (proxy/session.py).

`ClientSide` is the accepted connection's Protocol: a `Session` subclass that implements the machine's hooks
(closing with RST to pass a reset on, the HalfCloseTimeout timer, a retry, the owner's bookkeeping) and maps
transport callbacks onto its events, most of them by plain aliasing, so a chunk costs no extra call.
`UpstreamSide` is the Protocol of each upstream attempt and forwards to the same session.

The owner (the worker) is reached through `RelayOwner`, so this module imports nothing from the worker.
Another adapter (another event loop, another way to move bytes) can subclass `Session` the same way.
"""

from __future__ import annotations

import asyncio
import socket
import struct
from typing import TYPE_CHECKING, Any, Protocol, cast

from proxy import failpoints
from proxy.session import WRITE_HIGH_WATER, WRITE_LOW_WATER, Session, Side

if TYPE_CHECKING:
    from proxy.balancer import TargetState
    from workers.routes import AppRoute

_LINGER_RESET = struct.pack("ii", 1, 0)


class Connecting(Protocol):
    """A connect in progress, as the relay cancels it: an asyncio Task or a workers.stepper.Stepper."""

    def done(self) -> bool: ...

    def cancel(self, msg: Any = None) -> bool: ...


class RelayOwner(Protocol):
    """What a relay needs from the process that accepted it."""

    loop: asyncio.AbstractEventLoop

    def accepted(self, relay: ClientSide) -> None: ...

    def retry(self, relay: ClientSide, target: TargetState | None, exc: BaseException) -> None: ...

    def finished(self, relay: ClientSide) -> None: ...


def _reset(transport: Any) -> None:
    """Close so the peer sees a reset (RST), not an orderly end: how a reset is passed on."""
    sock = transport.get_extra_info("socket")
    if sock is not None:
        try:
            sock.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, _LINGER_RESET)
        except OSError:
            pass  # Already reset by its peer: the close below is a reset anyway.
    transport.abort()


class ClientSide(Session, asyncio.Protocol):
    __slots__ = (
        "connect_expired", "connect_task", "idle_since", "linger", "owner", "route", "seen", "target", "tried",
    )

    def __init__(self, owner: RelayOwner, route: AppRoute | None) -> None:
        Session.__init__(self, cast(Side, None))  # the transport arrives in connection_made, before any event
        self.owner = owner
        self.route = route
        self.target: TargetState | None = None  # the target of the adopted upstream, whose count we hold
        self.tried: list[TargetState] = []
        self.seen = 0  # bytes_in + bytes_out at the last idle sweep: activity is derived, not flagged per read
        self.idle_since = 0.0
        self.connect_task: Connecting | None = None  # the connect in progress: a Task, or a Stepper
        self.connect_expired = False  # the connect timer, not the client, cancelled connect_task
        self.linger: asyncio.TimerHandle | None = None  # HalfCloseTimeout, from the first EOF

    # --- client transport events --------------------------------------------------------------------
    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self.client = cast(Side, transport)
        transport.set_write_buffer_limits(WRITE_HIGH_WATER, WRITE_LOW_WATER)  # type: ignore[attr-defined]
        self.owner.accepted(self)

    # The transport's callbacks are the machine's events, with no call in between.
    data_received = Session.client_data
    connection_lost = Session.client_lost
    pause_writing = Session.client_full
    resume_writing = Session.client_drained

    def eof_received(self) -> bool:
        self.client_eof_received()
        return True  # Keep the client open for the upstream's remaining bytes.

    # --- the machine's hooks ---------------------------------------------------------------------------
    def close_side(self, side: Side, reset: bool) -> None:
        if reset:
            _reset(side)
        else:
            side.close()  # type: ignore[attr-defined]

    def start_half_close_timer(self) -> None:
        timeout = self.route.app.half_close_timeout if self.route is not None else None
        if timeout is not None:
            self.linger = self.owner.loop.call_later(timeout, self.finish)

    def may_replay(self) -> bool:
        return self.route is not None and self.route.app.retry_on_reset

    def release_target(self) -> None:
        target = self.target
        if target is not None:
            target.release()

    def retry(self, exc: BaseException) -> None:
        target, self.target = self.target, None
        self.owner.retry(self, target, exc)

    def closed(self) -> None:
        if self.linger is not None:
            self.linger.cancel()
        task = self.connect_task
        if task is not None and not task.done():
            task.cancel()
        self.owner.finished(self)

    # --- for the connector -----------------------------------------------------------------------------
    def adopt_upstream(self, transport: Any, target: TargetState) -> None:
        self.target = target
        transport.set_write_buffer_limits(WRITE_HIGH_WATER, WRITE_LOW_WATER)
        self.upstream_made(transport)


def expire_connect(relay: ClientSide, side: UpstreamSide) -> None:
    """The connect deadline (a loop timer the connector sets per step): cancel the connect task, as a timeout."""
    if side.adopted:
        # The connect completed and the relay took the upstream; the task has not run since. Cancelling
        # now would close a working upstream with no failover: the connect won the race.
        return
    task = relay.connect_task
    if task is not None and not task.done():
        relay.connect_expired = True
        task.cancel()


class UpstreamSide(asyncio.Protocol):
    __slots__ = ("adopted", "deadline", "relay", "started", "target")

    def __init__(self, relay: ClientSide, target: TargetState) -> None:
        self.relay = relay
        self.target = target
        self.adopted = False  # the relay took this connection (the connector reads it)
        self.started = 0.0  # when the client's first connect attempt began (monotonic)
        self.deadline: set[UpstreamSide] | None = None  # the connector's deadline set holding this attempt

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        if self.relay.done:
            transport.close()  # The client left while we were connecting.
            return
        self.adopted = True
        self.relay.adopt_upstream(transport, self.target)
        if failpoints.ANY and failpoints.active("connect-deadline-race"):
            expire_connect(self.relay, self)  # the deadline fires before the connect task sees its result

    def data_received(self, data: bytes) -> None:
        self.relay.upstream_data(data)

    def eof_received(self) -> bool:
        self.relay.upstream_eof_received()
        return True

    def connection_lost(self, exc: Exception | None) -> None:
        if self.adopted:
            self.relay.upstream_lost(exc)

    def pause_writing(self) -> None:
        self.relay.upstream_full()

    def resume_writing(self) -> None:
        self.relay.upstream_drained()
