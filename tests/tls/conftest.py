"""A TLS setup: a CA, certificates for two terminated apps (one with a wildcard), and a passthrough target."""

from __future__ import annotations

import urllib.request
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest

from tests.support import Skiff, free_ports
from tests.tls.peers import TlsEcho
from tests.tls.pki import Authority, Issued


@dataclass
class TlsSetup:
    ca: Authority
    port: int
    metrics: int
    certs: dict[str, Issued]
    skiff: Skiff

    def metrics_text(self) -> str:
        with urllib.request.urlopen(f"http://127.0.0.1:{self.metrics}/metrics", timeout=5) as response:
            return str(response.read().decode())


@pytest.fixture
def tls_setup(tmp_path: Path, start_echo: Callable[..., Any], start_skiff: Callable[..., Skiff],
              processes: list[Any]) -> Callable[..., TlsSetup]:
    def start(workers: int = 1, timeout: float | None = None) -> TlsSetup:
        ca = Authority(tmp_path)
        certs = {"a": ca.issue("a", ["a.example.test"]),
                 "b": ca.issue("b", ["b.example.test", "*.b.example.test"]),
                 "pass": ca.issue("pass", ["pass.example.test"])}
        port, metrics, t1, t2, t3 = free_ports(5)
        start_echo([t1, t2])
        processes.append(TlsEcho(t3, certs["pass"].cert, certs["pass"].key))
        extra = {} if timeout is None else {"TlsHandshakeTimeout": timeout}
        config = {"Tls": {"Ports": [port]}, "Apps": [
            {"Name": "a", "Hostnames": ["a.example.test"], "Targets": [f"127.0.0.1:{t1}"],
             "Certificate": str(certs["a"].cert), "Key": str(certs["a"].key), **extra},
            {"Name": "b", "Hostnames": ["b.example.test", "*.b.example.test"], "Targets": [f"127.0.0.1:{t2}"],
             "Certificate": str(certs["b"].cert), "Key": str(certs["b"].key), **extra},
            {"Name": "pass", "Hostnames": ["pass.example.test"], "TlsMode": "passthrough",
             "Targets": [f"127.0.0.1:{t3}"]},
        ]}
        skiff = start_skiff(config, "--metrics", f"127.0.0.1:{metrics}", workers=workers)  # type: ignore[arg-type]
        return TlsSetup(ca, port, metrics, certs, skiff)

    return start
