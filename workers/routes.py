"""The worker's routing table: which app serves a port, and each app's targets with their live state."""

from __future__ import annotations

import ipaddress
from dataclasses import dataclass, field
from functools import lru_cache

from proxy.balancer import Shared, TargetState
from proxy.config import App, Config
from proxy.counters import CONNECT_BUCKETS, AppStats

__all__ = ["CONNECT_BUCKETS", "AppRoute", "AppStats", "RoutingTable", "build_table", "literal_address"]


@dataclass(slots=True, eq=False)
class AppRoute:
    """One app as a worker serves it."""

    app: App
    targets: list[TargetState]
    stats: AppStats = field(default_factory=AppStats)  # this worker's counters of the app (bound by workers.policy)
    shared: Shared | None = None  # the app's connection count across workers (bound by workers.policy)


@dataclass(slots=True)
class RoutingTable:
    version: int
    apps: dict[str, AppRoute]
    by_port: dict[int, AppRoute]


def build_table(version: int, config: Config, previous: RoutingTable | None) -> RoutingTable:
    """A new table; target state (health, outstanding counts) carries over for targets that stay in their app."""
    apps: dict[str, AppRoute] = {}
    for app in config.apps:
        old = previous.apps.get(app.name) if previous else None
        old_states = {s.target: s for s in old.targets} if old else {}
        targets = [old_states.get(t) or TargetState(t) for t in app.targets]
        apps[app.name] = AppRoute(app, targets, old.stats, old.shared) if old else AppRoute(app, targets)
    by_port = {port: apps[app.name] for app in config.apps for port in app.ports}
    return RoutingTable(version, apps, by_port)


@lru_cache(maxsize=4096)
def literal_address(host: str) -> str | None:
    """The host itself when it is an IP address (no lookup needed), else None."""
    try:
        return str(ipaddress.ip_address(host))
    except ValueError:
        return None
