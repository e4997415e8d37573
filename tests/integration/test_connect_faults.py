"""The connect path's faults: a deadline racing a finished connect, a connect that raises, a name with several
addresses. Faults come from failpoints (SKIFF_FAILPOINT) and a private /etc/hosts in a mount namespace."""

from __future__ import annotations

import ctypes
import os
import socket
from collections.abc import Callable
from pathlib import Path
from typing import Any

from tests.integration.peers import outcome_of_recv
from tests.support import app, echo_roundtrip, free_ports

CLONE_NEWNS = 0x00020000
MS_REC = 0x4000
MS_PRIVATE = 1 << 18
MS_BIND = 0x1000


def test_a_deadline_that_fires_after_the_connect_completed_changes_nothing(start_echo: Callable[..., Any],
                                                                         start_skiff: Callable[..., Any]) -> None:
    """1. One echo target; the failpoint fires the connect deadline in the window after the upstream was made
    and before the connect task saw its result. 2. Clients get their echo: the connect won the race, the
    working upstream is kept (not closed, not failed over)."""
    port, target = free_ports(2)
    start_echo([target])
    skiff = start_skiff([app("race", [port], [f"127.0.0.1:{target}"])], workers=1,
                        env={"SKIFF_FAILPOINT": "connect-deadline-race"})
    for i in range(5):
        payload = f"race {i}".encode()
        assert echo_roundtrip(port, payload) == payload, i
    assert "is down" not in skiff.log


def test_a_connect_that_raises_closes_the_client_at_once_and_gives_the_count_back(
        start_echo: Callable[..., Any], start_skiff: Callable[..., Any], tmp_path: Path) -> None:
    """1. One echo target with MaxConns 1 and an IdleTimeout of 60 s; the failpoint makes every connect raise
    RuntimeError while its flag file exists. 2. Two clients in turn: each is closed (EOF or reset) long before
    its IdleTimeout. 3. Flag removed: a client gets its echo, so neither failure kept the target's only place
    (MaxConns 1 would refuse it) and the target was not marked down."""
    port, target = free_ports(2)
    flag = tmp_path / "raise"
    flag.touch()
    start_echo([target])
    skiff = start_skiff([app("bug", [port], [f"127.0.0.1:{target}"], MaxConns=1, IdleTimeout=60)], workers=1,
                        env={"SKIFF_FAILPOINT": f"connect-raise:{flag}"})
    for _ in range(2):
        with socket.create_connection(("127.0.0.1", port), timeout=10) as sock:
            sock.sendall(b"anyone?")
            assert outcome_of_recv(sock) in {"eof", "reset"}
    skiff.wait_log("failpoint connect-raise")
    flag.unlink()
    assert echo_roundtrip(port, b"after") == b"after"
    assert "is down" not in skiff.log


def _private_hosts(hosts: Path) -> Callable[[], None]:
    """preexec_fn: the child sees `hosts` as /etc/hosts (its own mount namespace; the host's file is untouched)."""
    libc = ctypes.CDLL(None, use_errno=True)

    def enter() -> None:
        if libc.unshare(CLONE_NEWNS) != 0:
            raise OSError(ctypes.get_errno(), "unshare(CLONE_NEWNS)")
        if libc.mount(b"none", b"/", None, MS_REC | MS_PRIVATE, None) != 0:
            raise OSError(ctypes.get_errno(), "make / private")
        if libc.mount(os.fsencode(hosts), b"/etc/hosts", None, MS_BIND, None) != 0:
            raise OSError(ctypes.get_errno(), "bind /etc/hosts")

    return enter


def test_every_address_of_a_name_is_tried_before_the_target_fails(start_skiff: Callable[..., Any],
                                                                  start_echo: Callable[..., Any],
                                                                  tmp_path: Path) -> None:
    """1. skiff sees /etc/hosts with `::1 localhost` first, then `127.0.0.1 localhost`. 2. The app's only
    target is localhost:PORT, and the echo target listens on 127.0.0.1 only (::1 refuses). 3. Clients get
    their echo: the refused ::1 was one address, not the target, and the target is never marked down."""
    hosts = tmp_path / "hosts"
    hosts.write_text("::1 localhost\n127.0.0.1 localhost\n")
    port, target = free_ports(2)
    start_echo([target])
    skiff = start_skiff([app("named", [port], [f"localhost:{target}"], ConnectTimeout=2)], workers=1,
                        preexec_fn=_private_hosts(hosts))
    for i in range(5):
        payload = f"named {i}".encode()
        assert echo_roundtrip(port, payload) == payload, i
    assert "is down" not in skiff.log
