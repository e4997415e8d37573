"""Real processes for the tests: echo targets and a skiff supervisor on 127.0.0.1, started and cleaned up.

Nothing here mocks the code under test: `Skiff` runs `supervisor.py` as a subprocess, `Echo` runs
`python -m tester.echo`, and clients are plain sockets.
"""

from __future__ import annotations

import contextlib
import os
import re
import signal
import socket
import subprocess
import sys
import threading
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import orjson
import psutil

ROOT = Path(__file__).resolve().parent.parent
PYTHON = sys.executable


def free_ports(n: int) -> list[int]:
    """Ports nothing listens on right now (the kernel's choice, so parallel runs do not collide)."""
    holders, ports = [], []
    for _ in range(n):
        s = socket.socket()
        s.bind(("127.0.0.1", 0))
        holders.append(s)
        ports.append(s.getsockname()[1])
    for s in holders:
        s.close()
    return ports


def wait_for(predicate: Any, timeout: float, what: str, interval: float = 0.02) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if predicate():
            return
        time.sleep(interval)
    raise AssertionError(f"timed out after {timeout} s waiting for {what}")


def can_connect(port: int, host: str = "127.0.0.1") -> bool:
    try:
        with socket.create_connection((host, port), timeout=1):
            return True
    except OSError:
        return False


def echo_roundtrip(port: int, payload: bytes = b"ping", timeout: float = 5.0, host: str = "127.0.0.1") -> bytes:
    """Send, half-close, read to EOF: what a client of an echo target through the proxy gets back."""
    with socket.create_connection((host, port), timeout=timeout) as sock:
        sock.sendall(payload)
        sock.shutdown(socket.SHUT_WR)
        return read_all(sock)


def read_all(sock: socket.socket, limit: int = 1 << 30) -> bytes:
    chunks, size = [], 0
    while size < limit:
        chunk = sock.recv(1 << 16)
        if not chunk:
            break
        chunks.append(chunk)
        size += len(chunk)
    return b"".join(chunks)


class Echo:
    """`python -m tester.echo` on the given ports of 127.0.0.1."""

    def __init__(self, ports: list[int]) -> None:
        self.ports = ports
        self.proc = subprocess.Popen(
            [PYTHON, "-m", "tester.echo", *(f"127.0.0.1:{p}" for p in ports)],
            cwd=ROOT, stdout=subprocess.PIPE, stderr=subprocess.STDOUT,
        )
        assert self.proc.stdout is not None
        line = self.proc.stdout.readline().decode()
        if "listening" not in line:
            self.stop()
            raise RuntimeError(f"echo target did not start: {line!r}")

    def stop(self) -> None:
        if self.proc.poll() is None:
            self.proc.terminate()
            try:
                self.proc.wait(5)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait()


def app(name: str, ports: list[int], targets: list[str], **options: Any) -> dict[str, Any]:
    return {"Name": name, "Ports": ports, "Targets": targets, **options}


def write_config(path: Path, apps: list[dict[str, Any]] | dict[str, Any] | bytes, how: str = "rename") -> None:
    """Write a config the way operators do: "rename" (write a temp file, rename over) or "inplace"."""
    data = apps if isinstance(apps, bytes) else orjson.dumps(apps if isinstance(apps, dict) else {"Apps": apps})
    if how == "inplace":
        with open(path, "r+b" if path.exists() else "wb") as f:
            f.truncate(0)
            f.write(data)
        return
    tmp = path.with_name(f".{path.name}.{os.getpid()}.{time.monotonic_ns()}.tmp")
    tmp.write_bytes(data)
    os.replace(tmp, path)


class Skiff:
    """A real supervisor process; its log (stderr) is collected in the background."""

    def __init__(self, config: Path, *args: str, workers: int = 2, env: dict[str, str] | None = None,
                 wait_ready: bool = True, preexec_fn: Any = None) -> None:
        self.config = config
        self.lines: list[str] = []
        self._lock = threading.Lock()
        self.proc = subprocess.Popen(
            [PYTHON, str(ROOT / "supervisor.py"), "-c", str(config), "-w", str(workers), "--bind", "127.0.0.1",
             "--grace", "5", *args],
            cwd=ROOT, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, env={**os.environ, **(env or {})},
            preexec_fn=preexec_fn,
        )
        self._reader = threading.Thread(target=self._read, daemon=True)
        self._reader.start()
        if wait_ready:
            self.wait_log(r"ready: config v", timeout=15)

    def _read(self) -> None:
        assert self.proc.stdout is not None
        for raw in self.proc.stdout:
            with self._lock:
                self.lines.append(raw.decode(errors="replace").rstrip("\n"))

    @property
    def log(self) -> str:
        with self._lock:
            return "\n".join(self.lines)

    def wait_log(self, pattern: str, timeout: float = 10.0, count: int = 1) -> re.Match[str]:
        regex = re.compile(pattern)
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            with self._lock:
                matches = [m for line in self.lines if (m := regex.search(line))]
            if len(matches) >= count:
                return matches[count - 1]
            if self.proc.poll() is not None:
                self._reader.join(2)
                raise AssertionError(f"supervisor exited ({self.proc.returncode}) before {pattern!r}:\n{self.log}")
            time.sleep(0.02)
        raise AssertionError(f"timed out waiting for {pattern!r} in the log:\n{self.log}")

    def signal(self, signum: int) -> None:
        self.proc.send_signal(signum)

    def workers(self) -> list[psutil.Process]:
        try:
            return psutil.Process(self.proc.pid).children()
        except psutil.NoSuchProcess:
            return []

    def worker_pid(self, slot: int) -> int:
        for child in self.workers():
            with contextlib.suppress(psutil.Error):
                if f"skiff: worker {slot} " in " ".join(child.cmdline()):
                    return child.pid
        raise AssertionError(f"no worker {slot} among {self.workers()}")

    def stop(self, timeout: float = 15.0) -> int:
        if self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)
            try:
                self.proc.wait(timeout)
            except subprocess.TimeoutExpired:
                for child in self.workers():
                    with contextlib.suppress(psutil.Error):
                        child.kill()
                self.proc.kill()
                self.proc.wait()
        self._reader.join(2)
        return self.proc.returncode


@contextlib.contextmanager
def running(*things: Any) -> Iterator[None]:
    try:
        yield
    finally:
        for thing in reversed(things):
            thing.stop()
