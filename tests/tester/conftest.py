"""Fixtures for the tester's tests: a config on free loopback ports and relays (correct or broken) on it."""

from __future__ import annotations

import socket
import subprocess
import sys
from collections.abc import Callable, Iterator
from pathlib import Path

import orjson
import pytest

from tests.tester.relays import Relay, RelayThread

ROOT = Path(__file__).resolve().parents[2]


def free_ports(n: int) -> list[int]:
    """n distinct ports the kernel has just handed out (bound together, so they differ)."""
    socks = [socket.socket() for _ in range(n)]
    try:
        for s in socks:
            s.bind(("127.0.0.1", 0))
        return [s.getsockname()[1] for s in socks]
    finally:
        for s in socks:
            s.close()


@pytest.fixture
def config(tmp_path: Path) -> Path:
    """Two apps: alpha (two ports, two targets) and beta (one port, three targets), all on loopback."""
    p = free_ports(8)
    document = {
        "Apps": [
            {"Name": "alpha", "Ports": p[0:2], "Targets": [f"127.0.0.1:{x}" for x in p[2:4]]},
            {"Name": "beta", "Ports": p[4:5], "Targets": [f"127.0.0.1:{x}" for x in p[5:8]]},
        ]
    }
    path = tmp_path / "config.json"
    path.write_bytes(orjson.dumps(document))
    return path


@pytest.fixture
def relay(config: Path) -> Iterator[Callable[[str | None], Relay]]:
    """Start a relay (at most one per test) with the given fault on the config; stopped after the test."""
    threads: list[RelayThread] = []

    def start(fault: str | None = None) -> Relay:
        thread = RelayThread(config, fault)
        threads.append(thread)
        return thread.__enter__()

    yield start
    for thread in threads:
        thread.__exit__()


def run_tester(*args: str, timeout: float = 60) -> subprocess.CompletedProcess[str]:
    """`python -m tester ARGS` as a real subprocess, from the repository root."""
    return subprocess.run(
        [sys.executable, "-m", "tester", *args, "--quiet"],
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=timeout,
        check=False,
    )
