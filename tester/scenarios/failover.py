"""failover: one spawned target stops accepting mid-run; clients must not notice.

Closing a listener resets the connections still in its accept queue: a proxy only hides those from clients
when it replays their bytes to another target (skiff: the app's "RetryOnReset": true). Without that opt-in a
few clients may lose their connection, as with HAProxy and Envoy, and failover.no_failures says so.

1. Pick the first app with two or more spawned targets; its first spawned target is the victim.
2. Run `--connections` connections per port (default 40) over every port of every app.
3. When half of them are done, close the victim's listening socket (in-flight connections carry on).
4. Checks: failover.exercised (the victim served before it stopped and the app kept getting traffic after),
   failover.no_failures (no connection failed for any reason), failover.routing.
"""

from __future__ import annotations

import asyncio
from collections.abc import Awaitable, Callable

from tester.config import App
from tester.run import Run, run_jobs
from tester.scenarios.common import check_all_ok, check_failures


async def run_failover(run: Run) -> None:
    pool = run.pool
    candidates = [app for app in run.apps if len(run.spawned_targets(app)) >= 2 and app.ports]
    if pool is None or not candidates:
        run.check("failover.setup", False, "failover needs --spawn-targets and an app with two local targets")
        return
    app = candidates[0]
    victim = run.spawned_targets(app)[0]
    per_port = run.options.connections or 40
    total = per_port * len(run.app_ports())
    half = asyncio.Event()
    served_before = 0
    after_stop = 0

    async def one(a: App, port: int) -> None:
        nonlocal after_stop
        stopped = half.is_set()
        outcome = await run.echo_once(a, port, run.random_size(16, 64 * 1024))
        if stopped and outcome.app == app.name and outcome.reason is None:
            after_stop += 1
        if run.recorder.total >= total // 2 and not half.is_set():
            half.set()

    jobs: list[Callable[[], Awaitable[object]]] = [
        lambda a=a, p=p: one(a, p)  # type: ignore[misc]
        for _ in range(per_port)
        for a, p in run.app_ports()
    ]
    run.progress.begin("failover", total)

    async def stop_victim() -> None:
        nonlocal served_before
        await half.wait()
        served_before = pool.accepted[victim]
        pool.stop(victim)
        run.mark(f"stopped {victim}")
        run.progress.note(f"stopped {victim}")

    stopper = asyncio.ensure_future(stop_victim())
    await run_jobs(jobs, run.options.concurrency)
    stopper.cancel()
    run.extra["failover"] = {
        "app": app.name,
        "stopped": victim,
        "served_before_stop": served_before,
        "ok_after_stop": after_stop,
    }
    exercised = served_before > 0 and after_stop > 0
    run.check(
        "failover.exercised",
        exercised,
        f"stopped {victim} of {app.name} after it served {served_before}; "
        f"{after_stop} connections to {app.name} succeeded after the stop",
    )
    check_all_ok(run, "failover.no_failures", f"while {victim} was stopped and another target was up")
    check_failures(run, "failover", suffixes=("routing",))
