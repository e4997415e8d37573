"""The supervisor's handle on BPF steering: load skiff.bpf.o, attach it to this network namespace, pin it,
and keep its maps in step with the config.

Pins live under <pin_root>/skiff/<instance>/ (maps by their C names, the program as `steer`, the netns link
as `link`). A successor supervisor takes that state over instead of starting empty: libbpf reuses the pinned
maps, and the pinned link gets the freshly loaded program swapped in atomically, so steering never stops.
During a hand-over the successor first holds a *standby* Steering (maps opened, program loaded, no lock, no
link, no writes); `commit` makes it steer, `take_lock` makes it the owner. A predecessor whose successor
failed mid-commit takes steering back with `reclaim`.
"""

from __future__ import annotations

import errno
import ipaddress
import os
import socket
import struct
from array import array
from collections.abc import Callable, Iterator, Mapping
from contextlib import contextmanager
from pathlib import Path

from bpf import libbpf, pinning
from bpf.errors import SteeringError
from bpf.ports import PortsDiff, diff_ports, validate_ports

PROGRAM = "steer"
MAPS = ("ports", "sockets", "counters", "bind_addr", "group_families")
# Bits of a group_families value, as in skiff.bpf.c.
FAMILY_IPV4 = 1
FAMILY_IPV6 = 2
# Same order as enum counter in skiff.bpf.c.
COUNTERS = ("lookups", "steered", "dropped_no_socket", "errors")

_U32 = struct.Struct("=I")  # host order: the program compares against bpf_sk_lookup.local_port as is
_U64 = struct.Struct("=Q")
_LINK_INFO_NETNS_INO = struct.Struct("=I")  # struct bpf_link_info.netns.netns_ino sits at offset 16
_BATCH_UNSUPPORTED = (errno.EINVAL, errno.EOPNOTSUPP, 524)  # 524: the kernel's internal ENOTSUPP

_BatchCall = Callable[[int, bytes, bytes, int], int]
SO_COOKIE = 57  # <asm-generic/socket.h>; Python 3.11's socket module does not name it


def socket_cookie(sock: socket.socket) -> int:
    """The kernel's cookie of sock: what the sockmap gives back for the socket it holds."""
    return int(_U64.unpack(sock.getsockopt(socket.SOL_SOCKET, SO_COOKIE, _U64.size))[0])


def _reason(action: str, exc: OSError) -> str:
    what = os.strerror(exc.errno) if exc.errno else str(exc)
    line = f"bpf: cannot {action}: {what}"
    hints = [m for m in libbpf.recent_messages() if "libbpf:" in m]
    return f"{line} ({hints[-1]})" if hints and exc.errno != errno.EPERM else line


@contextmanager
def _netns_fd() -> Iterator[int]:
    # thread-self: setns moves only the calling thread, and that is the namespace we mean.
    fd = os.open("/proc/thread-self/ns/net", os.O_RDONLY | os.O_CLOEXEC)
    try:
        yield fd
    finally:
        os.close(fd)


def probe(obj_path: Path) -> str | None:
    """None if sk_lookup steering works here (object loads, attaches to this netns); else a one-line reason.

    The trial attachment is an empty program (no ports configured passes everything) and is removed before
    returning; nothing is pinned.
    """
    if not obj_path.is_file():
        return f"bpf: {obj_path} does not exist (build it with make -C bpf)"
    obj = link = 0
    action = f"open {obj_path.name}"
    try:
        obj = libbpf.object_open(obj_path)
        action = f"load {obj_path.name}"
        libbpf.object_load(obj)
        action = "attach sk_lookup program"
        with _netns_fd() as netns:
            link = libbpf.program_attach_netns(libbpf.find_program(obj, PROGRAM), netns)
    except OSError as exc:
        return _reason(action, exc)
    finally:
        if link:
            libbpf.link_destroy(link)
        if obj:
            libbpf.object_close(obj)
    return None


class Steering:
    """One instance's loaded program, its netns link, its maps, and the lock on its pin directory."""

    def __init__(self, pin_dir: Path, lock_fd: int, obj: int, link: int) -> None:
        """lock_fd -1 and link 0: a standby (see `standby`)."""
        self._pin_dir = pin_dir
        self._lock_fd = lock_fd
        self._obj = obj
        self._link = link
        self._fds = {name: libbpf.map_fd(libbpf.find_map(obj, name)) for name in MAPS}
        self.groups = libbpf.map_max_entries(libbpf.find_map(obj, "sockets"))
        self._ports_max = libbpf.map_max_entries(libbpf.find_map(obj, "ports"))
        self._cpus = libbpf.num_possible_cpus()
        self._batch = True  # until the kernel says otherwise

    @classmethod
    def open(cls, instance: str, obj_path: Path, *, pin_root: Path = pinning.DEFAULT_PIN_ROOT,
             wait_for_lock: float = 0.0) -> Steering:
        """Load and attach, or take over what a previous supervisor of this instance left pinned (after it
        released the lock: `wait_for_lock` seconds at most)."""
        if not instance or "/" in instance or instance in (".", ".."):
            raise ValueError(f"instance name {instance!r} cannot be a directory name")
        pin_dir = pin_root / "skiff" / instance
        try:
            pinning.ensure_bpffs(pin_root)
            lock_fd = pinning.lock_dir(pin_dir, wait_for_lock)
        except pinning.PinError as exc:
            raise SteeringError(f"bpf: {exc}") from None
        except OSError as exc:
            raise SteeringError(_reason(f"create {pin_dir}", exc)) from None
        fresh = not (pin_dir / "link").exists()
        obj = link = 0
        action = f"open {obj_path}"
        try:
            obj = libbpf.object_open(obj_path)
            for name in MAPS:
                # libbpf reuses a compatible pinned map at this path, or creates the map and pins it there.
                libbpf.map_set_pin_path(libbpf.find_map(obj, name), pin_dir / name)
            action = f"load {obj_path.name}"
            libbpf.object_load(obj)
            prog = libbpf.find_program(obj, PROGRAM)
            action = "pin sk_lookup program"
            (pin_dir / PROGRAM).unlink(missing_ok=True)  # the link keeps the old program alive until swapped
            libbpf.program_pin(prog, pin_dir / PROGRAM)
            action = "attach sk_lookup program"
            link = _take_over_link(pin_dir / "link", prog) if not fresh else 0
            if not link:
                with _netns_fd() as netns:
                    link = libbpf.program_attach_netns(prog, netns)
                libbpf.link_pin(link, pin_dir / "link")
            return cls(pin_dir, lock_fd, obj, link)
        except (OSError, SteeringError) as exc:
            if link:
                libbpf.link_destroy(link)
            if obj:
                libbpf.object_close(obj)
            if fresh:
                pinning.remove_pins(pin_dir)
            pinning.unlock_dir(lock_fd)
            if isinstance(exc, SteeringError):
                raise
            raise SteeringError(_reason(action, exc)) from None

    @classmethod
    def standby(cls, instance: str, obj_path: Path, *, pin_root: Path = pinning.DEFAULT_PIN_ROOT) -> Steering | None:
        """A successor's view of the state its predecessor steers with: the pinned maps opened and our program
        loaded, but no lock taken, no program swapped, nothing written. None when nothing is pinned (the
        predecessor does not steer with BPF): `open` then starts afresh at commit."""
        pin_dir = pin_root / "skiff" / instance
        if not (pin_dir / "link").exists():
            return None
        obj = 0
        action = f"open {obj_path}"
        try:
            obj = libbpf.object_open(obj_path)
            for name in MAPS:
                libbpf.map_set_pin_path(libbpf.find_map(obj, name), pin_dir / name)
            action = f"load {obj_path.name} beside the pinned maps"
            libbpf.object_load(obj)
            return cls(pin_dir, -1, obj, 0)
        except OSError as exc:
            if obj:
                libbpf.object_close(obj)
            raise SteeringError(_reason(action, exc)) from None

    @property
    def is_standby(self) -> bool:
        return self._link == 0

    @property
    def owns_lock(self) -> bool:
        return self._lock_fd >= 0

    def commit(self, sock: socket.socket, bind: str | None, ports: Mapping[int, int]) -> None:
        """Standby -> steering: our program into the pinned link, our socket into group 0 (from here on new
        connections queue at us), the bind filter, then the port map diff. No lock yet (`take_lock`)."""
        action = "take over the pinned link"
        try:
            link = _take_over_link(self._pin_dir / "link", libbpf.find_program(self._obj, PROGRAM))
        except OSError as exc:
            raise SteeringError(_reason(action, exc)) from None
        if not link:
            raise SteeringError(f"bpf: {self._pin_dir / 'link'} is no longer attached")
        self._link = link
        self._steer(sock, bind, ports)

    def take_lock(self, wait: float) -> None:
        """Become the owner of the pin directory once the predecessor let go (wait seconds at most), and pin
        our program as the one that steers."""
        if self._lock_fd >= 0:
            return
        try:
            self._lock_fd = pinning.lock_dir(self._pin_dir, wait)
            (self._pin_dir / PROGRAM).unlink(missing_ok=True)
            libbpf.program_pin(libbpf.find_program(self._obj, PROGRAM), self._pin_dir / PROGRAM)
        except pinning.PinError as exc:
            raise SteeringError(f"bpf: {exc}") from None
        except OSError as exc:
            raise SteeringError(_reason("pin sk_lookup program", exc)) from None

    def reclaim(self, sock: socket.socket, bind: str | None, ports: Mapping[int, int]) -> None:
        """Take steering back from a successor that failed while committing: our program into the link, our
        socket into group 0, our bind filter and our port map (still holding the lock, we never gave it up).
        The socket goes first: the dead successor's listeners are closing, and until group 0 holds ours again
        the program refuses connections to our ports (either program: they share the maps)."""
        self.set_group_socket(0, sock)
        try:
            libbpf.link_update_program(self._link, libbpf.find_program(self._obj, PROGRAM))
        except OSError as exc:
            raise SteeringError(_reason("swap our program back into the link", exc)) from None
        self._steer(sock, bind, ports)

    def _steer(self, sock: socket.socket, bind: str | None, ports: Mapping[int, int]) -> None:
        """Socket first (connections for ports already mapped go to it at once), then filter, then ports."""
        self.set_group_socket(0, sock)
        try:
            self.set_bind_address(bind)
        except OSError as exc:
            raise SteeringError(_reason("set the bind address filter", exc)) from None
        self.apply_ports(ports)

    def steers_to(self, sock: socket.socket) -> bool:
        """True when group 0 holds sock: nobody else (a successor) has taken steering from us."""
        return self.group_socket_cookie(0) == socket_cookie(sock)

    def set_group_socket(self, group: int, sock: socket.socket) -> None:
        """Point group at sock (a listening TCP socket); replaces any previous socket atomically. The families
        it takes are written first, so the program never hands a lookup to a socket of the wrong family."""
        self._check_group(group)
        try:
            libbpf.map_update(self._fds["group_families"], _U32.pack(group), _U32.pack(socket_families(sock)))
            libbpf.map_update(self._fds["sockets"], _U32.pack(group), _U64.pack(sock.fileno()))
        except OSError as exc:
            raise SteeringError(_reason(f"put a socket into group {group}", exc)) from None

    def group_socket_cookie(self, group: int) -> int | None:
        """SO_COOKIE of the socket steering group, or None; lets a successor see what it inherited."""
        self._check_group(group)
        raw = libbpf.map_lookup(self._fds["sockets"], _U32.pack(group), _U64.size)
        return None if raw is None else int(_U64.unpack(raw)[0])

    def apply_ports(self, wanted: Mapping[int, int]) -> PortsDiff:
        """Make the port map equal wanted: upsert new and moved ports first, then delete stale ones."""
        validate_ports(wanted, self.groups)
        upserts, deletes = diff_ports(self.ports(), wanted)
        try:
            self._upsert(upserts)
            self._delete(deletes)
        except OSError as exc:
            raise SteeringError(_reason("update the port map", exc)) from None
        return PortsDiff(upserted=len(upserts), deleted=len(deletes), unchanged=len(wanted) - len(upserts))

    def ports(self) -> dict[int, int]:
        """The port → group map as the kernel holds it now."""
        fd = self._fds["ports"]
        if self._batch:
            try:
                keys, values = libbpf.map_lookup_all(fd, _U32.size, _U32.size, self._ports_max)
                return dict(zip(array("I", keys), array("I", values), strict=True))
            except libbpf.BatchError as exc:
                if exc.errno not in _BATCH_UNSUPPORTED:
                    raise SteeringError(_reason("read the port map", exc)) from None
                self._batch = False
        result: dict[int, int] = {}
        for key in libbpf.map_keys(fd, _U32.size):
            raw = libbpf.map_lookup(fd, key, _U32.size)
            if raw is not None:  # deleted between the walk and the lookup: not there any more
                result[_U32.unpack(key)[0]] = _U32.unpack(raw)[0]
        return result

    def set_bind_address(self, address: str | None) -> None:
        """Steer only connections to this IPv4 address (None or 0.0.0.0: any local address)."""
        packed = b"\0\0\0\0" if address is None else ipaddress.IPv4Address(address).packed
        # packed is already network byte order, which is how the program compares local_ip4.
        libbpf.map_update(self._fds["bind_addr"], _U32.pack(0), packed)

    def counters(self) -> dict[str, int]:
        """Program outcome counts since the maps were created, summed over CPUs."""
        fd = self._fds["counters"]
        totals: dict[str, int] = {}
        for index, name in enumerate(COUNTERS):
            raw = libbpf.map_lookup(fd, _U32.pack(index), 8 * self._cpus)
            totals[name] = sum(array("Q", raw)) if raw else 0
        return totals

    def close(self, *, unpin: bool) -> None:
        """Release this process's handles. unpin=True also detaches and removes every pin (clean shutdown);
        unpin=False leaves the program steering for a successor."""
        try:
            if unpin and self._link:
                # Detach explicitly: forked workers may still hold a copy of the link fd.
                libbpf.link_detach(self._link)
                pinning.remove_pins(self._pin_dir)
        except OSError as exc:
            raise SteeringError(_reason("remove the steering program", exc)) from None
        finally:
            if self._link:
                libbpf.link_destroy(self._link)
            libbpf.object_close(self._obj)
            if self._lock_fd >= 0:
                pinning.unlock_dir(self._lock_fd)
            self._link, self._lock_fd = 0, -1

    def _check_group(self, group: int) -> None:
        if not 0 <= group < self.groups:
            raise ValueError(f"group {group} is outside 0..{self.groups - 1}")

    def _upsert(self, entries: list[tuple[int, int]]) -> None:
        fd = self._fds["ports"]
        keys = array("I", (port for port, _ in entries))
        values = array("I", (group for _, group in entries))
        done = self._batched(libbpf.map_update_batch, fd, keys, values)
        for i in range(done, len(entries)):
            libbpf.map_update(fd, _U32.pack(keys[i]), _U32.pack(values[i]))

    def _delete(self, ports: list[int]) -> None:
        fd = self._fds["ports"]
        keys = array("I", ports)
        done = self._batched(lambda f, k, _v, n: libbpf.map_delete_batch(f, k, n), fd, keys, keys)
        for port in keys[done:]:
            libbpf.map_delete(fd, _U32.pack(port))  # absent already is fine: the goal is 'not there'

    def _batched(self, call: _BatchCall, fd: int, keys: array[int], values: array[int]) -> int:
        """Run a batch call; returns how many leading entries are done, so the caller finishes the rest
        one by one (the kernel lacks batch ops, or one element failed, e.g. ENOENT on delete)."""
        if not keys or not self._batch:
            return 0
        try:
            return call(fd, keys.tobytes(), values.tobytes(), len(keys))
        except libbpf.BatchError as exc:
            if exc.done == 0 and exc.errno in _BATCH_UNSUPPORTED:
                self._batch = False
            elif exc.errno != errno.ENOENT:
                raise
            return exc.done


def socket_families(sock: socket.socket) -> int:
    """FAMILY_* bits of the connections a listening socket can take."""
    if sock.family == socket.AF_INET:
        return FAMILY_IPV4
    if sock.getsockopt(socket.IPPROTO_IPV6, socket.IPV6_V6ONLY):
        return FAMILY_IPV6
    return FAMILY_IPV4 | FAMILY_IPV6


def _take_over_link(path: Path, prog: int) -> int:
    """Open the pinned link and swap prog into it; 0 if that link is dead (its netns is gone)."""
    link = libbpf.link_open(path)
    info = libbpf.obj_info(libbpf.link_fd(link))
    netns_ino = _LINK_INFO_NETNS_INO.unpack_from(info, 16)[0]
    if netns_ino == 0:
        libbpf.link_destroy(link)
        path.unlink()
        return 0
    if netns_ino != os.stat("/proc/thread-self/ns/net").st_ino:
        libbpf.link_destroy(link)
        raise SteeringError(f"bpf: {path} is attached to another network namespace (inode {netns_ino})")
    libbpf.link_update_program(link, prog)
    return link

