"""smoke: every port of every app echoes payloads of varied sizes, byte for byte, via one of its own targets.

1. For each port, `--connections` connections (default 20): the first sends 16 bytes, the second
   `--max-size`, the rest log-uniform sizes in between.
2. Each connection sends its payload, shuts down its sending side, and reads the echo to EOF.
3. Checks: smoke.connections, smoke.integrity, smoke.half_close, smoke.routing, smoke.coverage.
"""

from __future__ import annotations

from collections.abc import Awaitable, Callable

from tester.run import Run, run_jobs
from tester.scenarios.common import check_failures


async def run_smoke(run: Run) -> None:
    per_port = run.options.connections or 20
    jobs: list[Callable[[], Awaitable[object]]] = []
    for app, port in run.app_ports():
        for i in range(per_port):
            size = 16 if i == 0 else run.options.max_size if i == 1 else run.random_size()
            jobs.append(lambda app=app, port=port, size=size: run.echo_once(app, port, size))  # type: ignore[misc]
    # Interleave ports so a slow port does not hide behind the others' progress.
    ordered = [jobs[i] for r in range(per_port) for i in range(r, len(jobs), per_port)]
    run.progress.begin("smoke", len(ordered))
    await run_jobs(ordered, run.options.concurrency)
    check_failures(run, "smoke")
    silent = [f"{s.app}:{s.port}" for s in run.recorder.ports.values() if s.ok == 0]
    run.check(
        "smoke.coverage",
        not silent,
        f"no successful connection on {', '.join(silent)}" if silent else "every port echoed",
    )
