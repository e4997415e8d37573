"""soak: a random mix of well- and badly-behaved clients for `--duration` seconds.

1. `--concurrency` workers loop until the duration ends (or `--connections` connections, if given). Each
   connection picks one behaviour: a full echo with half-close; a few messages on one connection then a
   half-close; write then close without reading; write then reset (SO_LINGER 0); open then close; open then
   reset.
2. The well-behaved ones must succeed; the abrupt ones must at least connect.
3. Checks: soak.failures (no unexpected failure), soak.alive (every port still echoes at the end),
   soak.cleanup (with --spawn-targets: every connection to a target is closed within --timeout seconds after
   the last client left, i.e. the proxy does not leak upstream connections of clients that vanished).
"""

from __future__ import annotations

import asyncio
import time

from tester import client
from tester.client import Failure
from tester.config import App
from tester.run import Run
from tester.scenarios.common import check_all_ok
from tester.stats import Outcome

BEHAVIOURS = (
    ("echo", 45),
    ("keepalive", 20),
    ("write_close", 10),
    ("write_reset", 10),
    ("open_close", 10),
    ("open_reset", 5),
)


async def run_soak(run: Run) -> None:
    duration = run.options.duration or 10.0
    limit = run.options.connections or 1_000_000
    deadline = time.monotonic() + duration
    app_ports = run.app_ports()
    names = [b for b, _ in BEHAVIOURS]
    weights = [w for _, w in BEHAVIOURS]
    started = 0
    run.progress.begin(f"soak {duration:g}s", None)

    async def worker() -> None:
        nonlocal started
        while time.monotonic() < deadline and started < limit:
            started += 1
            app, port = run.rng.choice(app_ports)
            behaviour = run.rng.choices(names, weights)[0]
            if behaviour == "echo":
                await run.echo_once(app, port, run.random_size(16, 256 * 1024))
            else:
                await abrupt(run, app, port, behaviour)

    await asyncio.gather(*(worker() for _ in range(run.options.concurrency)))
    run.extra["soak"] = {"connections": started, "duration_s": duration}
    check_all_ok(run, "soak.failures", f"during the {duration:g} s soak")

    dead = []
    for app, port in app_ports:
        outcome = await run.echo_once(app, port, 1024, record=False)
        if outcome.reason is not None:
            dead.append(f"{app.name}:{port} ({outcome.reason}: {outcome.detail})")
    run.check(
        "soak.alive",
        not dead,
        f"no echo after the soak on {', '.join(dead)}"
        if dead
        else f"all {len(app_ports)} ports echo after the soak",
    )
    if run.pool is not None:
        idle = await run.pool.wait_idle(run.options.timeout)
        run.check(
            "soak.cleanup",
            idle,
            f"{run.pool.open_connections} connections to targets still open {run.options.timeout:g} s "
            "after every client closed"
            if not idle
            else "every connection to a target was closed",
        )


async def abrupt(run: Run, app: App, port: int, behaviour: str) -> None:
    """A connection that misbehaves on purpose; only failing to connect (or a broken keepalive) counts."""
    outcome = Outcome(app.name, port)
    token, payload = run.payload(run.random_size(16, 64 * 1024))
    try:
        stream, outcome.connect_us = await client.connect(run.options.proxy_host, port, run.options.timeout)
        writer = stream[1]
        if behaviour == "keepalive":
            try:
                outcome.received, outcome.rtt_us = await client.echo(
                    stream, payload, run.options.timeout, False
                )
                for _ in range(run.rng.randint(1, 4)):
                    _, message = run.payload(run.random_size(16, 16 * 1024))
                    outcome.received += (await client.echo(stream, message, run.options.timeout, False))[0]
                # An empty half-close: the proxy must pass the FIN on and the target's FIN back.
                await client.echo(stream, b"", run.options.timeout)
                outcome.sent = outcome.received
            finally:
                await client.close(writer)
        else:
            if behaviour.startswith("write"):
                writer.write(payload)
                outcome.sent = len(payload)
            if behaviour.endswith("reset"):
                client.reset(writer)
            else:
                await client.close(writer)
    except Failure as failure:
        outcome.reason, outcome.detail = failure.reason, failure.detail
    if behaviour == "keepalive":
        run.attribute(app, token, outcome)
    run.record(outcome)
