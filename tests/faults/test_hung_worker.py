"""A worker that hangs (SIGSTOP stands in for a livelock) is found and replaced; its queue waits for the next one.

Real processes and signals: an acknowledgement deadline catches a worker that does not apply a reload, a liveness
ping catches one that hangs with no reload at all. Either way the supervisor kills and respawns it; the sockets
are the supervisor's, so what the kernel queued for the hung worker is served by its replacement.
"""

from __future__ import annotations

import contextlib
import os
import signal
import socket
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest

from tests.support import Skiff, app, can_connect, free_ports, read_all, wait_for, write_config


@contextlib.contextmanager
def stopped(pid: int) -> Iterator[None]:
    os.kill(pid, signal.SIGSTOP)
    try:
        yield
    finally:
        with contextlib.suppress(ProcessLookupError):
            os.kill(pid, signal.SIGCONT)


def _clients(port: int, count: int) -> list[socket.socket]:
    clients = []
    for i in range(count):
        sock = socket.create_connection(("127.0.0.1", port), timeout=20)
        sock.sendall(f"client {i}".encode())
        sock.shutdown(socket.SHUT_WR)
        clients.append(sock)
    return clients


def _answered(clients: list[socket.socket]) -> int:
    answered = 0
    for i, sock in enumerate(clients):
        with sock:
            try:
                answered += read_all(sock) == f"client {i}".encode()
            except OSError:
                pass
    return answered


@pytest.fixture
def notify(tmp_path: Path) -> Iterator[tuple[socket.socket, str]]:
    path = str(tmp_path / "notify.sock")
    listener = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
    listener.bind(path)
    listener.settimeout(20)
    yield listener, path
    listener.close()


def test_worker_hung_during_reload_is_replaced(
        start_echo: Callable[[list[int]], Any], start_skiff: Callable[..., Skiff], config_path: Path,
        notify: tuple[socket.socket, str]) -> None:
    """1. skiff -w 2 (acknowledgement deadline 1.5 s, under the 3 s a ping takes to find a hang) serves port A.
    2. Worker 1 hangs (SIGSTOP). 3. A reload adds port B: systemd hears RELOADING=1. 4. Worker 1 does not
    acknowledge: after the deadline it is killed and respawned, and systemd hears READY=1. 5. 20 clients of B,
    some queued on the hung worker's socket all along, are all answered."""
    listener, path = notify
    target, port_a, port_b = free_ports(3)
    start_echo([target])
    skiff = start_skiff([app("a", [port_a], [f"127.0.0.1:{target}"])], "--ack-timeout", "1.5",
                        env={"NOTIFY_SOCKET": path})
    assert listener.recv(4096).startswith(b"READY=1")
    hung = skiff.worker_pid(1)
    with stopped(hung):
        write_config(config_path, [app("a", [port_a, port_b], [f"127.0.0.1:{target}"])])
        assert listener.recv(4096).startswith(b"RELOADING=1")
        wait_for(lambda: can_connect(port_b), 10, "port B to accept connections")
        clients = _clients(port_b, 20)
        assert listener.recv(4096).startswith(b"READY=1\nSTATUS=serving config v2")
        skiff.wait_log(rf"worker 1 \(pid {hung}\) did not acknowledge config v2 within 1.5 s; killing it")
        assert _answered(clients) == 20
    wait_for(lambda: skiff.worker_pid(1) != hung, 10, "worker 1 to be respawned")


def test_hung_worker_is_found_without_a_reload(
        start_echo: Callable[[list[int]], Any], start_skiff: Callable[..., Skiff]) -> None:
    """1. skiff -w 2 serves a port. 2. Worker 0 hangs (SIGSTOP); no reload happens. 3. It leaves three pings
    unanswered: killed and respawned. 4. 20 clients, some queued on its socket meanwhile, are all answered."""
    target, port = free_ports(2)
    start_echo([target])
    skiff = start_skiff([app("a", [port], [f"127.0.0.1:{target}"])])
    hung = skiff.worker_pid(0)
    with stopped(hung):
        clients = _clients(port, 20)
        skiff.wait_log(rf"worker 0 \(pid {hung}\) answered none of the last 3 pings", timeout=15)
        assert _answered(clients) == 20
    wait_for(lambda: skiff.worker_pid(0) != hung, 10, "worker 0 to be respawned")
