"""Drops every Linux capability in a worker, right after fork: it handles untrusted bytes and needs none.

A worker accepts on listening sockets the supervisor gave it, connects out to targets, reads /proc/self and
maps the shared counter table: none of that needs a capability. The supervisor keeps its own (it binds low
ports, loads BPF, mounts bpffs). Python has no call for this, so it goes to libc through ctypes:

1. the bounding set, one `PR_CAPBSET_DROP` per capability up to `/proc/sys/kernel/cap_last_cap` (needs
   CAP_SETPCAP: as root it is there; under the shipped unit it is not, and the unit's CapabilityBoundingSet and
   NoNewPrivileges already bound what any process of the service may hold);
2. the ambient set, `PR_CAP_AMBIENT_CLEAR_ALL` (systemd's AmbientCapabilities land there);
3. `PR_SET_NO_NEW_PRIVS`, so no exec (there is none, but a bug could make one) gains anything back;
4. `capset` with `_LINUX_CAPABILITY_VERSION_3` and two all-zero data structs: effective, permitted and
   inheritable are empty, for good.

Then `capget` reads the sets back: a drop that did not happen is an error, never a silent success.
"""

from __future__ import annotations

import ctypes
import errno
import os

_LINUX_CAPABILITY_VERSION_3 = 0x20080522
_CAP_SETPCAP = 8
_PR_CAPBSET_DROP = 24
_PR_SET_NO_NEW_PRIVS = 38
_PR_CAP_AMBIENT = 47
_PR_CAP_AMBIENT_CLEAR_ALL = 4
_CAP_LAST_CAP_FILE = "/proc/sys/kernel/cap_last_cap"
_CAP_LAST_CAP_FALLBACK = 63  # the sets are 64 bits wide; the kernel answers EINVAL past its last one


class PrivilegeError(Exception):
    """A capability set could not be emptied: the worker must not serve."""


class _CapHeader(ctypes.Structure):
    _fields_ = [("version", ctypes.c_uint32), ("pid", ctypes.c_int)]


class _CapData(ctypes.Structure):
    _fields_ = [("effective", ctypes.c_uint32), ("permitted", ctypes.c_uint32), ("inheritable", ctypes.c_uint32)]


def _libc() -> ctypes.CDLL:
    return ctypes.CDLL(None, use_errno=True)


def _fail(what: str) -> PrivilegeError:
    code = ctypes.get_errno()
    return PrivilegeError(f"{what}: {os.strerror(code)} (errno {code})")


def _capget(libc: ctypes.CDLL) -> tuple[int, int, int]:
    """(effective, permitted, inheritable) of this thread, as 64-bit masks."""
    header = _CapHeader(_LINUX_CAPABILITY_VERSION_3, 0)
    data = (_CapData * 2)()
    if libc.capget(ctypes.byref(header), data) != 0:
        raise _fail("capget")
    low, high = data[0], data[1]
    return (low.effective | high.effective << 32, low.permitted | high.permitted << 32,
            low.inheritable | high.inheritable << 32)


def _last_cap() -> int:
    try:
        with open(_CAP_LAST_CAP_FILE) as f:
            return int(f.read())
    except (OSError, ValueError):
        return _CAP_LAST_CAP_FALLBACK


def _drop_bounding_set(libc: ctypes.CDLL, effective: int) -> None:
    if not effective & (1 << _CAP_SETPCAP):
        return  # Not ours to shrink; no_new_privs and empty permitted/inheritable sets make it unusable anyway.
    for cap in range(_last_cap() + 1):
        if libc.prctl(_PR_CAPBSET_DROP, ctypes.c_ulong(cap), 0, 0, 0) != 0:
            if ctypes.get_errno() == errno.EINVAL:
                return  # past the kernel's last capability
            raise _fail(f"prctl(PR_CAPBSET_DROP, {cap})")


def drop_all_capabilities() -> None:
    """Empty every capability set of this process (single-threaded: call it before any thread starts)."""
    libc = _libc()
    effective, _, _ = _capget(libc)
    _drop_bounding_set(libc, effective)
    if libc.prctl(_PR_CAP_AMBIENT, ctypes.c_ulong(_PR_CAP_AMBIENT_CLEAR_ALL), 0, 0, 0) != 0:
        raise _fail("prctl(PR_CAP_AMBIENT, PR_CAP_AMBIENT_CLEAR_ALL)")
    if libc.prctl(_PR_SET_NO_NEW_PRIVS, ctypes.c_ulong(1), 0, 0, 0) != 0:
        raise _fail("prctl(PR_SET_NO_NEW_PRIVS)")
    header = _CapHeader(_LINUX_CAPABILITY_VERSION_3, 0)
    empty = (_CapData * 2)()
    if libc.capset(ctypes.byref(header), empty) != 0:
        raise _fail("capset")
    effective, permitted, inheritable = _capget(libc)
    if effective or permitted or inheritable:  # the ambient set is within permitted: empty with it
        raise PrivilegeError(f"capset left capabilities: effective {effective:#x}, permitted {permitted:#x}, "
                             f"inheritable {inheritable:#x}")
