"""The relay: one proxied connection as two Protocols sharing the client side's state.

`ClientSide` is the accepted connection and owns the relay; `UpstreamSide` forwards the target's bytes back.
Flow control: when one side's write buffer passes its high-water mark, the other side stops reading until it
drains, so memory per connection stays bounded however slow a reader is. EOF from one side becomes
shutdown(SHUT_WR) towards the other while the other direction keeps flowing; a reset on one side becomes a
reset on the other. Both sockets are closed exactly once, by `ClientSide.finish`.

With `"ProxyProtocol"`, the header (built once at accept) goes first on every upstream connection, a replay's
too. With `"HalfCloseTimeout"`, once one side has sent EOF the other must finish within that many seconds.

Until the target sends its first byte, the client's bytes are kept (up to REPLAY_LIMIT): a target that resets
a connection before answering anything (a listener closed with connections in its queue, a process that died
before accepting) is treated like a failed connect, and the same bytes go to the next target. The client
never learns that the first target vanished.
"""

from __future__ import annotations

import asyncio
import socket
import struct
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from proxy.balancer import TargetState
    from workers.routes import AppRoute
    from workers.worker import Worker

# Bytes a client may send before its upstream connection exists (uvloop resumes reading right after
# connection_made, so a pause there does not hold). Past this the client is paused until the connect ends.
EARLY_BYTES_LIMIT = 256 * 1024
# Client bytes kept for a replay while the target has not answered; past this, no replay is possible.
REPLAY_LIMIT = 64 * 1024
WRITE_HIGH_WATER = 256 * 1024
WRITE_LOW_WATER = 64 * 1024
_LINGER_RESET = struct.pack("ii", 1, 0)


def _reset(transport: Any) -> None:
    """Close so the peer sees a reset (RST), not an orderly end: how a reset is passed on."""
    sock = transport.get_extra_info("socket")
    if sock is not None:
        try:
            sock.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, _LINGER_RESET)
        except OSError:
            pass  # Already reset by its peer: the close below is a reset anyway.
    transport.abort()


class ClientSide(asyncio.Protocol):
    __slots__ = (
        "bytes_in", "bytes_out", "client", "client_eof", "connect_expired", "connect_task", "finished", "header",
        "idle_since", "linger", "route", "seen", "target", "tried", "unanswered", "unanswered_size", "upstream",
        "upstream_eof", "worker",
    )

    def __init__(self, worker: Worker, route: AppRoute | None) -> None:
        self.worker = worker
        self.route = route
        self.client: Any = None
        self.upstream: Any = None
        self.target: TargetState | None = None
        # The client's bytes while the target has said nothing: sent on connect, kept for a replay. None once
        # the target answered, or once too much was kept to replay; () (no allocation) until the first byte.
        self.unanswered: list[bytes] | tuple[()] | None = ()
        self.unanswered_size = 0
        self.tried: list[TargetState] = []
        self.client_eof = False
        self.upstream_eof = False
        self.finished = False
        self.bytes_in = 0
        self.bytes_out = 0
        self.seen = 0  # bytes_in + bytes_out at the last idle sweep: activity is derived, not flagged per read
        self.idle_since = 0.0
        self.connect_task: asyncio.Task[None] | None = None
        self.connect_expired = False  # the connect timer, not the client, cancelled connect_task
        self.header: bytes | None = None  # PROXY protocol header, first on every upstream connection
        self.linger: asyncio.TimerHandle | None = None  # HalfCloseTimeout, from the first EOF

    # --- client events -------------------------------------------------------------------------------
    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self.client = transport
        transport.set_write_buffer_limits(WRITE_HIGH_WATER, WRITE_LOW_WATER)  # type: ignore[attr-defined]
        self.worker.accepted(self)

    def data_received(self, data: bytes) -> None:
        self.bytes_in += len(data)
        upstream = self.upstream
        kept = self.unanswered
        if upstream is not None:
            upstream.write(data)
            if kept is None:
                return
            if self.unanswered_size + len(data) > REPLAY_LIMIT:
                self.unanswered = None
                return
        if kept:
            kept.append(data)
        else:
            # The first bytes (or, between targets after a replay was given up, what the next one gets).
            self.unanswered = [data]
        self.unanswered_size += len(data)
        if upstream is None and self.unanswered_size > EARLY_BYTES_LIMIT:
            self.client.pause_reading()

    def eof_received(self) -> bool:
        self.client_eof = True
        if self.upstream is not None:
            if self.upstream_eof:
                self.finish()  # Both directions are done: close sends our FIN, no shutdown() needed first.
                return True
            self.upstream.write_eof()
        self.half_closed()
        return True  # Keep the client open for the upstream's remaining bytes.

    def half_closed(self) -> None:
        """One side has sent EOF: the other has the app's HalfCloseTimeout to finish."""
        timeout = self.route.app.half_close_timeout if self.route is not None else None
        if timeout is not None and self.linger is None:
            self.linger = self.worker.loop.call_later(timeout, self.finish)

    def connection_lost(self, exc: Exception | None) -> None:
        if not self.finished:
            self.finish(reset=exc is not None)

    def pause_writing(self) -> None:
        if self.upstream is not None:
            self.upstream.pause_reading()

    def resume_writing(self) -> None:
        if self.upstream is not None:
            self.upstream.resume_reading()

    # --- upstream events (called by UpstreamSide) -----------------------------------------------------
    def upstream_made(self, transport: Any, target: TargetState) -> None:
        self.upstream = transport
        self.target = target
        transport.set_write_buffer_limits(WRITE_HIGH_WATER, WRITE_LOW_WATER)
        if self.header is not None:
            transport.write(self.header)
        if self.unanswered:
            transport.writelines(self.unanswered)
            if self.unanswered_size > EARLY_BYTES_LIMIT:
                self.client.resume_reading()
            if self.unanswered_size > REPLAY_LIMIT:
                self.unanswered = None
        if self.client_eof:
            transport.write_eof()

    def upstream_answered(self) -> None:
        self.unanswered = None
        self.unanswered_size = 0

    def upstream_eof_received(self) -> None:
        self.upstream_eof = True
        if self.client_eof:
            self.finish()  # Both directions are done: close sends our FIN, no shutdown() needed first.
        else:
            self.client.write_eof()
            self.half_closed()

    def upstream_lost(self, exc: Exception | None) -> None:
        if self.finished:
            return
        if self.unanswered is not None and isinstance(exc, OSError) and not self.upstream_eof:
            # Reset before a single byte came back: the target never took this connection. Try another. A
            # reset can surface as ECONNRESET on a read, EPIPE on a write or ENOTCONN on the shutdown() that
            # passed the client's EOF on, whichever the loop meets first: all the same event.
            target, self.target, self.upstream = self.target, None, None
            if target is not None:
                target.release()
            self.client.resume_reading()
            self.worker.retry(self, target, exc)
            return
        self.finish(reset=exc is not None)

    # --- the end -------------------------------------------------------------------------------------
    def finish(self, reset: bool = False) -> None:
        """Close both sides exactly once: gracefully (buffers flushed) or, to pass on a reset, with RST."""
        if self.finished:
            return
        self.finished = True
        if self.linger is not None:
            self.linger.cancel()
        if self.connect_task is not None and not self.connect_task.done():
            self.connect_task.cancel()
        for transport in (self.client, self.upstream):
            if transport is None:
                continue
            if reset:
                _reset(transport)
            else:
                transport.close()
        self.worker.finished(self)


class UpstreamSide(asyncio.Protocol):
    __slots__ = ("adopted", "relay", "target")

    def __init__(self, relay: ClientSide, target: TargetState) -> None:
        self.relay = relay
        self.target = target
        self.adopted = False  # the relay took this connection (the connector reads it)

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        if self.relay.finished:
            transport.close()  # The client left while we were connecting.
            return
        self.adopted = True
        self.relay.upstream_made(transport, self.target)

    def data_received(self, data: bytes) -> None:
        relay = self.relay
        relay.bytes_out += len(data)
        if relay.unanswered is not None:
            relay.upstream_answered()
        relay.client.write(data)

    def eof_received(self) -> bool:
        self.relay.upstream_eof_received()
        return True

    def connection_lost(self, exc: Exception | None) -> None:
        self.relay.upstream_lost(exc)

    def pause_writing(self) -> None:
        self.relay.client.pause_reading()

    def resume_writing(self) -> None:
        self.relay.client.resume_reading()
