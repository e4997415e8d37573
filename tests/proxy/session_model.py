"""A model of what the relay's state machine talks to: asyncio transports (`FakeSide`) and the adapter's hooks
with the owner's counts (`FakeIO`, played through `ModelSession`). Shared by the property and example tests."""

from __future__ import annotations

from proxy.session import WRITE_HIGH_WATER, WRITE_LOW_WATER, Session, Side


class FakeSide:
    """One socket as a transport presents it to the session; `delivered` is what reached the peer."""

    def __init__(self, name: str) -> None:
        self.name = name
        self.session: Session | None = None
        self.buffer: list[bytes] = []
        self.buffered = 0
        self.delivered = bytearray()
        self.writes = 0
        self.reading = True
        self.writing_paused = False
        self.eofs = 0  # write_eof calls
        self.closes: list[bool] = []  # one entry per close, True for a reset
        self.open = True  # the peer can still send events (no reset, not closed)
        self.eofs_in = False  # the peer sent EOF

    def _check_open(self, what: str) -> None:
        assert not self.closes, f"{what} on {self.name} after it was closed"

    def write(self, data: bytes) -> None:
        self._check_open("write")
        assert not self.eofs, f"write on {self.name} after write_eof"
        self.writes += 1
        self.buffer.append(data)
        self.buffered += len(data)
        self._maybe_full()

    def writelines(self, data: list[bytes]) -> None:
        for chunk in list(data):
            self.write(chunk)

    def write_eof(self) -> None:
        self._check_open("write_eof")
        assert not self.eofs, f"second write_eof on {self.name}"
        self.eofs += 1

    def pause_reading(self) -> None:
        self._check_open("pause_reading")
        assert self.reading, f"pause_reading on {self.name}, already paused"
        self.reading = False

    def resume_reading(self) -> None:
        self._check_open("resume_reading")
        assert not self.reading, f"resume_reading on {self.name}, not paused"
        self.reading = True

    def _maybe_full(self) -> None:
        if self.buffered > WRITE_HIGH_WATER and not self.writing_paused:
            self.writing_paused = True
            assert self.session is not None
            if self.name == "client":
                self.session.client_full()
            else:
                self.session.upstream_full()

    def drain(self, count: int) -> None:
        """The kernel takes up to count bytes from the write buffer."""
        while count > 0 and self.buffer:
            head = self.buffer[0]
            taken = head[:count]
            self.delivered += taken
            count -= len(taken)
            self.buffered -= len(taken)
            if len(taken) == len(head):
                self.buffer.pop(0)
            else:
                self.buffer[0] = head[len(taken):]
        if self.writing_paused and self.buffered <= WRITE_LOW_WATER:
            self.writing_paused = False
            assert self.session is not None
            if self.name == "client":
                self.session.client_drained()
            else:
                self.session.upstream_drained()


class FakeIO:
    """The adapter's side of the machine's hooks, with the owner's counts: one admission slot, one count per
    target."""

    def __init__(self, replay: bool) -> None:
        self.replay = replay
        self.closed_calls = 0
        self.half_closed_calls = 0
        self.retries = 0
        self.held: list[int] = []  # targets whose count this connection holds
        self.taken = 0
        self.released: list[int] = []
        self.connecting = True

    def close_side(self, side: Side, reset: bool) -> None:
        assert isinstance(side, FakeSide)
        side.closes.append(reset)
        side.open = False

    def half_closed(self) -> None:
        self.half_closed_calls += 1

    def may_replay(self) -> bool:
        return self.replay

    def release_target(self) -> None:
        self.released.append(self.held.pop())

    def retry(self, exc: BaseException) -> None:
        self.retries += 1
        self.connecting = True

    def closed(self) -> None:
        self.closed_calls += 1
        self.connecting = False
        while self.held:  # what the worker's finished() does with the relay's target
            self.released.append(self.held.pop())


class ModelSession(Session):
    """The machine with its hooks played by a FakeIO, as workers/relay.py's ClientSide plays them for real."""

    __slots__ = ("io",)

    def __init__(self, io: FakeIO, client: FakeSide) -> None:
        super().__init__(client)
        self.io = io

    def close_side(self, side: Side, reset: bool) -> None:
        self.io.close_side(side, reset)

    def start_half_close_timer(self) -> None:
        self.io.half_closed()

    def may_replay(self) -> bool:
        return self.io.may_replay()

    def release_target(self) -> None:
        self.io.release_target()

    def retry(self, exc: BaseException) -> None:
        self.io.retry(exc)

    def closed(self) -> None:
        self.io.closed()
