"""SNI routing on one shared TLS port: two terminated apps (one by wildcard) and a passthrough app, reached with
real clients (Python's ssl, openssl s_client, curl --resolve); the certificate served is the app's own."""

from __future__ import annotations

import os
import re
import shutil
import socket
import ssl
import subprocess

import pytest
from cryptography import x509

from tests.support import can_connect, echo_roundtrip, free_ports, wait_for, write_config
from tests.tls.peers import tls_roundtrip
from tests.tls.pki import Authority


def serial_of(der: bytes) -> int:
    return x509.load_der_x509_certificate(der).serial_number


def test_two_terminated_apps_and_one_passthrough_on_one_port(tls_setup) -> None:  # type: ignore[no-untyped-def]
    """1. One TLS port; apps a and b terminate with their own certificates (b also for *.b.example.test), app
    pass passes TLS through to a target holding its own certificate. 2. A client for each name gets the
    certificate of that app (by serial), and the echo of its bytes: plaintext reached the echo targets of a
    and b; the passthrough target saw the client's own hello (its SNI) and answered itself. 3. /metrics counts
    the terminated handshakes per app."""
    setup = tls_setup()
    context = setup.ca.client_context()
    for name, app in (("a.example.test", "a"), ("b.example.test", "b"), ("deep.b.example.test", "b")):
        der, answer = tls_roundtrip(setup.port, name, context, b"ping")
        assert serial_of(der) == setup.certs[app].serial, name
        assert answer == b"ping", name
    der, answer = tls_roundtrip(setup.port, "pass.example.test", context, b"ping")
    assert serial_of(der) == setup.certs["pass"].serial
    assert answer == b"passthrough:ping"
    big = bytes(range(256)) * 4096  # 1 MiB both ways through termination
    assert tls_roundtrip(setup.port, "a.example.test", context, big)[1] == big

    def counted() -> bool:
        text = setup.metrics_text()
        return ('skiff_tls_handshakes_total{app="a"} 2' in text and 'skiff_tls_handshakes_total{app="b"} 2' in text
                and 'skiff_connections_total{app="pass"} 1' in text)

    wait_for(counted, 10, "the handshakes in /metrics")
    text = setup.metrics_text()
    assert re.search(r'skiff_tls_certificate_expiry_timestamp_seconds\{hostname="a.example.test"\} \d', text)


@pytest.mark.skipif(shutil.which("openssl") is None or shutil.which("curl") is None, reason="needs openssl, curl")
def test_openssl_and_curl_clients(tls_setup) -> None:  # type: ignore[no-untyped-def]
    """1. openssl s_client with -servername: verification against the test CA succeeds, TLS 1.2 and 1.3.
    2. curl --resolve speaks through termination to the echo target: the echo returns curl's own request."""
    setup = tls_setup()
    for version in ("-tls1_2", "-tls1_3"):
        done = subprocess.run(
            ["openssl", "s_client", "-connect", f"127.0.0.1:{setup.port}", "-servername", "a.example.test",
             "-CAfile", str(setup.ca.ca_file), "-verify_return_error", version, "-brief"],
            input=b"hello\n", capture_output=True, timeout=20)
        output = (done.stdout + done.stderr).decode()
        assert "Verification: OK" in output, output
        assert ("TLSv1.3" if version == "-tls1_3" else "TLSv1.2") in output, output
    done = subprocess.run(
        ["curl", "-sS", "--max-time", "3", "--cacert", str(setup.ca.ca_file), "--resolve",
         f"x.b.example.test:{setup.port}:127.0.0.1", f"https://x.b.example.test:{setup.port}/hello",
         "--http1.1", "--http0.9"], capture_output=True, timeout=20)
    # The echo target answers the request with the request itself (HTTP/0.9 to curl: no status line).
    assert done.stdout.startswith(b"GET /hello HTTP/1.1\r\nHost: x.b.example.test"), (done.stdout, done.stderr)


def test_handshake_protocol_versions(tls_setup) -> None:  # type: ignore[no-untyped-def]
    """A client pinned to TLS 1.2, and one pinned to 1.3: both complete through termination."""
    setup = tls_setup()
    for version in (ssl.TLSVersion.TLSv1_2, ssl.TLSVersion.TLSv1_3):
        context = setup.ca.client_context()
        context.minimum_version = context.maximum_version = version
        assert tls_roundtrip(setup.port, "a.example.test", context)[1] == b"ping"


def test_replaced_certificate_file_is_served_without_dropping_connections(tls_setup) -> None:  # type: ignore[no-untyped-def]
    """1. A client holds a terminated connection to app a. 2. The operator renames a new certificate and key
    over app a's files (the config file is untouched). 3. skiff sees the change, and a new connection gets the
    new certificate (by serial). 4. The held connection still echoes: its session was not touched."""
    setup = tls_setup(workers=2)
    context = setup.ca.client_context()
    old = setup.certs["a"]
    with socket.create_connection(("127.0.0.1", setup.port), timeout=10) as raw, \
            context.wrap_socket(raw, server_hostname="a.example.test") as held:
        held.sendall(b"before")
        assert held.recv(100) == b"before"
        new = setup.ca.issue("a-new", ["a.example.test"])
        for source, target in ((new.key, old.key), (new.cert, old.cert)):
            tmp = target.with_name(target.name + ".tmp")
            tmp.write_bytes(source.read_bytes())
            os.replace(tmp, target)

        def serving_new() -> bool:
            return serial_of(tls_roundtrip(setup.port, "a.example.test", context)[0]) == new.serial

        wait_for(serving_new, 15, "the replaced certificate to be served")
        held.sendall(b"after")
        assert held.recv(100) == b"after"


def test_reload_adds_moves_and_removes_the_tls_port(tmp_path, start_echo, start_skiff) -> None:  # type: ignore[no-untyped-def]
    """1. skiff serves one plain app. 2. A reload adds Tls.Ports and a terminated app without Ports: the TLS
    port serves it, with ProxyProtocol v1 carrying the client's address to the target. 3. A reload moves the
    TLS port: the new one serves, the old one is closed. 4. A reload removes Tls: the port is closed, the plain
    app still serves."""
    plain, target, first, second = free_ports(4)
    ca = Authority(tmp_path)
    issued = ca.issue("a", ["a.example.test"])
    start_echo([target])
    plain_app = {"Name": "plain", "Ports": [plain], "Targets": [f"127.0.0.1:{target}"]}
    skiff = start_skiff([plain_app])
    tls_app = {"Name": "a", "Hostnames": ["a.example.test"], "Targets": [f"127.0.0.1:{target}"],
               "Certificate": str(issued.cert), "Key": str(issued.key), "ProxyProtocol": "v1"}
    for version, port in ((2, first), (3, second)):
        write_config(skiff.config, {"Tls": {"Ports": [port]}, "Apps": [plain_app, tls_app]})
        skiff.wait_log(rf"config v{version} applied by 2/2 workers")
        _, answer = tls_roundtrip(port, "a.example.test", ca.client_context())
        assert answer.startswith(b"PROXY TCP4 127.0.0.1 127.0.0.1 ") and answer.endswith(b"ping"), answer
    assert not can_connect(first)
    write_config(skiff.config, [plain_app])
    skiff.wait_log(r"config v4 applied by 2/2 workers")
    assert not can_connect(second)
    assert echo_roundtrip(plain) == b"ping"
