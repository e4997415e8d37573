"""A bounded outbox for one end of the supervisor <-> worker channel: frames wait here until the socket takes them.

Pure: frames in, byte ranges out, no sockets. The owner (the supervisor's selector or a worker's event loop)
asks `head()` for what to write next, writes what the non-blocking socket accepts, and reports it with
`sent(n)`. Descriptors travel with the first byte of their frame and are never sent twice.

Delivery classes: snapshots, socket hand-overs and acknowledgements are never dropped; a frame pushed with a
`coalesce` key replaces nothing but is skipped while an unsent frame with the same key is queued (a ping or a
pong need not queue behind itself). When more than `limit` bytes wait, the peer is not reading: `push` says so
by returning False, and the owner treats the peer as hung (nothing is queued past the limit).

Descriptors pushed here belong to the outbox until they are sent or dropped (the owner pushes duplicates, so a
socket closed meanwhile by a reload can never turn into another file under the same number): `sent` and
`clear` return the ones the owner must now close.
"""

from __future__ import annotations

from collections import deque
from dataclasses import dataclass

DEFAULT_LIMIT = 64 * 1024 * 1024  # a few snapshots of the largest configs: more than this and the peer is stuck


@dataclass(slots=True)
class _Frame:
    data: bytes
    fds: tuple[int, ...]
    key: str | None
    offset: int = 0


class Outbox:
    def __init__(self, limit: int = DEFAULT_LIMIT) -> None:
        self.limit = limit
        self._frames: deque[_Frame] = deque()
        self._bytes = 0  # unsent bytes over every queued frame
        self._keys: dict[str, int] = {}  # coalesce key -> queued unsent frames with that key

    def push(self, data: bytes, fds: tuple[int, ...] = (), coalesce: str | None = None) -> bool:
        """Queue a frame; False when the outbox is over its limit (the frame is not queued)."""
        if coalesce is not None and self._keys.get(coalesce):
            return True
        if self._bytes + len(data) > self.limit:
            return False
        self._frames.append(_Frame(data, fds, coalesce))
        self._bytes += len(data)
        if coalesce is not None:
            self._keys[coalesce] = self._keys.get(coalesce, 0) + 1
        return True

    def head(self) -> tuple[memoryview, tuple[int, ...]] | None:
        """The unsent bytes of the first frame and the descriptors that must go with them (empty once any
        byte of the frame went); None when nothing waits."""
        if not self._frames:
            return None
        frame = self._frames[0]
        return memoryview(frame.data)[frame.offset:], (frame.fds if frame.offset == 0 else ())

    def sent(self, count: int) -> tuple[int, ...]:
        """`count` bytes (more than 0) of the head frame were written, with its descriptors if any were due;
        returns those descriptors, which the owner closes (the peer has its own copies now)."""
        frame = self._frames[0]
        fds = frame.fds if frame.offset == 0 else ()
        frame.offset += count
        self._bytes -= count
        if frame.offset >= len(frame.data):
            self._frames.popleft()
            if frame.key is not None:
                self._keys[frame.key] -= 1
        return fds

    def clear(self) -> list[int]:
        """Drop everything (the peer is gone); returns the descriptors that were never sent."""
        fds = [fd for frame in self._frames if frame.offset == 0 for fd in frame.fds]
        self._frames.clear()
        self._keys.clear()
        self._bytes = 0
        return fds

    def __bool__(self) -> bool:
        return bool(self._frames)

    @property
    def size(self) -> int:
        return self._bytes
