"""Running out of file descriptors: the worker pauses accepting instead of spinning, dying or dropping queued
clients, logs it once, and serves the queue once descriptors free up."""

from __future__ import annotations

import resource
import socket
import time
from collections.abc import Callable
from typing import Any

import psutil

from tests.support import app, free_ports, wait_for

NOFILE = 160


def low_nofile() -> None:
    # Hard too: the supervisor raises its soft limit to the hard one at start.
    resource.setrlimit(resource.RLIMIT_NOFILE, (NOFILE, NOFILE))


def test_fd_exhaustion_pauses_then_recovers(start_echo: Callable[..., Any], start_skiff: Callable[..., Any]) -> None:
    """1. One worker under RLIMIT_NOFILE 160. 2. 100 clients connect and hold (each needs two descriptors in the
    worker): the first ones are served, then the worker pauses accepting and says so once. 3. The rest wait in
    the kernel's queue; the worker does not spin (CPU under 10 %) and stays the same process. 4. The first
    clients leave: every waiting client is served, and new ones are too."""
    listen, target = free_ports(2)
    start_echo([target])
    skiff = start_skiff([app("many", [listen], [f"127.0.0.1:{target}"])], workers=1, preexec_fn=low_nofile)
    worker = psutil.Process(skiff.worker_pid(0))
    clients: list[socket.socket] = []
    try:
        for _ in range(100):
            sock = socket.create_connection(("127.0.0.1", listen), timeout=5)
            sock.sendall(b"x")
            clients.append(sock)
        served, waiting = [], []
        for sock in clients:
            sock.settimeout(0.3 if not waiting else 0.01)
            try:
                (served if sock.recv(1) == b"x" else waiting).append(sock)
            except TimeoutError:
                waiting.append(sock)
        assert 40 <= len(served) < 100 and waiting, (len(served), len(waiting))
        skiff.wait_log(r"worker 0: pausing accept: \d+ of 160 file descriptors in use")
        worker.cpu_percent(None)
        time.sleep(1.0)
        assert worker.cpu_percent(None) < 10.0
        assert worker.is_running() and skiff.worker_pid(0) == worker.pid
        for sock in served:
            sock.close()
        for sock in waiting:
            sock.settimeout(5)
            assert sock.recv(1) == b"x", "a queued client was dropped instead of served"
        with socket.create_connection(("127.0.0.1", listen), timeout=5) as sock:
            sock.sendall(b"new")
            assert sock.recv(3) == b"new"
        assert skiff.log.count("pausing accept") == 1
    finally:
        for sock in clients:
            sock.close()
    wait_for(lambda: skiff.proc.poll() is None, 1, "the supervisor to still run")
