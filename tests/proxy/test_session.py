"""The relay's state machine (proxy/session.py) under random interleavings of its events (hypothesis.stateful).

The model plays both sockets the way asyncio transports behave: a write buffer that calls `*_full` when it
passes the high-water mark and `*_drained` when a drain takes it to the low-water mark, reading only while not
paused, EOF and resets arriving only on a connection that is still open. The invariants are the relay's
promises: bytes in order and complete, no reading while a pause reason is set, a bounded buffer, every close and
write_eof exactly once and never out of order, a reset in becomes a reset out, the PROXY header first on every
attempt, each deadline once, and every count taken released exactly once.
"""

from __future__ import annotations

from hypothesis import settings
from hypothesis import strategies as st
from hypothesis.stateful import RuleBasedStateMachine, initialize, invariant, precondition, rule

from proxy.session import DOWNLOAD_BOUND, READ_CHUNK, UPLOAD_BOUND
from tests.proxy.session_model import FakeIO, FakeSide, ModelSession

CHUNKS = st.sampled_from([1, 1500, 65536, READ_CHUNK, READ_CHUNK, READ_CHUNK])


class SessionMachine(RuleBasedStateMachine):
    @initialize(replay=st.booleans(), header=st.sampled_from([None, b"PROXY TCP4 1.2.3.4 5.6.7.8 1 2\r\n"]),
                early=st.lists(st.sampled_from([1, 1500, 65536]), max_size=2))
    def accept(self, replay: bool, header: bytes | None, early: list[int]) -> None:
        self.io = FakeIO(replay)
        self.client = FakeSide("client")
        self.session = ModelSession(self.io, self.client)
        self.client.session = self.session
        self.session.header = header
        self.header = header or b""
        self.upstreams: list[FakeSide] = []
        self.sent_by_client = bytearray()
        self.sent_by_upstream = bytearray()  # by the upstream that answered (a replay happens only before that)
        self.client_eof_sent = False
        self.linger_fired = 0
        for size in early:  # what a client sends with its first packets, before any connect can finish
            self.session.client_data(self._chunk(size, self.sent_by_client))

    # --- helpers ---------------------------------------------------------------------------------------
    @property
    def upstream(self) -> FakeSide | None:
        up = self.upstreams[-1] if self.upstreams else None
        return up if up is not None and self.session.upstream is up else None

    def _chunk(self, size: int, stream: bytearray) -> bytes:
        start = len(stream)
        data = bytes((start + i) % 251 for i in range(min(size, 4096))) * (size // 4096 + 1)
        data = data[:size]
        stream += data
        return data

    def _assert_reset_out(self) -> None:
        assert self.session.done
        assert self.client.closes == [True]
        up = self.upstream
        if up is not None:
            assert up.closes == [True]

    # --- client events -----------------------------------------------------------------------------------
    @precondition(lambda self: self.client.open and self.client.reading and not self.client_eof_sent)
    @rule(size=CHUNKS)
    def client_sends(self, size: int) -> None:
        self.session.client_data(self._chunk(size, self.sent_by_client))

    @precondition(lambda self: self.client.open and self.client.reading and not self.client_eof_sent)
    @rule()
    def client_floods(self) -> None:
        """The client uploads as fast as it can: full reads until it is paused (or 8 of them)."""
        for _ in range(8):
            if not (self.client.reading and self.client.open):
                break
            self.session.client_data(self._chunk(READ_CHUNK, self.sent_by_client))

    @precondition(lambda self: self.upstream is not None and self.upstream.open and self.upstream.reading
                  and not self.upstream.eofs_in)
    @rule()
    def upstream_floods(self) -> None:
        for _ in range(8):
            up = self.upstream
            if up is None or not (up.reading and up.open):
                break
            self.session.upstream_data(self._chunk(READ_CHUNK, self.sent_by_upstream))

    @precondition(lambda self: self.client.open and self.client.reading and not self.client_eof_sent)
    @rule()
    def client_eof(self) -> None:
        self.client_eof_sent = True
        self.session.client_eof_received()

    @precondition(lambda self: self.client.open)
    @rule(now=st.integers(0, 3))
    def client_resets(self, now: int) -> None:
        if now:
            return
        self.client.open = False
        self.session.client_lost(ConnectionResetError())
        self._assert_reset_out()

    @precondition(lambda self: self.client.open and self.client.buffered)
    @rule(size=st.sampled_from([1, 1000, 65536, 10**6]))
    def client_reads(self, size: int) -> None:
        self.client.drain(size)

    # --- upstream events ---------------------------------------------------------------------------------
    @precondition(lambda self: self.io.connecting and not self.session.done)
    @rule()
    def connect_succeeds(self) -> None:
        self.io.connecting = False
        self.io.taken += 1
        self.io.held.append(self.io.taken)
        up = FakeSide(f"upstream{len(self.upstreams)}")
        up.session = self.session
        self.upstreams.append(up)
        self.session.upstream_made(up)
        if self.header and up.writes:
            assert bytes(up.buffer[0]).startswith(self.header) or up.delivered.startswith(self.header)

    @precondition(lambda self: self.io.connecting and not self.session.done)
    @rule(now=st.integers(0, 3))
    def every_target_fails(self, now: int) -> None:
        if now:
            return
        self.io.connecting = False
        self.session.connect_failed()
        assert self.session.done

    @precondition(lambda self: self.upstream is not None and self.upstream.open and self.upstream.reading
                  and not self.upstream.eofs_in)
    @rule(size=CHUNKS)
    def upstream_sends(self, size: int) -> None:
        self.session.upstream_data(self._chunk(size, self.sent_by_upstream))

    @precondition(lambda self: self.upstream is not None and self.upstream.open and self.upstream.reading
                  and not self.upstream.eofs_in)
    @rule()
    def upstream_eof(self) -> None:
        up = self.upstream
        assert up is not None
        up.eofs_in = True
        self.session.upstream_eof_received()

    @precondition(lambda self: self.upstream is not None and self.upstream.open)
    @rule()
    def upstream_resets(self) -> None:
        up = self.upstream
        assert up is not None
        up.open = False
        answered = bool(self.sent_by_upstream) or up.eofs_in
        replayable = self.io.replay and not answered and len(self.sent_by_client) <= 64 * 1024
        retries = self.io.retries
        self.session.upstream_lost(ConnectionResetError())
        if self.io.retries > retries:
            assert replayable, "replayed although the target answered, the app did not opt in, or too much"
            assert not up.closes and not self.session.done
        else:
            assert not replayable, "a reset before any answer was passed on although the app opted in"
            self._assert_reset_out()

    @precondition(lambda self: self.upstream is not None and self.upstream.open and self.upstream.buffered)
    @rule(size=st.sampled_from([1, 1000, 65536, 10**6]))
    def upstream_reads(self, size: int) -> None:
        up = self.upstream
        assert up is not None
        up.drain(size)

    # --- deadlines and the owner -------------------------------------------------------------------------
    @precondition(lambda self: self.io.half_closed_calls and not self.linger_fired)
    @rule()
    def half_close_deadline(self) -> None:
        self.linger_fired += 1
        self.session.finish()

    @precondition(lambda self: not self.session.done)
    @rule(now=st.integers(0, 3))
    def idle_deadline_or_stop(self, now: int) -> None:
        if now == 0:  # a deadline is rarer than traffic: let most examples get somewhere first
            self.session.finish(reset=False)

    @precondition(lambda self: self.session.done)
    @rule()
    def transports_report_lost(self) -> None:
        self.session.client_lost(None)
        self.session.upstream_lost(None)

    # --- invariants --------------------------------------------------------------------------------------
    @invariant()
    def no_reading_while_paused(self) -> None:
        if self.session.done:
            return
        assert self.client.reading == (self.session.client_paused == 0)
        up = self.upstream
        if up is not None:
            assert up.reading == (self.session.upstream_paused == 0)

    @invariant()
    def buffers_stay_bounded(self) -> None:
        up = self.upstream
        upload = up.buffered if up is not None else self.session.pending_size
        assert upload <= UPLOAD_BOUND + len(self.header), upload
        assert self.client.buffered <= DOWNLOAD_BOUND, self.client.buffered

    @invariant()
    def bytes_arrive_in_order(self) -> None:
        for up in self.upstreams:
            assert up.delivered[:len(self.header)] == self.header[:len(up.delivered)]
            body = up.delivered[len(self.header):]
            assert body == self.sent_by_client[:len(body)]
        assert self.client.delivered == self.sent_by_upstream[:len(self.client.delivered)]

    @invariant()
    def eof_passed_on_at_once(self) -> None:
        if self.session.done:
            return
        up = self.upstream
        if up is not None and self.client_eof_sent:
            assert up.eofs == 1, "the client's EOF did not reach the upstream"
        if up is not None and up.eofs_in:
            assert self.client.eofs == 1, "the upstream's EOF did not reach the client"

    @invariant()
    def eof_only_after_everything(self) -> None:
        up = self.upstream
        if up is not None and up.eofs and not up.buffer and not up.closes:
            assert up.delivered == self.header + self.sent_by_client
        if self.client.eofs and not self.client.buffer and not self.client.closes:
            assert self.client.delivered == self.sent_by_upstream

    @invariant()
    def closed_once_and_counts_released_once(self) -> None:
        assert len(self.client.closes) <= 1
        for up in self.upstreams:
            assert len(up.closes) <= 1
        assert self.io.closed_calls == (1 if self.session.done else 0)
        assert self.io.half_closed_calls <= 1
        assert len(self.io.released) == len(set(self.io.released))
        if self.session.done:
            assert len(self.client.closes) == 1
            if self.upstream is not None:
                assert len(self.upstream.closes) == 1
            assert sorted(self.io.released) == list(range(1, self.io.taken + 1))
        else:
            assert len(self.io.released) + len(self.io.held) == self.io.taken


SessionMachine.TestCase.settings = settings(max_examples=200, stateful_step_count=50, deadline=None)
test_session = SessionMachine.TestCase
