"""Refuse to start on ports another skiff already serves, unless the operator asked to share them.

SO_REUSEPORT lets a second process of the same uid bind a port silently and take part of its traffic; an
sk_lookup program of another instance steals its ports from every listener. So, before any socket opens, we
look for both: listening sockets of our uid on a port we want, on the same address or a wildcard over it
(/proc/net/tcp and tcp6), and the port maps other instances pinned under PIN_ROOT/skiff/ whose link is
attached to our network namespace (bpffs is shared across namespaces, steering is not). Sockets we hold
ourselves (inherited from systemd's descriptor store) are not a conflict; `--takeover` does not check at all.
"""

from __future__ import annotations

import ipaddress
import os
import struct
from collections.abc import Iterable
from dataclasses import dataclass
from pathlib import Path

LISTEN = "0A"
PROC = Path("/proc")


@dataclass(frozen=True, slots=True)
class Listener:
    address: ipaddress.IPv4Address | ipaddress.IPv6Address
    port: int
    inode: int


def parse_proc_net(text: str, uid: int) -> list[Listener]:
    """Listening sockets owned by uid in the text of /proc/net/tcp or tcp6."""
    found: list[Listener] = []
    for line in text.splitlines()[1:]:
        fields = line.split()
        if len(fields) < 10 or fields[3] != LISTEN or not fields[7].isdigit() or int(fields[7]) != uid:
            continue
        hex_address, _, hex_port = fields[1].partition(":")
        raw = bytes.fromhex(hex_address)
        # The kernel prints the address as 32-bit words in host byte order.
        words = struct.unpack(f"={len(raw) // 4}I", raw)
        packed = b"".join(struct.pack("!I", w) for w in words)
        address = ipaddress.ip_address(packed)
        found.append(Listener(address, int(hex_port, 16), int(fields[9])))
    return found


def overlaps(ours: str, theirs: ipaddress.IPv4Address | ipaddress.IPv6Address) -> bool:
    """Would a listener on `ours` share connections with one on `theirs` (same port)?"""
    mine = ipaddress.ip_address(ours)
    if isinstance(theirs, ipaddress.IPv6Address) and theirs.ipv4_mapped is not None:
        theirs = theirs.ipv4_mapped
    if mine.is_unspecified or theirs.is_unspecified:
        return mine.version == theirs.version or str(mine) == "::" or str(theirs) == "::"
    return mine == theirs


def own_inodes(pid: int) -> set[int]:
    """Socket inodes among pid's descriptors."""
    inodes: set[int] = set()
    try:
        names = os.listdir(PROC / str(pid) / "fd")
    except OSError:
        return inodes
    for name in names:
        try:
            target = os.readlink(PROC / str(pid) / "fd" / name)
        except OSError:
            continue
        if target.startswith("socket:["):
            inodes.add(int(target[8:-1]))
    return inodes


def holders(inodes: set[int]) -> list[int]:
    """Pids (of processes we may look into) holding any of these socket inodes."""
    pids = []
    for entry in PROC.iterdir():
        if entry.name.isdigit() and int(entry.name) != os.getpid() and own_inodes(int(entry.name)) & inodes:
            pids.append(int(entry.name))
    return sorted(pids)


def describe(pids: list[int]) -> str:
    """Name the skiff supervisor among the holders (workers lead to their parent), else the first process."""
    titles = {pid: _cmdline(pid) for pid in pids}
    for pid, title in titles.items():
        if title.startswith("skiff: supervisor"):
            return f"skiff supervisor pid {pid} ({title})"
    for pid, title in titles.items():
        if title.startswith("skiff: worker"):
            parent = _ppid(pid)
            return f"skiff supervisor pid {parent} ({_cmdline(parent)})" if parent else f"pid {pid} ({title})"
    if not pids:
        return "another process"
    return f"pid {pids[0]} ({titles[pids[0]][:60]})"


def listener_conflict(bind: str, ports: Iterable[int]) -> str | None:
    """One line naming who already listens on our ports with our uid, or None."""
    wanted = set(ports)
    listeners: list[Listener] = []
    for name in ("tcp", "tcp6"):
        try:
            listeners += parse_proc_net((PROC / "net" / name).read_text(), os.geteuid())
        except OSError:
            continue
    mine = own_inodes(os.getpid())
    clashing = [x for x in listeners if x.port in wanted and x.inode not in mine and overlaps(bind, x.address)]
    if not clashing:
        return None
    taken = sorted({x.port for x in clashing})
    who = describe(holders({x.inode for x in clashing}))
    return f"ports {_ports(taken)} on {bind} are already served by {who}"


def pinned_conflict(pin_root: Path, instance: str, ports: Iterable[int]) -> str | None:
    """One line naming another instance whose pinned BPF port map steers any of our ports, or None."""
    wanted = set(ports)
    try:
        others = sorted(d for d in (pin_root / "skiff").iterdir() if d.name != instance and (d / "ports").exists())
    except OSError:
        return None
    for other in others:
        if not _steers_here(other / "link"):
            continue  # detached, or attached to another network namespace: it takes nothing from us
        taken = sorted(wanted & _pinned_ports(other / "ports"))
        if taken:
            return f"ports {_ports(taken)} are already steered by skiff instance {other.name!r} ({other})"
    return None


def conflict(bind: str, ports: Iterable[int], pin_root: Path, instance: str) -> str | None:
    ports = frozenset(ports)
    return listener_conflict(bind, ports) or pinned_conflict(pin_root, instance, ports)


def _pinned_ports(path: Path) -> set[int]:
    try:
        from bpf import libbpf
    except OSError:  # no libbpf here: nothing can be pinned by skiff either
        return set()
    try:
        fd = libbpf.obj_get(path)
    except OSError:
        return set()
    try:
        return {struct.unpack("=I", key)[0] for key in libbpf.map_keys(fd, 4)}
    except OSError:
        return set()
    finally:
        os.close(fd)


def _steers_here(link: Path) -> bool:
    """Is the pinned sk_lookup link attached to our network namespace? (bpf_link_info.netns.netns_ino)"""
    try:
        from bpf import libbpf
    except OSError:
        return False
    try:
        fd = libbpf.obj_get(link)
    except OSError:
        return False
    try:
        netns_ino = struct.unpack_from("=I", libbpf.obj_info(fd), 16)[0]
        return bool(netns_ino) and netns_ino == os.stat("/proc/thread-self/ns/net").st_ino
    except OSError:
        return False
    finally:
        os.close(fd)


def _ports(ports: list[int]) -> str:
    shown = ", ".join(map(str, ports[:10]))
    return shown + (f" and {len(ports) - 10} more" if len(ports) > 10 else "")


def _cmdline(pid: int) -> str:
    try:
        return (PROC / str(pid) / "cmdline").read_bytes().replace(b"\0", b" ").decode(errors="replace").strip()
    except OSError:
        return "?"


def _ppid(pid: int) -> int | None:
    try:
        stat = (PROC / str(pid) / "stat").read_text()
    except OSError:
        return None
    return int(stat.rpartition(")")[2].split()[1])
