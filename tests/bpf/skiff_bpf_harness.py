"""Test harness for BPF steering: run a function inside a network namespace, and small TCP helpers.

Python 3.11 has no os.setns, so `Netns.run` forks, enters the namespace with setns(2) through ctypes in the
child, runs the function there and ships back its (pickled) result or traceback. The pytest process itself
never changes namespace, and everything the child opened (BPF links, sockets) dies with it.
"""

from __future__ import annotations

import ctypes
import os
import pickle
import select
import signal
import socket
import time
import traceback
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

CLONE_NEWNET = 0x40000000
SO_COOKIE = 57

_libc = ctypes.CDLL(None, use_errno=True)


@dataclass(frozen=True)
class Netns:
    name: str

    def run(self, fn: Callable[..., Any], *args: Any, timeout: float = 60.0) -> Any:
        """fn(*args) in a forked child inside this namespace; an exception there fails the test."""
        rfd, wfd = os.pipe()
        pid = os.fork()
        if pid == 0:  # child: never return into pytest
            os.close(rfd)
            status = 0
            try:
                fd = os.open(f"/run/netns/{self.name}", os.O_RDONLY)
                if _libc.setns(fd, CLONE_NEWNET) != 0:
                    raise OSError(ctypes.get_errno(), "setns")
                os.close(fd)
                payload = pickle.dumps(("ok", fn(*args)))
            except BaseException:
                payload = pickle.dumps(("error", traceback.format_exc()))
                status = 1
            with os.fdopen(wfd, "wb") as out:
                out.write(payload)
            os._exit(status)
        os.close(wfd)
        chunks: list[bytes] = []
        deadline = time.monotonic() + timeout
        try:
            while True:
                left = deadline - time.monotonic()
                ready = select.select([rfd], [], [], left)[0] if left > 0 else []
                if not ready:
                    os.kill(pid, signal.SIGKILL)  # timed out: the child must not outlive the test
                    break
                chunk = os.read(rfd, 65536)
                if not chunk:
                    break
                chunks.append(chunk)
        finally:
            os.close(rfd)
            _, status = os.waitpid(pid, 0)
        if not chunks:
            raise AssertionError(f"child in {self.name} produced nothing (wait status {status}, timeout?)")
        kind, value = pickle.loads(b"".join(chunks))
        if kind == "error":
            raise AssertionError(f"in netns {self.name}:\n{value}")
        return value


def listener(host: str = "127.0.0.1", family: int = socket.AF_INET) -> socket.socket:
    """A worker-group style listener: SO_REUSEPORT, on an ephemeral steering port."""
    sock = socket.socket(family, socket.SOCK_STREAM)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEPORT, 1)
    if family == socket.AF_INET6:
        sock.setsockopt(socket.IPPROTO_IPV6, socket.IPV6_V6ONLY, 0)
    sock.bind((host, 0))
    sock.listen(512)
    return sock


def connect_and_accept(port: int, lsock: socket.socket, host: str = "127.0.0.1") -> int:
    """Connect to host:port and accept on lsock; the local port the accepted socket reports."""
    with socket.create_connection((host, port), timeout=2):
        lsock.settimeout(2)
        conn, _ = lsock.accept()
        with conn:
            return int(conn.getsockname()[1])


def connect_outcome(port: int, host: str = "127.0.0.1", timeout: float = 2.0) -> tuple[str, float]:
    """('connected' | 'refused' | 'timeout' | other errno name, seconds it took)."""
    start = time.monotonic()
    try:
        with socket.create_connection((host, port), timeout=timeout):
            outcome = "connected"
    except ConnectionRefusedError:
        outcome = "refused"
    except TimeoutError:
        outcome = "timeout"
    except OSError as exc:
        outcome = os.strerror(exc.errno or 0)
    return outcome, time.monotonic() - start


def cookie(sock: socket.socket) -> int:
    return int.from_bytes(sock.getsockopt(socket.SOL_SOCKET, SO_COOKIE, 8), "little")
