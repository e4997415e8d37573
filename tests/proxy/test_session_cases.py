"""The relay's state machine, case by case: defect 1 of issue 13 and the replay rule (RetryOnReset)."""

from __future__ import annotations

from proxy.session import READ_CHUNK, Session
from tests.proxy.session_model import FakeIO, FakeSide, ModelSession


def test_upload_to_a_slow_target_after_a_slow_connect_stays_bounded() -> None:
    """Defect 1 by hand: early bytes pass their limit, the connect writes them and the upstream's buffer is
    over high water at once; the client must stay paused until the upstream drains, not resume."""
    io = FakeIO(replay=False)
    client = FakeSide("client")
    session = ModelSession(io, client)
    client.session = session
    while client.reading:
        session.client_data(bytes(READ_CHUNK))
    up = FakeSide("upstream")
    up.session = session
    session.upstream_made(up)
    assert up.writing_paused
    assert not client.reading, "the client resumed while the upstream's buffer is above high water"
    up.drain(up.buffered)
    assert client.reading


def _connected(replay: bool, early: bytes) -> tuple[Session, FakeIO, FakeSide, FakeSide]:
    io = FakeIO(replay=replay)
    client = FakeSide("client")
    session = ModelSession(io, client)
    client.session = session
    session.client_data(early)
    io.taken, io.held = 1, [1]
    up = FakeSide("upstream")
    up.session = session
    session.upstream_made(up)
    return session, io, client, up


def test_a_reset_after_the_first_answer_is_passed_on_even_with_retry_on_reset() -> None:
    session, io, client, up = _connected(replay=True, early=b"request")
    session.upstream_data(b"partial answer")
    session.upstream_lost(ConnectionResetError())
    assert io.retries == 0
    assert client.closes == [True] and up.closes == [True]
    assert io.released == [1]


def test_a_reset_before_the_answer_replays_only_with_retry_on_reset() -> None:
    for replay in (False, True):
        session, io, client, _ = _connected(replay=replay, early=b"request")
        session.upstream_lost(ConnectionResetError())
        assert io.retries == (1 if replay else 0)
        assert client.closes == ([] if replay else [True])
        assert io.released == [1]
        if replay:
            again = FakeSide("again")
            again.session = session
            session.upstream_made(again)
            assert again.buffer == [b"request"]


def test_a_reset_before_the_client_sent_anything_is_retried_with_retry_on_reset() -> None:
    """A queued connection reset by a closing listener, before the client's first byte: nothing to replay,
    but the client must still get the next target."""
    io = FakeIO(replay=True)
    client = FakeSide("client")
    session = ModelSession(io, client)
    client.session = session
    io.taken, io.held = 1, [1]
    up = FakeSide("upstream")
    up.session = session
    session.upstream_made(up)
    session.upstream_lost(ConnectionResetError())
    assert io.retries == 1 and not client.closes
