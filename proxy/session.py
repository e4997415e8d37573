"""One proxied connection's logic as a sans-io state machine: events in, actions out, no sockets.

The adapter (workers/relay.py) turns transport callbacks into calls here (`client_data`, `upstream_eof`,
`upstream_full`, ...), gives the machine two `Side`s to act on (write, pause and resume reading, write_eof)
and implements the hooks for everything else (closing with or without a reset, the half-close timer, a retry,
the owner's bookkeeping). Nothing on the data path allocates: a chunk in is one `write` call out.

Flow control with reasons: each side's reading is paused by a bitmask of reasons and resumed only when the
last reason clears, so one source's resume can never undo another's pause. The client stops reading while
its early bytes (sent before the upstream exists) pass EARLY_BYTES_LIMIT, or while the upstream's write buffer
is above its high-water mark; the upstream stops reading while the client's write buffer is.

The bound: per direction, the writer's buffer stops the reader at WRITE_HIGH_WATER, and the reader can add at
most one read (READ_CHUNK, uvloop's read buffer) after that; before the upstream exists, EARLY_BYTES_LIMIT plus
one read is held, then written at once. So a connection holds at most BUFFER_BOUND (1 MiB) of payload in user
space, whatever its peers do.

Retry semantics: a failed connect always moves on to the next target (the connector's loop). A target that
resets the connection after it was made, before sending a byte back, costs the client its connection, unless
the app opted in (`RetryOnReset`): then the client's bytes, kept up to REPLAY_LIMIT, go to the next target.
"""

from __future__ import annotations

from typing import Protocol

EARLY_BYTES_LIMIT = 256 * 1024
REPLAY_LIMIT = 64 * 1024
WRITE_HIGH_WATER = 256 * 1024
WRITE_LOW_WATER = 64 * 1024
READ_CHUNK = 256 * 1024  # uvloop reads at most this much per data_received
# Payload bytes one connection can hold in user space. Upload: before the upstream exists the client is read
# until its early bytes pass EARLY_BYTES_LIMIT (one read over at most), and they all go into the upstream's empty
# write buffer at connect time; after that the client is read only while that buffer is under high water (one
# read over at most). Download: the client's write buffer, the same way.
UPLOAD_BOUND = max(EARLY_BYTES_LIMIT, WRITE_HIGH_WATER) + READ_CHUNK
DOWNLOAD_BOUND = WRITE_HIGH_WATER + READ_CHUNK
BUFFER_BOUND = UPLOAD_BOUND + DOWNLOAD_BOUND  # 1 MiB with the values above

# Reasons the client is not read.
PAUSE_EARLY = 1  # its bytes before the upstream exists passed EARLY_BYTES_LIMIT
PAUSE_UPSTREAM_FULL = 2  # the upstream's write buffer is above high water
# Reason the upstream is not read.
PAUSE_CLIENT_FULL = 4  # the client's write buffer is above high water


class Side(Protocol):
    """What the machine does to one connection: the subset of an asyncio transport it needs."""

    def write(self, data: bytes) -> None: ...

    def writelines(self, data: list[bytes]) -> None: ...

    def write_eof(self) -> None: ...

    def pause_reading(self) -> None: ...

    def resume_reading(self) -> None: ...


class Session:
    """The state of one client connection and its current upstream attempt.

    The I/O that is not on the data path is a handful of hooks (the methods under "hooks" below) that the
    adapter subclass implements, so one object per connection is both the machine and the Protocol: no
    second allocation, and the adapter can alias a transport callback straight to an event method. The
    machine itself never touches the event loop.
    """

    __slots__ = (
        "bytes_in", "bytes_out", "client", "client_eof", "client_paused", "done", "header", "lingering",
        "pending", "pending_size", "replayable", "upstream", "upstream_eof", "upstream_paused",
    )

    def __init__(self, client: Side) -> None:
        self.client = client
        self.upstream: Side | None = None
        self.header: bytes | None = None  # PROXY protocol header, first on every upstream attempt
        # Before the upstream exists: the bytes to send it when it does. After: the bytes kept for a replay
        # while `replayable` (RetryOnReset, the target has not answered, at most REPLAY_LIMIT), else None.
        self.pending: list[bytes] | None = None
        self.pending_size = 0
        self.replayable = False
        self.client_eof = False
        self.upstream_eof = False
        self.client_paused = 0
        self.upstream_paused = 0
        self.done = False
        self.lingering = False  # the half-close deadline was asked for (once per connection)
        self.bytes_in = 0
        self.bytes_out = 0

    # --- reading, by reason ----------------------------------------------------------------------------
    def pause_client(self, reason: int) -> None:
        was = self.client_paused
        self.client_paused = was | reason
        if not was and not self.done:
            self.client.pause_reading()

    def resume_client(self, reason: int) -> None:
        was = self.client_paused
        if was & reason:
            self.client_paused = was & ~reason
            if not self.client_paused and not self.done:
                self.client.resume_reading()

    def pause_upstream(self, reason: int) -> None:
        was = self.upstream_paused
        self.upstream_paused = was | reason
        if not was and not self.done and self.upstream is not None:
            self.upstream.pause_reading()

    def resume_upstream(self, reason: int) -> None:
        was = self.upstream_paused
        if was & reason:
            self.upstream_paused = was & ~reason
            if not self.upstream_paused and not self.done and self.upstream is not None:
                self.upstream.resume_reading()

    # --- client events -----------------------------------------------------------------------------------
    def client_data(self, data: bytes) -> None:
        self.bytes_in += len(data)
        upstream = self.upstream
        if upstream is not None:
            upstream.write(data)
            if not self.replayable:
                return
            if self.pending_size + len(data) > REPLAY_LIMIT:
                self.stop_replay()  # Too much to replay: from here a reset is passed on, not retried.
                return
            if self.pending is None:
                self.pending = [data]
            else:
                self.pending.append(data)
            self.pending_size += len(data)
            return
        if self.done:
            return
        if self.pending is None:
            self.pending = [data]
        else:
            self.pending.append(data)
        self.pending_size += len(data)
        if self.pending_size > EARLY_BYTES_LIMIT:
            self.pause_client(PAUSE_EARLY)

    def client_eof_received(self) -> None:
        self.client_eof = True
        if self.done:
            return
        upstream = self.upstream
        if upstream is not None:
            if self.upstream_eof:
                self.finish()  # Both directions are done: close sends our FIN, no shutdown() needed first.
                return
            upstream.write_eof()
        self.half_closed()

    def half_closed(self) -> None:
        if not self.lingering:
            self.lingering = True
            self.start_half_close_timer()

    def client_full(self) -> None:
        self.pause_upstream(PAUSE_CLIENT_FULL)

    def client_drained(self) -> None:
        self.resume_upstream(PAUSE_CLIENT_FULL)

    def client_lost(self, exc: BaseException | None) -> None:
        self.finish(reset=exc is not None)

    # --- upstream events ---------------------------------------------------------------------------------
    def upstream_made(self, upstream: Side) -> None:
        """A connect succeeded: send the header, then what the client sent so far, then its EOF if it came."""
        self.upstream = upstream
        self.upstream_eof = False
        if self.header is not None:
            upstream.write(self.header)
        pending = self.pending
        if pending:
            upstream.writelines(pending)  # may call upstream_full() at once: that reason then holds
        # A reset before the answer can be retried (with RetryOnReset) even if the client sent nothing yet.
        self.replayable = self.pending_size <= REPLAY_LIMIT and self.may_replay()
        if not self.replayable:
            self.pending = None
            self.pending_size = 0
        self.resume_client(PAUSE_EARLY)
        if self.upstream_paused:
            # Only reachable after a replay, when nothing was written to the client (its buffer is empty), so
            # in practice never; kept so the reason and the transport cannot disagree.
            upstream.pause_reading()
        if self.client_eof:
            upstream.write_eof()

    def upstream_data(self, data: bytes) -> None:
        self.bytes_out += len(data)
        if self.replayable:
            self.stop_replay()  # The target answered: a reset from here on is passed on, never replayed.
        self.client.write(data)

    def stop_replay(self) -> None:
        self.replayable = False
        self.pending = None
        self.pending_size = 0

    def upstream_eof_received(self) -> None:
        self.upstream_eof = True
        self.stop_replay()  # An orderly end is an answer too.
        if self.done:
            return
        if self.client_eof:
            self.finish()
        else:
            self.client.write_eof()
            self.half_closed()

    def upstream_full(self) -> None:
        self.pause_client(PAUSE_UPSTREAM_FULL)

    def upstream_drained(self) -> None:
        self.resume_client(PAUSE_UPSTREAM_FULL)

    def upstream_lost(self, exc: BaseException | None) -> None:
        if self.done:
            return
        if exc is not None and self.replayable:
            # Reset before a single byte came back, and the app opted in: the same bytes go to the next
            # target. A reset can surface as ECONNRESET on a read, EPIPE on a write or ENOTCONN on the
            # shutdown() that passed the client's EOF on: all the same event.
            self.upstream = None
            self.release_target()
            self.resume_client(PAUSE_UPSTREAM_FULL)  # that buffer is gone with its connection
            self.retry(exc)
            return
        self.finish(reset=exc is not None)

    def connect_failed(self) -> None:
        """No target could take the connection (all failed, all full, or the connect itself broke)."""
        self.finish()

    # --- the end -----------------------------------------------------------------------------------------
    def finish(self, reset: bool = False) -> None:
        """Close both sides exactly once: gracefully (buffers flushed) or, to pass on a reset, with RST."""
        if self.done:
            return
        self.done = True
        self.replayable = False
        self.pending = None
        self.close_side(self.client, reset)
        if self.upstream is not None:
            self.close_side(self.upstream, reset)
        self.closed()

    # --- hooks: the adapter's side of the machine, none of them on the per-chunk path -------------------------
    def close_side(self, side: Side, reset: bool) -> None:
        """Close that connection once: orderly (buffers flushed) or with RST."""
        raise NotImplementedError

    def start_half_close_timer(self) -> None:
        """One side has sent EOF: start the app's HalfCloseTimeout, if any (asked once per connection)."""
        raise NotImplementedError

    def may_replay(self) -> bool:
        """Does the app allow replaying the client's bytes after a reset (RetryOnReset)?"""
        raise NotImplementedError

    def release_target(self) -> None:
        """The upstream this session held is gone: give back its target's outstanding count."""
        raise NotImplementedError

    def retry(self, exc: BaseException) -> None:
        """The upstream was reset before answering and a replay is allowed: connect to the next target."""
        raise NotImplementedError

    def closed(self) -> None:
        """Both sides are closed: cancel timers and connects, release the connection's counts."""
        raise NotImplementedError
