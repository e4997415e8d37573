"""The worker's routing table: which app serves a port, and each app's targets with their live state."""

from __future__ import annotations

import bisect
import ipaddress
from dataclasses import dataclass, field
from functools import lru_cache

from proxy.balancer import Shared, TargetState
from proxy.config import App, Config

# Upper bounds (seconds) of the connect-latency histogram buckets; the last bucket is everything above.
CONNECT_BUCKETS = (0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0)


@dataclass(slots=True, eq=False)
class AppStats:
    """Plain-int counters for one app in one worker; shared by every table the app appears in.

    Bytes of open connections live on the relays and are added in when stats are reported.
    """

    active: int = 0
    total: int = 0
    failed: int = 0
    failovers: int = 0
    refused: int = 0  # at HardLimit, or every target at MaxConns
    bytes_in: int = 0  # from clients, of closed connections
    bytes_out: int = 0  # to clients, of closed connections
    connect_buckets: list[int] = field(default_factory=lambda: [0] * (len(CONNECT_BUCKETS) + 1))
    connect_seconds: float = 0.0

    def observe_connect(self, seconds: float) -> None:
        self.connect_buckets[bisect.bisect_left(CONNECT_BUCKETS, seconds)] += 1
        self.connect_seconds += seconds


@dataclass(slots=True, eq=False)
class AppRoute:
    """One app as a worker serves it."""

    app: App
    targets: list[TargetState]
    stats: AppStats = field(default_factory=AppStats)
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
        apps[app.name] = AppRoute(app, targets, old.stats if old else AppStats())
    by_port = {port: apps[app.name] for app in config.apps for port in app.ports}
    return RoutingTable(version, apps, by_port)


@lru_cache(maxsize=4096)
def literal_address(host: str) -> str | None:
    """The host itself when it is an IP address (no lookup needed), else None."""
    try:
        return str(ipaddress.ip_address(host))
    except ValueError:
        return None
