"""Workers hold no capabilities: the supervisor may have many (the unit grants CAP_BPF, CAP_NET_ADMIN,
CAP_SYS_ADMIN; these tests run as root), a worker handling untrusted bytes has none, respawned ones included."""

from __future__ import annotations

import ctypes
import errno
import os
import platform
import signal
from pathlib import Path

import pytest

from tests.support import Skiff, app, echo_roundtrip, free_ports, wait_for, write_config

CAP_SETS = ("CapInh", "CapPrm", "CapEff", "CapBnd", "CapAmb")


def capabilities(pid: int) -> dict[str, int]:
    """The capability sets (and NoNewPrivs) from /proc/PID/status, as integers."""
    found = {}
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        key, _, value = line.partition(":")
        if key in CAP_SETS:
            found[key] = int(value.strip(), 16)
        elif key == "NoNewPrivs":
            found[key] = int(value.strip())
    return found


def test_workers_drop_every_capability(start_echo, start_skiff) -> None:  # type: ignore[no-untyped-def]
    """1. The supervisor runs with capabilities (as root: all of them). 2. Each worker's effective, permitted,
    inheritable, ambient and bounding sets are empty and no_new_privs is set. 3. Traffic still flows: accept
    on the inherited sockets, connect out to the target. 4. Worker 0 SIGKILLed: its replacement has none either,
    and serves."""
    [target] = free_ports(1)
    [port] = free_ports(1)
    start_echo([target])
    skiff = start_skiff([app("a", [port], [f"127.0.0.1:{target}"])])
    supervisor = capabilities(skiff.proc.pid)
    if not supervisor["CapEff"]:
        pytest.skip("the supervisor has no capabilities to drop here (not root)")
    for slot in (0, 1):
        caps = capabilities(skiff.worker_pid(slot))
        assert caps == {"CapInh": 0, "CapPrm": 0, "CapEff": 0, "CapBnd": 0, "CapAmb": 0, "NoNewPrivs": 1}, \
            (slot, {k: hex(v) for k, v in caps.items()})
    for i in range(20):
        assert echo_roundtrip(port, f"round {i}".encode()) == f"round {i}".encode()
    old = skiff.worker_pid(0)
    os.kill(old, signal.SIGKILL)
    skiff.wait_log(rf"worker 0 \(pid {old}\) was killed by SIGKILL; respawning")

    def respawned() -> bool:
        try:
            return skiff.worker_pid(0) != old  # found by its title, which it sets once it has dropped everything
        except AssertionError:
            return False  # between the reap and the new worker's title

    wait_for(respawned, 10, "worker 0 to respawn")
    new = skiff.worker_pid(0)
    caps = capabilities(new)
    assert caps["CapEff"] == caps["CapPrm"] == caps["CapAmb"] == caps["CapBnd"] == 0, \
        {k: hex(v) for k, v in caps.items()}
    for i in range(20):
        assert echo_roundtrip(port, f"again {i}".encode()) == f"again {i}".encode()
    assert capabilities(skiff.proc.pid)["CapEff"] == supervisor["CapEff"]  # the supervisor keeps its own
    assert "Traceback" not in skiff.log


# A seccomp filter that makes capset(2) fail with EPERM, as a hardened container runtime might: the real kernel
# refuses the real call, nothing in skiff is replaced. (syscall number, AUDIT_ARCH) per machine.
CAPSET = {"x86_64": (126, 0xC000003E), "aarch64": (91, 0xC00000B7)}


class _SockFilter(ctypes.Structure):
    _fields_ = [("code", ctypes.c_uint16), ("jt", ctypes.c_uint8), ("jf", ctypes.c_uint8), ("k", ctypes.c_uint32)]


class _SockFprog(ctypes.Structure):
    _fields_ = [("len", ctypes.c_ushort), ("filter", ctypes.POINTER(_SockFilter))]


def deny_capset() -> None:
    """preexec_fn: install the filter in the supervisor's process; its workers inherit it across fork."""
    nr, arch = CAPSET[platform.machine()]
    load, jeq, ret = 0x20, 0x15, 0x06  # BPF_LD|BPF_W|BPF_ABS, BPF_JMP|BPF_JEQ|BPF_K, BPF_RET|BPF_K
    allow, eperm = 0x7FFF0000, 0x00050000 | errno.EPERM  # SECCOMP_RET_ALLOW, SECCOMP_RET_ERRNO | EPERM
    program = (_SockFilter * 6)(
        _SockFilter(load, 0, 0, 4),  # seccomp_data.arch
        _SockFilter(jeq, 0, 3, arch),  # another ABI: allow
        _SockFilter(load, 0, 0, 0),  # seccomp_data.nr
        _SockFilter(jeq, 0, 1, nr),
        _SockFilter(ret, 0, 0, eperm),
        _SockFilter(ret, 0, 0, allow),
    )
    fprog = _SockFprog(len(program), program)
    libc = ctypes.CDLL(None, use_errno=True)
    if libc.prctl(22, 2, ctypes.byref(fprog), 0, 0) != 0:  # PR_SET_SECCOMP, SECCOMP_MODE_FILTER
        raise OSError(ctypes.get_errno(), "cannot install the seccomp filter")


@pytest.mark.skipif(platform.machine() not in CAPSET, reason="capset's syscall number is known for x86_64/aarch64")
def test_a_worker_that_cannot_drop_its_capabilities_does_not_serve(start_echo, config_path: Path,  # type: ignore[no-untyped-def]
                                                                    processes) -> None:
    """1. The supervisor starts under a seccomp filter that refuses capset (EPERM). 2. Every worker says in one
    line that it cannot drop its capabilities and exits as a boot failure; none ever serves. 3. The supervisor
    gives up as for any worker that cannot boot (exit code 2), with no traceback."""
    if os.geteuid() != 0:
        pytest.skip("installing a seccomp filter without no_new_privs needs root")
    [target] = free_ports(1)
    [port] = free_ports(1)
    start_echo([target])
    write_config(config_path, [app("a", [port], [f"127.0.0.1:{target}"])])
    skiff = Skiff(config_path, workers=1, wait_ready=False, preexec_fn=deny_capset)
    processes.append(skiff)
    assert skiff.proc.wait(30) == 2, skiff.log
    skiff.stop()
    lines = [line for line in skiff.log.splitlines() if "cannot drop its capabilities" in line]
    assert len(lines) == 5, skiff.log
    assert all("capset: Operation not permitted" in line for line in lines), lines
    assert "worker 0 failed to boot 5 times in a row" in skiff.log, skiff.log
    assert "ready: config" not in skiff.log
    assert "Traceback" not in skiff.log, skiff.log
