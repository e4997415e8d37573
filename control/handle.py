"""What the supervisor knows of one worker: a small handle with an explicit state machine."""

from __future__ import annotations

import enum
from dataclasses import dataclass

from control.channel import WorkerChannel


class WorkerState(enum.Enum):
    STARTING = "starting"
    READY = "ready"
    DRAINING = "draining"
    EXITED = "exited"


_ALLOWED = {
    WorkerState.STARTING: {WorkerState.READY, WorkerState.DRAINING, WorkerState.EXITED},
    WorkerState.READY: {WorkerState.DRAINING, WorkerState.EXITED},
    WorkerState.DRAINING: {WorkerState.EXITED},
    WorkerState.EXITED: set(),
}


class IllegalTransition(Exception):
    pass


@dataclass(eq=False)
class WorkerHandle:
    slot: int
    pid: int
    channel: WorkerChannel
    started: float
    state: WorkerState = WorkerState.STARTING
    acked_version: int = 0
    unanswered_pings: int = 0

    def move_to(self, state: WorkerState) -> None:
        if state not in _ALLOWED[self.state]:
            raise IllegalTransition(f"worker {self.slot} (pid {self.pid}): {self.state.value} -> {state.value}")
        self.state = state
