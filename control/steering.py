"""How connections reach the workers: one socket per port per worker (reuseport), or BPF sk_lookup steering
onto one listener per worker group (bpf). `auto` probes and falls back with one clear line.

Both kinds of listeners answer the same questions for the supervisor: what a slot's worker serves, what a
reload must open and pass before the workers are told, and what follows once every worker acknowledged. They
also take the listeners' part in a hand-over (control/handover.py): a successor opens in standby and commits;
a predecessor yields, takes steering back, or releases it.
"""

from __future__ import annotations

import logging
import socket
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING

from bpf.errors import SteeringError
from control.sockets import SocketTable, open_group_listeners
from proxy.logs import log_event

if TYPE_CHECKING:
    from bpf.loader import Steering

log = logging.getLogger("supervisor")

MODES = ("reuseport", "bpf", "auto")
DEFAULT_OBJECT = Path(__file__).resolve().parent.parent / "bpf" / "skiff.bpf.o"


class SteeringUnavailable(Exception):
    """bpf mode was asked for and cannot work here: one line for the operator."""


@dataclass(frozen=True, slots=True)
class SteeringChoice:
    mode: str  # "reuseport" or "bpf"
    reason: str | None = None  # why auto fell back


def choose_steering(requested: str, obj_path: Path) -> SteeringChoice:
    if requested == "reuseport":
        return SteeringChoice("reuseport")
    try:
        from bpf.loader import probe
    except OSError as exc:  # libbpf.so.1 is missing
        problem: str | None = f"bpf: cannot load libbpf: {exc}"
    else:
        problem = probe(obj_path)
    if problem is None:
        return SteeringChoice("bpf")
    if requested == "bpf":
        raise SteeringUnavailable(f"--steering bpf cannot work here: {problem}")
    log_event(log, logging.WARNING, "steering_fallback",
              f"--steering auto: BPF steering unavailable ({problem}); using one socket per port per worker",
              error=problem)
    return SteeringChoice("reuseport", problem)


class ReuseportListeners:
    """One SO_REUSEPORT socket per port per worker slot; a reload opens new ports' sockets before any worker
    is told and closes our copies of removed ones right after (each worker drains its own)."""

    steered = False

    def __init__(self, bind: str, slots: int, inherited: dict[str, socket.socket] | None = None) -> None:
        self.table = SocketTable(bind, slots, inherited)
        self.handing_over = False  # nothing depends on it here: the successor's sockets share ours

    def open(self, ports: frozenset[int], standby: bool = False) -> None:
        """standby changes nothing here: our sockets join the SO_REUSEPORT groups of a predecessor's at once."""
        self.table.open_ports(ports)

    def for_slot(self, slot: int) -> dict[int, socket.socket]:
        return self.table.for_slot(slot)

    def close_others_in_child(self, slot: int) -> None:
        for sockets in self.table.by_port.values():
            for i, sock in enumerate(sockets):
                if i != slot:
                    sock.close()

    def prepare(self, added: frozenset[int]) -> list[int]:
        """Open the sockets of added ports in every slot; returns the ports whose sockets workers must get."""
        self.table.open_ports(added)
        return sorted(added)

    def descriptors(self, slot: int, ports: list[int]) -> list[int]:
        return [sock.fileno() for sock in self.table.for_slot(slot, ports).values()]

    def told(self, removed: frozenset[int]) -> None:
        self.table.close_ports(removed)

    def acknowledged(self, ports: frozenset[int]) -> None:
        """Every worker serves a config with these ports; nothing to do: the sockets already follow."""

    def commit(self) -> str:
        return "our sockets already share every port"

    def take_lock(self) -> None:
        """No lock in reuseport mode."""

    def yield_steering(self) -> None:
        """Nothing to yield: the successor's sockets share ours."""

    def reclaim(self) -> str:
        return "nothing to take back in reuseport mode"

    def release(self) -> str:
        """Hand over to a successor: nothing to release, its SO_REUSEPORT sockets join ours."""
        return "nothing to release in reuseport mode (a successor's sockets join ours)"

    def stop(self) -> None:
        self.table.close_all()

    def summary(self) -> str:
        return "one socket per port per worker (reuseport)"

    def counters(self) -> dict[str, int]:
        return {}


class BpfListeners:
    """One SO_REUSEPORT listener per worker on one steering address; the sk_lookup program's port map says
    which ports are ours. The map follows a reload once every worker knows the new routes."""

    steered = True

    def __init__(self, bind: str, slots: int, instance: str, obj_path: Path, pin_root: Path,
                 wait_for_lock: float = 0.0, inherited: dict[str, socket.socket] | None = None) -> None:
        self.inherited = inherited  # group listeners systemd's descriptor store kept for us
        self.bind = bind
        self.slots = slots
        self.instance = instance
        self.obj_path = obj_path
        self.pin_root = pin_root
        self.wait_for_lock = wait_for_lock
        self.sockets: list[socket.socket] = []
        self.steering: Steering | None = None
        self.wanted: frozenset[int] = frozenset()  # the ports of the config every worker serves
        self.bind_filter: str | None = None
        self.handing_over = False  # a successor is connected: never unpin what it is about to take over
        self.yielded = False  # the successor is committing: the maps are its to write

    def open(self, ports: frozenset[int], standby: bool = False) -> None:
        """The group's listeners first, then the program (taking over pinned state a previous supervisor left),
        then its socket, then the ports: connections queue until the workers accept. In standby (a successor
        before its commit) only the listeners and a view of the pinned maps: nothing is written."""
        from bpf.loader import Steering

        any_address = self.bind in ("0.0.0.0", "::")
        if not any_address and ":" in self.bind:
            raise SteeringError(f"bpf: --bind {self.bind}: the steering filter matches one IPv4 address or any "
                                "address (0.0.0.0 or ::)")
        self.bind_filter = None if any_address else self.bind
        self.wanted = ports
        # "::" is dual-stack on Linux: one group socket takes IPv4 and IPv6 connections.
        host = "127.0.0.1" if self.bind == "0.0.0.0" else self.bind
        self.sockets = open_group_listeners(host, self.slots, self.inherited)
        try:
            if standby:
                self.steering = Steering.standby(self.instance, self.obj_path, pin_root=self.pin_root)
            else:
                self.attach()
        except (SteeringError, ValueError):
            self.close_sockets()
            raise

    def attach(self) -> None:
        """Take the lock and steer: what a supervisor that starts without a predecessor does."""
        from bpf.loader import Steering

        steering = Steering.open(self.instance, self.obj_path, pin_root=self.pin_root,
                                 wait_for_lock=self.wait_for_lock)
        try:
            steering.set_group_socket(0, self.sockets[0])
            steering.set_bind_address(self.bind_filter)
            steering.apply_ports(dict.fromkeys(self.wanted, 0))
        except (SteeringError, ValueError):
            steering.close(unpin=True)
            raise
        self.steering = steering

    def commit(self) -> str:
        """A successor's commit: the pinned link runs our program and steers to our socket, with our ports."""
        if self.steering is None:  # nothing was pinned when we started: attach afresh
            self.attach()
            return "attached BPF steering"
        self.steering.commit(self.sockets[0], self.bind_filter, dict.fromkeys(self.wanted, 0))
        return "BPF steering points at our listeners"

    def take_lock(self) -> None:
        if self.steering is not None:
            self.steering.take_lock(self.wait_for_lock)

    def yield_steering(self) -> None:
        """A successor is committing: from now on, until it fails, the maps are its to write."""
        self.yielded = True

    def reclaim(self) -> str:
        """A successor failed while committing: steer to our socket and our ports again."""
        self.yielded = False
        if self.steering is None or not self.sockets:
            return "nothing to take back (already stopping)"
        self.steering.reclaim(self.sockets[0], self.bind_filter, dict.fromkeys(self.wanted, 0))
        return "took BPF steering back (our program, socket and ports)"

    def for_slot(self, slot: int) -> dict[int, socket.socket]:
        sock = self.sockets[slot]
        return {sock.getsockname()[1]: sock}

    def close_others_in_child(self, slot: int) -> None:
        for i, sock in enumerate(self.sockets):
            if i != slot:
                sock.close()

    def prepare(self, added: frozenset[int]) -> list[int]:
        return []

    def descriptors(self, slot: int, ports: list[int]) -> list[int]:
        return []

    def told(self, removed: frozenset[int]) -> None:
        """Removed ports stay in the map until every worker acknowledged: they are still served meanwhile."""

    def acknowledged(self, ports: frozenset[int]) -> None:
        self.wanted = ports
        if self.steering is None or self.steering.is_standby or self.yielded:
            return  # a successor before its commit, or a predecessor yielding: the map is someone else's
        try:
            diff = self.steering.apply_ports(dict.fromkeys(ports, 0))
        except SteeringError as exc:
            log_event(log, logging.ERROR, "steering_failed", f"cannot update the BPF port map: {exc}", error=str(exc))
            return
        log_event(log, logging.DEBUG, "steering_updated",
                  f"BPF port map: {diff.upserted} added, {diff.deleted} removed, {diff.unchanged} unchanged")

    def release(self) -> str:
        """The successor committed: give up the lock and our handles. The pins are its now, unless group 0
        still holds our socket: then it does not steer with BPF (a reuseport successor), and our program,
        left behind, would keep its ports from its sockets; so we remove it."""
        steering, self.steering = self.steering, None
        self.yielded = False
        if steering is None:
            return "BPF steering already released"
        try:
            ours = bool(self.sockets) and steering.steers_to(self.sockets[0])
        except OSError:
            ours = False  # cannot tell: leave the pins, as a successor that steers expects
        try:
            steering.close(unpin=ours)
        except SteeringError as exc:
            return f"releasing BPF steering failed: {exc}"
        if ours:
            return "removed BPF steering (the successor does not steer with BPF)"
        return "released BPF steering (pins kept) for a successor"

    def stop(self) -> None:
        """Detach and unpin (new connections to our ports are refused from here on), then close our copies.
        Only the owner unpins, and only while the sockmap still steers to our socket and no successor is taking
        over: a successor never removes what it inherited, a predecessor never what it handed on."""
        steering, self.steering = self.steering, None
        if steering is not None:
            try:
                unpin = (steering.owns_lock and not self.handing_over and bool(self.sockets)
                         and steering.steers_to(self.sockets[0]))
            except OSError as exc:
                unpin = False
                log_event(log, logging.ERROR, "steering_failed", f"bpf: cannot read the sockmap ({exc}); "
                          "leaving the pins", error=str(exc))
            try:
                steering.close(unpin=unpin)
            except SteeringError as exc:
                log_event(log, logging.ERROR, "steering_failed", str(exc), error=str(exc))
        self.close_sockets()

    def close_sockets(self) -> None:
        for sock in self.sockets:
            sock.close()
        self.sockets = []

    def summary(self) -> str:
        port = self.sockets[0].getsockname()[1] if self.sockets else 0
        return f"BPF sk_lookup steering onto {self.slots} listeners on port {port}"

    def counters(self) -> dict[str, int]:
        return self.steering.counters() if self.steering is not None else {}


Listeners = ReuseportListeners | BpfListeners
