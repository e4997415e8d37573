"""Active health checks: TCP connects to each target of an app with `"HealthCheck"`, like Fly's `tcp_checks`.

Who checks: every target is checked by exactly one worker, the one whose slot is the target's cell modulo the
number of workers, and the verdict goes to the target's cell in the shared health row (proxy/counters.py),
which every worker's balancer reads. So the check traffic is one connect per target per interval, whatever the
number of workers, the work is spread over the workers, and a respawned worker picks up the verdicts where
its predecessor left them. Targets start in rotation; `Fall` failures in a row take one out, `Rise` passes in
a row put it back. Passive marking (a failed client connect backs the target off) still applies on top.
"""

from __future__ import annotations

import asyncio
import errno
import logging
import time
from collections.abc import Mapping
from dataclasses import dataclass

from proxy.config import HealthCheck, Target
from proxy.counters import HEALTH_DOWN, HEALTH_UP, CounterTable, target_key
from proxy.logs import log_event
from workers.resolver import ResolveError, Resolver
from workers.routes import RoutingTable, literal_address

log = logging.getLogger("worker")


@dataclass(frozen=True, slots=True)
class CheckSpec:
    app: str
    target: Target
    check: HealthCheck
    cell: int


class HealthChecker:
    def __init__(self, slot: int, counters: CounterTable, resolver: Resolver) -> None:
        self.slot = slot
        self.counters = counters
        self.resolver = resolver
        self.tasks: dict[CheckSpec, asyncio.Task[None]] = {}
        self.loop = asyncio.get_running_loop()

    def apply(self, table: RoutingTable, cells: Mapping[str, int]) -> None:
        """Start the checks this worker owns in `table`, stop those it no longer does (between events)."""
        wanted: set[CheckSpec] = set()
        for name, route in table.apps.items():
            check = route.app.health_check
            if check is None:
                continue
            for state in route.targets:
                index = cells.get(target_key(name, state.target))
                if index is not None and index % self.counters.workers == self.slot:
                    wanted.add(CheckSpec(name, state.target, check, index))
        checked = {spec.cell for spec in wanted}
        for spec in [s for s in self.tasks if s not in wanted]:
            self.tasks.pop(spec).cancel()
            if spec.cell not in checked:
                self.counters.set_health(spec.cell, HEALTH_UP)  # no longer checked: back to passive marking only
        for spec in wanted - self.tasks.keys():
            self.tasks[spec] = self.loop.create_task(self.run(spec))

    def stop(self) -> None:
        for task in self.tasks.values():
            task.cancel()
        self.tasks.clear()

    async def run(self, spec: CheckSpec) -> None:
        passes = failures = 0
        check = spec.check
        while True:
            started = self.loop.time()
            error = await self.probe(spec.target, check.timeout)
            if error != "fds":
                self.counters.set_checked(spec.cell, time.time(), error)  # the status page's "last check"
            if error is None:
                passes, failures = passes + 1, 0
            elif error != "fds":  # out of descriptors says nothing about the target
                passes, failures = 0, failures + 1
            down = self.counters.health(spec.cell) == HEALTH_DOWN
            if down and passes >= check.rise:
                self.counters.set_health(spec.cell, HEALTH_UP)
                log_event(log, logging.INFO, "health_up",
                          f"target {spec.target} of app {spec.app} passed {passes} health checks: back in rotation",
                          app=spec.app, target=str(spec.target), worker=self.slot)
            elif not down and failures >= check.fall:
                self.counters.set_health(spec.cell, HEALTH_DOWN)
                log_event(log, logging.WARNING, "health_down",
                          f"target {spec.target} of app {spec.app} failed {failures} health checks ({error}): "
                          "out of rotation", app=spec.app, target=str(spec.target), worker=self.slot, error=error)
            await asyncio.sleep(max(0.0, check.interval - (self.loop.time() - started)))

    async def probe(self, target: Target, timeout: float) -> str | None:
        """None when a TCP connection to the target opens within `timeout`, else why not."""
        try:
            async with asyncio.timeout(timeout):
                host = literal_address(target.host) or await self.resolver.resolve(target.host)
                transport, _ = await self.loop.create_connection(asyncio.Protocol, host, target.port)
        except TimeoutError:
            return "timeout"
        except ResolveError:
            return "dns"
        except OSError as exc:
            if exc.errno in (errno.EMFILE, errno.ENFILE):
                return "fds"
            return "refused" if isinstance(exc, ConnectionRefusedError) else "error"
        transport.close()
        return None
