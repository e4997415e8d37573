"""ACME TLS-ALPN-01 against a real ACME server (pebble): issuance, use, renewal under open connections; the
helper's failures (unreachable server: backoff; killed helper: respawn); the challenge certificate's form."""

from __future__ import annotations

import contextlib
import hashlib
import os
import re
import signal
import socket
import ssl
import stat
import urllib.request
from pathlib import Path

import psutil
import pytest
from cryptography import x509

from control.acme_helper import ACME_IDENTIFIER, challenge_certificate
from tests.support import free_ports, wait_for
from tests.tls.pebble import AVAILABLE, Pebble
from tests.tls.peers import tls_roundtrip
from tests.tls.test_tls_hostile import failures


def acme_config(port: int, target: int, directory: str, ca_file: str, state: Path) -> dict[str, object]:
    return {"Tls": {"Ports": [port], "Acme": {"Directory": directory, "CaFile": ca_file, "Email": "ops@example.test"},
                    "StateDir": str(state)},
            "Apps": [{"Name": "auto", "Hostnames": ["auto.example.test"], "Targets": [f"127.0.0.1:{target}"]}]}


def metrics_text(port: int) -> str:
    with urllib.request.urlopen(f"http://127.0.0.1:{port}/metrics", timeout=5) as response:
        return str(response.read().decode())


def serial_now(port: int, root: Path) -> int | None:
    try:
        der, answer = tls_roundtrip(port, "auto.example.test", ssl.create_default_context(cafile=str(root)))
    except (OSError, ssl.SSLError):
        return None
    assert answer == b"ping"
    return x509.load_der_x509_certificate(der).serial_number


def test_challenge_certificate_carries_the_critical_acme_identifier() -> None:
    """RFC 8737 §3: the name as the only SAN, and the SHA-256 of the key authorization as a DER OCTET STRING in
    the critical acmeIdentifier extension (1.3.6.1.5.5.7.1.31)."""
    cert_pem, _ = challenge_certificate("auto.example.test", "token.thumbprint")
    cert = x509.load_pem_x509_certificate(cert_pem.encode())
    extension = cert.extensions.get_extension_for_oid(ACME_IDENTIFIER)
    assert extension.critical
    assert extension.value.value == b"\x04\x20" + hashlib.sha256(b"token.thumbprint").digest()
    names = cert.extensions.get_extension_for_class(x509.SubjectAlternativeName).value
    assert names.get_values_for_type(x509.DNSName) == ["auto.example.test"]


@pytest.mark.skipif(not AVAILABLE, reason="needs pebble (scripts/install-system-deps.sh)")
def test_issued_by_pebble_then_renewed_under_open_connections(tmp_path, start_echo, start_skiff,  # type: ignore[no-untyped-def]
                                                               processes) -> None:
    """1. pebble issues 12-second certificates; skiff (2 workers) has one terminated app without a certificate.
    2. The helper orders; pebble validates TLS-ALPN-01 on skiff's TLS port; a client that trusts only pebble's
    issuing root then completes a handshake and an echo. 3. A connection stays open over the renewal (at 2/3 of
    the life): a new connection gets a new serial, the open one still echoes. 4. The account key and the
    issued key are mode 0600 under StateDir; /metrics counts the orders and shows the expiry."""
    port, target, metrics = free_ports(3)
    pebble = Pebble(tmp_path / "pebble", port, validity=12)
    processes.append(pebble)
    start_echo([target])
    state = tmp_path / "state"
    skiff = start_skiff(acme_config(port, target, pebble.directory_url, str(pebble.ca.ca_file), state),  # type: ignore[arg-type]
                        "--metrics", f"127.0.0.1:{metrics}")
    root = pebble.root()
    found: list[int] = []
    wait_for(lambda: (s := serial_now(port, root)) is not None and not found.append(s), 30, "a certificate issued")
    first = found[0]
    context = ssl.create_default_context(cafile=str(root))
    with socket.create_connection(("127.0.0.1", port), timeout=10) as raw, \
            context.wrap_socket(raw, server_hostname="auto.example.test") as held:
        held.sendall(b"before")
        assert held.recv(100) == b"before"
        wait_for(lambda: serial_now(port, root) not in (None, first), 30, "the renewed certificate")
        held.sendall(b"after")
        assert held.recv(100) == b"after"  # the open connection kept its session over the swap
    for path in [state / "account.key", *(state / "certs").glob("*.key")]:
        assert stat.S_IMODE(path.stat().st_mode) == 0o600, path
    assert list((state / "certs").glob("*.crt"))
    wait_for(lambda: re.search(r'skiff_acme_orders_total\{result="issued"\} [2-9]', metrics_text(metrics)), 10,
             "two orders counted")
    assert 'skiff_tls_certificate_expiry_timestamp_seconds{hostname="auto.example.test"}' in metrics_text(metrics)
    assert "ACME: certificate issued for auto" in skiff.log


def test_no_certificate_yet_fails_cleanly_backs_off_and_the_helper_respawns(tmp_path, start_echo,  # type: ignore[no-untyped-def]
                                                                             start_skiff) -> None:
    """1. The ACME directory does not answer (a closed port). 2. A handshake for the app's name is closed and
    counted as no_certificate. 3. The helper's failures are retried with growing delays (1 s, then 2 s).
    4. The helper, killed, is started again (a new process)."""
    port, target, closed, metrics = free_ports(4)
    start_echo([target])
    skiff = start_skiff(acme_config(port, target, f"https://127.0.0.1:{closed}/dir", "/dev/null",  # type: ignore[arg-type]
                                    tmp_path / "state"), "--metrics", f"127.0.0.1:{metrics}")
    with pytest.raises((ssl.SSLError, ConnectionError)):
        tls_roundtrip(port, "auto.example.test", ssl.create_default_context())
    skiff.wait_log(r"ACME: the order for auto failed .*retrying in 1 s")
    skiff.wait_log(r"ACME: the order for auto failed .*retrying in 2 s")

    def helper() -> int | None:
        for child in psutil.Process(skiff.proc.pid).children():
            with contextlib.suppress(psutil.Error):
                if "acme helper" in " ".join(child.cmdline()):
                    return child.pid
        return None

    wait_for(lambda: helper() is not None, 10, "the ACME helper")
    first = helper()
    assert first is not None
    os.kill(first, signal.SIGKILL)
    skiff.wait_log(r"the ACME helper exited; restarting it")
    wait_for(lambda: helper() not in (None, first), 10, "a new ACME helper")
    wait_for(lambda: failures(metrics_text(metrics), "auto", "no_certificate") >= 1, 10, "no_certificate counted")
    assert re.search(r'skiff_acme_orders_total\{result="failed"\} [1-9]', metrics_text(metrics))
