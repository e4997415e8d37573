"""throughput: bulk bytes through the proxy, integrity checked, reported in Gbit/s.

1. `--connections` connections (default 4), `--concurrency` at a time, spread over all ports.
2. Each sends `--bytes` bytes (default 16 MiB), half-closes, and hashes the echo (SHA-256 both ways).
3. Reports goodput: bytes echoed back to clients per second of wall time. The proxy carried twice that
   (both directions). Checks: throughput.connections, .integrity, .half_close, .routing.
"""

from __future__ import annotations

import time
from collections.abc import Awaitable, Callable

from tester import client
from tester.client import Failure
from tester.config import App
from tester.run import Run, run_jobs
from tester.scenarios.common import check_failures
from tester.stats import Outcome


async def run_throughput(run: Run) -> None:
    n = run.options.connections or 4
    total = run.options.bytes
    block = run.rng.randbytes(1024 * 1024)
    app_ports = run.app_ports()

    async def one(app: App, port: int) -> None:
        token, _ = run.payload(0)
        outcome = Outcome(app.name, port)
        try:
            stream, outcome.connect_us = await client.connect(
                run.options.proxy_host, port, run.options.timeout
            )
            try:
                outcome.received, outcome.rtt_us = await client.bulk(
                    stream, token, block, total, run.options.timeout
                )
                outcome.sent = total
            finally:
                await client.close(stream[1])
        except Failure as failure:
            outcome.reason, outcome.detail = failure.reason, failure.detail
        run.attribute(app, token, outcome)
        run.record(outcome)

    spread = [app_ports[i % len(app_ports)] for i in range(n)]
    jobs: list[Callable[[], Awaitable[object]]] = [
        lambda ap=ap: one(*ap)  # type: ignore[misc]
        for ap in spread
    ]
    run.progress.begin(f"throughput {n}x{total >> 20} MiB", n)
    start = time.perf_counter()
    await run_jobs(jobs, min(run.options.concurrency, n))
    elapsed = time.perf_counter() - start
    echoed = sum(s.bytes_received for s in run.recorder.ports.values())
    gbps = echoed * 8 / elapsed / 1e9 if elapsed > 0 else 0.0
    run.extra["throughput"] = {
        "gbit_per_s": round(gbps, 3),
        "bytes_echoed": echoed,
        "seconds": round(elapsed, 3),
        "connections": n,
    }
    check_failures(run, "throughput")
