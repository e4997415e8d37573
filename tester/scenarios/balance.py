"""balance: how evenly each app's connections spread over its targets.

1. For each app, `--connections` connections (default 200) spread round-robin over its ports, small payloads.
2. Count the serving target of each (needs --spawn-targets: only the tester's own targets are attributable).
3. Checks: balance.coverage (every running target got at least one connection), balance.fairness (Jain's
   index over the running targets >= --min-fairness), plus the usual failure checks.
"""

from __future__ import annotations

from collections.abc import Awaitable, Callable

from tester.run import Run, run_jobs
from tester.scenarios.common import check_failures
from tester.stats import jain_index


async def run_balance(run: Run) -> None:
    if run.pool is None:
        run.check("balance.setup", False, "balance needs --spawn-targets to know which target served what")
        return
    per_app = run.options.connections or 200
    jobs: list[Callable[[], Awaitable[object]]] = []
    for i in range(per_app):
        for app in run.apps:
            if app.ports:
                port = app.ports[i % len(app.ports)]
                size = run.random_size(16, 4096)
                jobs.append(lambda app=app, port=port, size=size: run.echo_once(app, port, size))  # type: ignore[misc]
    run.progress.begin("balance", len(jobs))
    await run_jobs(jobs, run.options.concurrency)
    check_failures(run, "balance")

    uncovered, unfair, fairness = [], [], {}
    for app in run.apps:
        up = [t for t in run.spawned_targets(app) if run.pool.running(t)]
        if not up or not app.ports:
            continue
        counts = run.recorder.app_targets(app.name)
        shares = [counts[t] for t in up]
        index = jain_index(shares)
        ratio = max(shares) / min(shares) if min(shares) else None
        fairness[app.name] = {
            "jain": round(index, 4),
            "max_min": round(ratio, 3) if ratio else None,
            "shares": dict(zip(up, shares, strict=True)),
        }
        uncovered += [
            f"target {t} of {app.name} got 0 of {sum(shares)} connections"
            for t, n in zip(up, shares, strict=True)
            if n == 0
        ]
        if index < run.options.min_fairness:
            unfair.append(
                f"{app.name}: Jain index {index:.3f} < {run.options.min_fairness:g} (shares {shares})"
            )
    run.extra["fairness"] = fairness
    run.check("balance.coverage", not uncovered, "; ".join(uncovered) or "every running target was used")
    summary = ", ".join(f"{name} {f['jain']}" for name, f in fairness.items())
    run.check("balance.fairness", not unfair, "; ".join(unfair) or f"Jain index {summary}")
