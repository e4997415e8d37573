"""The first thing a new user does: every port of every app answers through skiff."""

from __future__ import annotations

from tests.support import app, echo_roundtrip, free_ports


def test_every_port_reaches_its_app(start_echo, start_skiff) -> None:  # type: ignore[no-untyped-def]
    """1. Two echo targets per app. 2. skiff with two apps of two ports each. 3. Each port echoes."""
    t = free_ports(4)
    p = free_ports(4)
    start_echo(t)
    start_skiff([app("a", p[:2], [f"127.0.0.1:{t[0]}", f"127.0.0.1:{t[1]}"]),
                 app("b", p[2:], [f"127.0.0.1:{t[2]}", f"127.0.0.1:{t[3]}"])])
    for port in p:
        assert echo_roundtrip(port, f"hello {port}".encode()) == f"hello {port}".encode()
