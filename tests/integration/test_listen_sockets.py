"""Listening sockets say which families they take, explicitly, whatever net.ipv6.bindv6only is."""

from __future__ import annotations

import socket

from control.sockets import open_listener


def test_ipv6_only_is_set_explicitly_when_a_listener_is_opened() -> None:
    """1. `::` opens a dual-stack listener: IPV6_V6ONLY 0, and an IPv4 client reaches it. 2. `::1` opens an
    IPv6-only listener: IPV6_V6ONLY 1. 3. An IPv4 address opens an AF_INET listener."""
    dual, v6, v4 = open_listener("::", 0), open_listener("::1", 0), open_listener("127.0.0.1", 0)
    try:
        assert dual.getsockopt(socket.IPPROTO_IPV6, socket.IPV6_V6ONLY) == 0
        assert v6.getsockopt(socket.IPPROTO_IPV6, socket.IPV6_V6ONLY) == 1
        assert v4.family == socket.AF_INET
        with socket.create_connection(("127.0.0.1", dual.getsockname()[1]), timeout=5):
            dual.setblocking(True)
            dual.settimeout(5)
            conn, _ = dual.accept()
            conn.close()
    finally:
        for sock in (dual, v6, v4):
            sock.close()
