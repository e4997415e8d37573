"""Workers hold no capabilities: the supervisor may have many (the unit grants CAP_BPF, CAP_NET_ADMIN,
CAP_SYS_ADMIN; these tests run as root), a worker handling untrusted bytes has none, respawned ones included."""

from __future__ import annotations

import os
import signal
from pathlib import Path

import pytest

from tests.support import app, echo_roundtrip, free_ports, wait_for

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
