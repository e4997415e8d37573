"""A real ACME server for the tests: Debian's pebble, with pebble-challtestsrv as its DNS (every name resolves
to 127.0.0.1, no IPv6), its own TLS certificate and JSON config generated here, all on loopback."""

from __future__ import annotations

import shutil
import ssl
import subprocess
import urllib.request
from pathlib import Path

import orjson

from tests.support import can_connect, free_ports, wait_for
from tests.tls.pki import Authority

AVAILABLE = shutil.which("pebble") is not None and shutil.which("pebble-challtestsrv") is not None


class Pebble:
    def __init__(self, directory: Path, tls_port: int, validity: int = 3600) -> None:
        self.directory = directory
        directory.mkdir(parents=True, exist_ok=True)
        self.ca = Authority(directory, "pebble API CA")
        served = self.ca.issue("pebble", ["localhost"], ["127.0.0.1"])
        self.port, self.management, dns, dns_management, http = free_ports(5)
        config = {"pebble": {
            "listenAddress": f"127.0.0.1:{self.port}", "managementListenAddress": f"127.0.0.1:{self.management}",
            "certificate": str(served.cert), "privateKey": str(served.key), "httpPort": http,
            "tlsPort": tls_port, "ocspResponderURL": "", "externalAccountBindingRequired": False,
            "certificateValidityPeriod": validity}}
        (directory / "pebble.json").write_bytes(orjson.dumps(config))
        self.procs: list[subprocess.Popen[bytes]] = []
        self.log = directory / "pebble.log"
        out = open(self.log, "wb")  # noqa: SIM115 - the processes write to it until stop()
        self.procs.append(subprocess.Popen(
            ["pebble-challtestsrv", "-defaultIPv4", "127.0.0.1", "-defaultIPv6", "", "-dns01", f"127.0.0.1:{dns}",
             "-http01", "", "-https01", "", "-tlsalpn01", "", "-management",
             f"127.0.0.1:{dns_management}"], stdout=out, stderr=subprocess.STDOUT))
        self.procs.append(subprocess.Popen(
            ["pebble", "-config", str(directory / "pebble.json"), "-dnsserver", f"127.0.0.1:{dns}"],
            stdout=out, stderr=subprocess.STDOUT, cwd=directory,
            env={"PEBBLE_VA_NOSLEEP": "1", "PEBBLE_WFE_NONCEREJECT": "0", "PATH": "/usr/bin:/bin"}))
        out.close()
        try:
            wait_for(lambda: can_connect(self.port) and can_connect(self.management), 20, "pebble to listen")
        except AssertionError:
            self.stop()
            raise

    @property
    def directory_url(self) -> str:
        return f"https://127.0.0.1:{self.port}/dir"

    def root(self) -> Path:
        """The root that issues skiff's certificates (it changes with every pebble start)."""
        context = ssl.create_default_context(cafile=str(self.ca.ca_file))
        with urllib.request.urlopen(f"https://127.0.0.1:{self.management}/roots/0", context=context,
                                    timeout=10) as response:
            pem = response.read()
        path = self.directory / "issuing-root.pem"
        path.write_bytes(pem)
        return path

    def stop(self) -> None:
        for proc in reversed(self.procs):
            if proc.poll() is None:
                proc.terminate()
                try:
                    proc.wait(5)
                except subprocess.TimeoutExpired:
                    proc.kill()
                    proc.wait()
