"""The scenarios, by name. Each is `async def (run: Run) -> None` and adds its checks to the run."""

from __future__ import annotations

from collections.abc import Awaitable, Callable

from tester.run import Run
from tester.scenarios.balance import run_balance
from tester.scenarios.failover import run_failover
from tester.scenarios.reload import run_reload
from tester.scenarios.smoke import run_smoke
from tester.scenarios.soak import run_soak
from tester.scenarios.throughput import run_throughput

SCENARIOS: dict[str, Callable[[Run], Awaitable[None]]] = {
    "smoke": run_smoke,
    "balance": run_balance,
    "failover": run_failover,
    "reload": run_reload,
    "soak": run_soak,
    "throughput": run_throughput,
}
