"""skiff nodes that follow one etcd prefix, side by side in the root namespace on 127.0.0.2, .3, ...

Each `Node` is a real `supervisor.py -c etcd://...` (tests.support.Skiff) with its own bind address, metrics
port, node ID and cache file; `state()` reads its /status. `expected_digest` is what a node must serve once it
caught up: the digest of the config etcd's documents make right now.
"""

from __future__ import annotations

import contextlib
import os
import signal
import urllib.error
import urllib.request
from pathlib import Path
from typing import Any

import orjson
import psutil

from proxy.cluster import EtcdUrl, assemble, parse_etcd_url
from proxy.snapshot import digest_of
from tests.cluster.etcd import EtcdCluster
from tests.support import Skiff, free_ports


class Node(Skiff):
    def __init__(self, url: str, index: int, cache_dir: Path, *args: str, wait_ready: bool = True) -> None:
        self.address = f"127.0.0.{index + 2}"
        self.node_id = f"node{index}"
        self.metrics_port = free_ports(1)[0]
        self.cache = cache_dir / f"{self.node_id}.cache.json"
        super().__init__(url, "--bind", self.address, "--node-id", self.node_id,  # type: ignore[arg-type]
                         "--metrics", f"127.0.0.1:{self.metrics_port}", "--config-cache", str(self.cache),
                         *args, workers=1, wait_ready=wait_ready)

    def get(self, path: str) -> bytes:
        with urllib.request.urlopen(f"http://127.0.0.1:{self.metrics_port}{path}", timeout=5) as response:
            data: bytes = response.read()
            return data

    def state(self) -> dict[str, Any]:
        try:
            status: dict[str, Any] = orjson.loads(self.get("/status"))
            return status
        except (OSError, urllib.error.URLError):
            return {}

    def serves(self, digest: str, revision: int = 0) -> bool:
        """Every worker serves the content with this digest, and the node says it applied `revision`."""
        state = self.state()
        return (state.get("digest") == digest and state.get("healthy") is True
                and state["config_source"]["revision"] >= revision)

    def processes(self) -> list[psutil.Process]:
        return [psutil.Process(self.proc.pid), *self.workers()]

    def pause(self) -> None:
        """Disconnect the node the hard way: stop the supervisor, its workers and its etcd helper."""
        for process in self.processes():
            process.send_signal(signal.SIGSTOP)

    def resume(self) -> None:
        for process in self.processes():
            with contextlib.suppress(psutil.Error):
                process.send_signal(signal.SIGCONT)

    def stop(self, timeout: float = 15.0) -> int:
        with contextlib.suppress(psutil.Error):
            self.resume()
        return super().stop(timeout)


def expected_digest(etcd: EtcdCluster, url: str | EtcdUrl) -> str:
    """The digest of what etcd's documents under the prefix make now (nothing invalid assumed)."""
    parsed = parse_etcd_url(url) if isinstance(url, str) else url
    listing = etcd.client.call("list_prefix", parsed.prefix + "/")
    return digest_of(assemble(parsed, listing.documents, {}).config)


def skiffctl(url: str, *args: str) -> tuple[int, str, str]:
    import subprocess

    from tests.support import PYTHON, ROOT
    done = subprocess.run([PYTHON, "-m", "skiffctl", "--etcd", url, *args], cwd=ROOT, capture_output=True,
                          timeout=60, env={**os.environ})
    return done.returncode, done.stdout.decode(), done.stderr.decode()
