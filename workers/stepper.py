"""One coroutine driven by hand, where a Task would cost more than the coroutine's own work.

A client's first connect is uvloop's `create_connection` to an IP address: a coroutine that waits on exactly one
future (the connect). A Task around it registers in asyncio's set of all tasks (Python code on a weak set, on
creation and again on death) and takes a trip through the ready queue before its first step. `Stepper` takes
the first step at once and each further step from the awaited future's done callback, which is all a Task does
for a coroutine nobody awaits; the owner hears the outcome once, through `on_done(error, result)`.

It answers `done()` and `cancel()` like the Task it stands in for: cancelling cancels the awaited future, and the
coroutine sees CancelledError at its `await` and cleans up as it would under a Task.
"""

from __future__ import annotations

import asyncio
from collections.abc import Callable, Coroutine
from typing import Any


class Stepper:
    __slots__ = ("coro", "finished", "loop", "on_done", "waiting")

    def __init__(self, loop: asyncio.AbstractEventLoop, coro: Coroutine[Any, Any, Any],
                 on_done: Callable[[BaseException | None, Any], None]) -> None:
        self.loop = loop
        self.coro = coro
        self.on_done = on_done
        self.waiting: asyncio.Future[Any] | None = None
        self.finished = False

    def done(self) -> bool:
        return self.finished

    def cancel(self, msg: Any = None) -> bool:
        """Cancel what the coroutine awaits; it sees CancelledError on its next step. False once it has ended."""
        if self.finished:
            return False
        if self.waiting is not None:
            self.waiting.cancel(msg)
        else:
            self.coro.close()
            self.end(asyncio.CancelledError(), None)
        return True

    def step(self, _: object = None) -> None:
        """Run the coroutine to its next await (the first call starts it)."""
        if self.finished:
            return
        self.waiting = None
        try:
            awaited = self.coro.send(None)
        except StopIteration as stop:
            self.end(None, stop.value)
        except (KeyboardInterrupt, SystemExit):
            raise
        except BaseException as exc:  # CancelledError too: the owner tells a cancel from a failure
            self.end(exc, None)
        else:
            if awaited is None:  # a bare yield (asyncio.sleep(0)): step again on the next loop turn
                self.loop.call_soon(self.step)
                return
            self.waiting = awaited
            awaited.add_done_callback(self.step)

    def end(self, error: BaseException | None, result: Any) -> None:
        self.finished = True
        self.on_done(error, result)
