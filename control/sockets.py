"""Listening sockets, owned by the supervisor: for every port, one SO_REUSEPORT socket per worker slot.

The supervisor keeps its copy of every socket, so a socket outlives its worker: what the kernel queued for a
worker that died is accepted by its replacement instead of being reset.
"""

from __future__ import annotations

import ipaddress
import logging
import resource
import socket
from collections.abc import Iterable
from pathlib import Path

from proxy.logs import log_event
from workers.listeners import BACKLOG

log = logging.getLogger("supervisor")

MIGRATE_SYSCTL = Path("/proc/sys/net/ipv4/tcp_migrate_req")


class ListenError(Exception):
    """A port could not be opened: one line naming the port and the reason."""


def open_listener(host: str, port: int) -> socket.socket:
    family = socket.AF_INET6 if ":" in host else socket.AF_INET
    sock = socket.socket(family, socket.SOCK_STREAM)
    try:
        if family == socket.AF_INET6:
            # Explicit, whatever net.ipv6.bindv6only says: "::" serves both families (dual-stack), any other
            # IPv6 address only IPv6. The BPF program steers only the families the socket takes.
            sock.setsockopt(socket.IPPROTO_IPV6, socket.IPV6_V6ONLY, 0 if host == "::" else 1)
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEPORT, 1)
        sock.bind((host, port))
        sock.listen(BACKLOG)
        sock.setblocking(False)
    except OSError as exc:
        sock.close()
        raise ListenError(f"cannot listen on {host}:{port}: {exc.strerror or exc}") from None
    return sock


def adopt(inherited: dict[str, socket.socket] | None, name: str, host: str, port: int) -> socket.socket | None:
    """The socket systemd's descriptor store passed under `name`, if it listens on host:port (port 0: any)."""
    sock = (inherited or {}).get(name)
    if sock is None:
        return None
    bound_host, bound_port = sock.getsockname()[:2]
    if ipaddress.ip_address(bound_host) != ipaddress.ip_address(host) or port not in (0, bound_port):
        return None
    assert inherited is not None
    del inherited[name]
    return sock


class SocketTable:
    """port -> one listening socket per slot. Sockets systemd kept for us (`port-PORT-SLOT`) are adopted
    instead of opened anew (control/fdstore.py)."""

    def __init__(self, host: str, slots: int, inherited: dict[str, socket.socket] | None = None) -> None:
        self.host = host
        self.slots = slots
        self.by_port: dict[int, list[socket.socket]] = {}
        self.inherited = inherited

    def open_ports(self, ports: Iterable[int]) -> list[int]:
        """Open every port in every slot, or none of them (ListenError). Returns the ports opened."""
        opened: list[int] = []
        try:
            for port in sorted(ports):
                if port in self.by_port:
                    continue
                sockets: list[socket.socket] = []
                try:
                    for slot in range(self.slots):
                        kept = adopt(self.inherited, f"port-{port}-{slot}", self.host, port)
                        sockets.append(kept or open_listener(self.host, port))
                except ListenError:
                    for sock in sockets:
                        sock.close()
                    raise
                self.by_port[port] = sockets
                opened.append(port)
        except ListenError:
            self.close_ports(opened)
            raise
        return opened

    def close_ports(self, ports: Iterable[int]) -> None:
        for port in ports:
            for sock in self.by_port.pop(port, []):
                sock.close()

    def close_all(self) -> None:
        self.close_ports(list(self.by_port))

    def for_slot(self, slot: int, ports: Iterable[int] | None = None) -> dict[int, socket.socket]:
        chosen = self.by_port if ports is None else {p: self.by_port[p] for p in ports}
        return {port: sockets[slot] for port, sockets in chosen.items()}


def enable_request_migration() -> str | None:
    """Ask the kernel to move requests queued on a closing listener to its reuseport siblings.

    Returns None when it is on, else why not (for one log line).
    """
    try:
        if MIGRATE_SYSCTL.read_text().strip() == "1":
            return None
        MIGRATE_SYSCTL.write_text("1\n")
        return None
    except OSError as exc:
        return f"cannot set net.ipv4.tcp_migrate_req=1: {exc.strerror or exc}"


def open_group_listeners(host: str, slots: int,
                         inherited: dict[str, socket.socket] | None = None) -> list[socket.socket]:
    """bpf mode: one SO_REUSEPORT listener per worker on one steering address (a port the kernel picks).

    The sk_lookup program hands every configured port's connections to the first of these; the kernel's
    reuseport selection then spreads them over the group.
    """
    first = adopt(inherited, "group-0", host, 0) or open_listener(host, 0)
    sockets = [first]
    port = first.getsockname()[1]
    try:
        for slot in range(1, slots):
            sockets.append(adopt(inherited, f"group-{slot}", host, port) or open_listener(host, port))
    except ListenError:
        for sock in sockets:
            sock.close()
        raise
    return sockets


def raise_fd_limit() -> None:
    """Thousands of ports and connections need descriptors: take the soft limit up to the hard one."""
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    if soft < hard:
        try:
            resource.setrlimit(resource.RLIMIT_NOFILE, (hard, hard))
        except (OSError, ValueError) as exc:
            log_event(log, logging.WARNING, "rlimit", f"cannot raise the open-file limit to {hard}: {exc}")
