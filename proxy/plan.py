"""plan(old, new): what a reload changes, as plain data the supervisor and workers act on."""

from __future__ import annotations

from dataclasses import dataclass

from proxy.config import Config, Target


@dataclass(frozen=True, slots=True)
class TargetChange:
    added: tuple[Target, ...]
    removed: tuple[Target, ...]


@dataclass(frozen=True, slots=True)
class Plan:
    added_ports: frozenset[int]
    removed_ports: frozenset[int]
    # port -> (old app name, new app name): the socket stays, only the routing changes.
    moved_ports: dict[int, tuple[str, str]]
    added_apps: frozenset[str]
    removed_apps: frozenset[str]
    # App name -> change, for apps present in both configs whose targets differ.
    target_changes: dict[str, TargetChange]

    @property
    def targets_changed(self) -> int:
        return sum(len(c.added) + len(c.removed) for c in self.target_changes.values())

    def summary(self) -> str:
        parts = []
        if self.added_ports:
            parts.append(_count("+", len(self.added_ports), "port"))
        if self.removed_ports:
            parts.append(_count("-", len(self.removed_ports), "port"))
        if self.moved_ports:
            parts.append(_count("", len(self.moved_ports), "port") + " moved")
        if self.added_apps:
            parts.append(_count("+", len(self.added_apps), "app"))
        if self.removed_apps:
            parts.append(_count("-", len(self.removed_apps), "app"))
        if self.target_changes:
            parts.append(_count("", self.targets_changed, "target") + " changed")
        return ", ".join(parts) or "no routing change"


def _count(sign: str, n: int, noun: str) -> str:
    return f"{sign}{n:,} {noun}" + ("" if n == 1 else "s")


def plan(old: Config, new: Config) -> Plan:
    old_ports, new_ports = old.app_by_port, new.app_by_port
    old_apps = {a.name: a for a in old.apps}
    new_apps = {a.name: a for a in new.apps}
    moved = {
        port: (old_ports[port].name, new_ports[port].name)
        for port in old_ports.keys() & new_ports.keys()
        if old_ports[port].name != new_ports[port].name
    }
    changes = {}
    for name in old_apps.keys() & new_apps.keys():
        before, after = old_apps[name].targets, new_apps[name].targets
        added = tuple(t for t in after if t not in before)
        removed = tuple(t for t in before if t not in after)
        if added or removed:
            changes[name] = TargetChange(added, removed)
    return Plan(
        added_ports=new.ports - old.ports,  # the apps' own ports and Tls.Ports
        removed_ports=old.ports - new.ports,
        moved_ports=moved,
        added_apps=frozenset(new_apps.keys() - old_apps.keys()),
        removed_apps=frozenset(old_apps.keys() - new_apps.keys()),
        target_changes=changes,
    )
