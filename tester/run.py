"""The state one test run shares across its scenario: options, config, spawned targets, counters, checks.

`Run.echo_once` is the unit every scenario builds on: one connection, one payload, one classified `Outcome`.
"""

from __future__ import annotations

import asyncio
import random
import socket
import time
from collections.abc import Awaitable, Callable, Iterable
from dataclasses import dataclass, field
from pathlib import Path

from tester import client
from tester.client import Failure
from tester.config import App
from tester.progress import Progress
from tester.stats import Outcome, Recorder, Timeline
from tester.targets import TOKEN_LEN, TargetPool


@dataclass
class Options:
    scenario: str
    config: Path
    proxy_host: str = "127.0.0.1"
    spawn_targets: bool = False
    connections: int | None = None
    concurrency: int = 16
    duration: float | None = None
    seed: int = 1
    timeout: float = 5.0
    wait_ready: float = 0.0
    bytes: int = 16 * 1024 * 1024
    max_size: int = 1024 * 1024
    min_fairness: float = 0.8
    reload_deadline: float = 5.0
    json: Path | None = None
    html: Path | None = None
    quiet: bool = False
    edit_config: bool = False
    metrics: str | None = None


@dataclass(frozen=True)
class Check:
    name: str
    ok: bool
    message: str


@dataclass
class Run:
    options: Options
    apps: list[App]
    pool: TargetPool | None
    progress: Progress
    recorder: Recorder = field(init=False)
    timeline: Timeline = field(default_factory=lambda: Timeline(time.monotonic()))
    checks: list[Check] = field(default_factory=list)
    extra: dict[str, object] = field(default_factory=dict)
    rng: random.Random = field(init=False)
    _serial: int = 0

    def __post_init__(self) -> None:
        self.recorder = Recorder(self.ports())
        self.rng = random.Random(self.options.seed)

    def ports(self) -> list[tuple[str, int]]:
        return [(app.name, port) for app in self.apps for port in app.ports]

    def app_ports(self) -> list[tuple[App, int]]:
        return [(app, port) for app in self.apps for port in app.ports]

    def mark(self, label: str) -> None:
        """A moment the timeline shows (a reload, a target stopped)."""
        self.timeline.mark(label, time.monotonic())

    def completed(self, only: set[tuple[str, int]] | None = None) -> int:
        """Connections that got their whole echo back (on the given (app, port) pairs)."""
        return sum(s.ok for key, s in self.recorder.ports.items() if only is None or key in only)

    def check(self, name: str, ok: bool, message: str) -> None:
        self.checks.append(Check(name, ok, message))

    def payload(self, size: int) -> tuple[bytes, bytes]:
        """(token, payload): the token is the payload's first TOKEN_LEN bytes and unique within the run."""
        self._serial += 1
        token = self._serial.to_bytes(8, "big") + self.rng.randbytes(TOKEN_LEN - 8)
        return token, token + self.rng.randbytes(max(size, TOKEN_LEN) - TOKEN_LEN)

    def random_size(self, low: int = TOKEN_LEN, high: int | None = None) -> int:
        """Log-uniform, so a run sees many small payloads and still some near the maximum."""
        high = high or self.options.max_size
        size = round(2 ** self.rng.uniform(low.bit_length() - 1, high.bit_length() - 1))
        return min(max(size, low), high)

    def spawned_targets(self, app: App) -> list[str]:
        return [t for t in app.targets if self.pool is not None and t in self.pool.servers]

    async def echo_once(self, app: App, port: int, size: int, record: bool = True) -> Outcome:
        """One connection: send a fresh payload, half-close, check the whole echo and who served it."""
        token, payload = self.payload(size)
        outcome = Outcome(app.name, port)
        try:
            stream, outcome.connect_us = await client.connect(
                self.options.proxy_host, port, self.options.timeout
            )
            try:
                outcome.received, outcome.rtt_us = await client.echo(stream, payload, self.options.timeout)
                outcome.sent = len(payload)
            finally:
                await client.close(stream[1])
        except Failure as failure:
            outcome.reason, outcome.detail = failure.reason, failure.detail
        self.attribute(app, token, outcome)
        if record:
            self.record(outcome)
        return outcome

    def attribute(self, app: App, token: bytes, outcome: Outcome) -> None:
        """Fill in the serving target, and fail a connection that another app's target (or no one) served."""
        if self.pool is None:
            return
        outcome.target = self.pool.served_by(token)
        if outcome.reason is not None:
            return
        if outcome.target is None:
            if outcome.sent and len(self.spawned_targets(app)) == len(app.targets):
                outcome.reason = "wrong_app"
                outcome.detail = "echoed, but by none of the app's targets"
        elif outcome.target not in app.targets:
            owners = ", ".join(a.name for a in self.apps if outcome.target in a.targets) or "no app"
            outcome.reason = "wrong_app"
            outcome.detail = f"served by {outcome.target}, a target of {owners}"

    def record(self, outcome: Outcome) -> None:
        self.recorder.record(outcome)
        self.timeline.record(outcome, time.monotonic())
        self.progress.advance()


async def run_jobs(
    jobs: Iterable[Callable[[], Awaitable[object]]], concurrency: int, deadline: float | None = None
) -> None:
    """Run jobs, at most `concurrency` at a time; take no new one after `deadline` (monotonic clock)."""
    iterator = iter(jobs)

    async def worker() -> None:
        for job in iterator:
            if deadline is not None and time.monotonic() >= deadline:
                return
            await job()

    await asyncio.gather(*(worker() for _ in range(max(1, concurrency))))


def free_port(host: str) -> int:
    """A port the kernel says is free now (it may be taken again before use; tests accept that small race)."""
    family = socket.AF_INET6 if ":" in host else socket.AF_INET
    with socket.socket(family, socket.SOCK_STREAM) as sock:
        sock.bind((host, 0))
        port: int = sock.getsockname()[1]
        return port


async def wait_ready(host: str, port: int, seconds: float) -> bool:
    """Retry connecting until something listens on host:port; False when `seconds` pass first."""
    deadline = time.monotonic() + seconds
    while True:
        try:
            stream, _ = await client.connect(host, port, max(0.1, deadline - time.monotonic()))
        except Failure:
            if time.monotonic() >= deadline:
                return False
            # Polling is the only way to learn that another process started listening.
            await asyncio.sleep(0.05)
            continue
        await client.close(stream[1])
        return True
