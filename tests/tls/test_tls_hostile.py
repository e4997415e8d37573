"""Hostile and broken TLS clients on a shared TLS port: each is closed and counted by reason, the worker neither
crashes nor spins, and ordinary clients are served throughout."""

from __future__ import annotations

import socket
import ssl

import psutil

from tests.support import read_all, wait_for
from tests.tls.hellos import handshake_fragmented, make_hello
from tests.tls.peers import tls_roundtrip


def until_closed(sock: socket.socket) -> bytes:
    """What the proxy sent before it closed (a close with our bytes unread reaches us as a reset)."""
    try:
        return read_all(sock)
    except ConnectionResetError:
        return b""


def closed_by_proxy(payload: bytes, port: int) -> bytes:
    """Send `payload`, keep our side open, read until the proxy closes: what it sent before closing."""
    with socket.create_connection(("127.0.0.1", port), timeout=15) as sock:
        sock.sendall(payload)
        return until_closed(sock)


def failures(text: str, app: str, reason: str) -> int:
    prefix = f'skiff_tls_handshake_failures_total{{app="{app}",reason="{reason}"}} '
    return next((int(line[len(prefix):]) for line in text.splitlines() if line.startswith(prefix)), 0)


def test_fragmented_hellos_are_reassembled(tls_setup) -> None:  # type: ignore[no-untyped-def]
    """1. The hello of a real client, re-cut into TLS records of 1, 3 and 50 bytes and sent in TCP segments of
    1 to 7 bytes (Nagle off). 2. skiff reads the name across records and segments, hands the untouched bytes to
    the TLS layer, and the handshake and echo complete for the app the name belongs to."""
    setup = tls_setup()
    context = setup.ca.client_context()
    for record, segment in ((1, 7), (3, 1), (50, 2)):
        assert handshake_fragmented(setup.port, context, "b.example.test", record, segment) == b"ping", record


def test_hostile_inputs_are_closed_and_counted(tls_setup) -> None:  # type: ignore[no-untyped-def]
    """1. TlsHandshakeTimeout 1 s, one worker. 2. Send: HTTP instead of TLS; a hello without SNI; a hello for a
    name no app has; a hello announcing 20,000 bytes; half a hello then EOF; twenty clients that stop mid-hello;
    a client that sends its whole hello and then stalls. 3. Each is closed by skiff. 4. While the twenty stall,
    the worker uses little CPU (a partial hello does not spin the loop). 5. /metrics counts each by reason:
    not_tls, unknown_sni (app ""), protocol, timeout (app "" before the name, app "a" after). 6. The worker is
    the same process, and a normal client still gets through."""
    setup = tls_setup(timeout=1.0)
    worker = psutil.Process(setup.skiff.worker_pid(0))
    port = setup.port
    assert closed_by_proxy(b"GET / HTTP/1.1\r\nHost: a.example.test\r\n\r\n", port) == b""
    assert closed_by_proxy(make_hello(None), port) == b""
    assert closed_by_proxy(make_hello("nobody.example.test"), port) == b""
    assert closed_by_proxy(b"\x16\x03\x01\x40\x00\x01\x00\x4e\x20" + bytes(300), port) == b""
    hello = make_hello("a.example.test")
    with socket.create_connection(("127.0.0.1", port), timeout=15) as sock:
        sock.sendall(hello[:len(hello) // 2])
        sock.shutdown(socket.SHUT_WR)
        assert until_closed(sock) == b""
    before = worker.cpu_times()
    stalled = [socket.create_connection(("127.0.0.1", port), timeout=15) for _ in range(20)]
    try:
        for sock in stalled:
            sock.sendall(hello[:40])
        for sock in stalled:
            assert until_closed(sock) == b""  # closed by the handshake timeout, not by us
    finally:
        for sock in stalled:
            sock.close()
    after = worker.cpu_times()
    spent = (after.user + after.system) - (before.user + before.system)
    assert spent < 0.5, f"the worker used {spent:.2f} s of CPU while 20 hellos stalled for 1 s"
    with socket.create_connection(("127.0.0.1", port), timeout=15) as sock:
        sock.sendall(hello)
        answered = until_closed(sock)  # the server's flight, then the close when the timeout passes
        assert answered[:1] == b"\x16"
    try:
        ssl_context = setup.ca.client_context()
        tls_roundtrip(port, "nobody.example.test", ssl_context)
        raise AssertionError("a handshake for an unknown name succeeded")
    except (ssl.SSLError, ConnectionError):
        pass

    def counted() -> bool:
        text = setup.metrics_text()
        return (failures(text, "", "not_tls") >= 1 and failures(text, "", "unknown_sni") >= 3
                and failures(text, "", "protocol") >= 2 and failures(text, "", "timeout") >= 20
                and failures(text, "a", "timeout") >= 1)

    wait_for(counted, 10, "every failure counted by reason in /metrics")
    assert worker.pid == setup.skiff.worker_pid(0) and worker.is_running()
    assert tls_roundtrip(port, "a.example.test", setup.ca.client_context())[1] == b"ping"
