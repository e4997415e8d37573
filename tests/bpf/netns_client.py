"""Clients, named targets and a real supervisor inside one test's network namespace; pytest stays where it is.

A socket belongs to the namespace it was created in, so `Namespace.socket()` creates it on a short-lived thread
that has setns()ed into the namespace (setns with CLONE_NEWNET moves only the calling thread); connect, send and
accept then work from any thread. Processes start under `nsenter --net`, which keeps the mount namespace: the
test's private bpffs pin root is visible to them exactly as it is to pytest (`ip netns exec` would give them a
private mount namespace with /sys remounted).

Run as a program it is a named target, a backend that says who it is and then echoes:

    python netns_client.py NAME=HOST:PORT [NAME=HOST:PORT ...]

Every connection first receives b"NAME\\n", then every byte it sends back, half-close included.
"""

from __future__ import annotations

import asyncio
import contextlib
import ctypes
import os
import re
import signal
import socket
import subprocess
import sys
import threading
import time
from collections.abc import Callable, Iterable
from pathlib import Path
from typing import Any

import psutil

from tests.support import read_all

CLONE_NEWNET = 0x40000000
HERE = Path(__file__).resolve().parent
REPO = HERE.parents[1]
PYTHON = sys.executable

_libc = ctypes.CDLL(None, use_errno=True)
Socket = socket.socket  # inside Namespace, `socket` names its method


class Namespace:
    """A network namespace made by `ip netns add` (the `netns` fixture's name)."""

    def __init__(self, name: str) -> None:
        self.name = name
        self.path = f"/run/netns/{name}"

    # --- sockets -------------------------------------------------------------------------------------
    def sockets(self, count: int, family: int = socket.AF_INET, kind: int = socket.SOCK_STREAM) -> list[Socket]:
        """count new sockets of this namespace, made on one thread that entered it."""
        made: list[Socket] = []
        failed: list[BaseException] = []

        def enter_and_create() -> None:
            try:
                fd = os.open(self.path, os.O_RDONLY | os.O_CLOEXEC)
                try:
                    if _libc.setns(fd, CLONE_NEWNET) != 0:
                        err = ctypes.get_errno()
                        raise OSError(err, f"setns {self.path}: {os.strerror(err)}")
                finally:
                    os.close(fd)
                made.extend(socket.socket(family, kind) for _ in range(count))
            except BaseException as exc:  # handed to the caller's thread
                failed.append(exc)

        thread = threading.Thread(target=enter_and_create, name=f"setns-{self.name}")
        thread.start()
        thread.join(10)
        if failed:
            raise failed[0]
        if len(made) != count:
            raise RuntimeError(f"could not create {count} sockets in {self.name} within 10 s")
        return made

    def socket(self, family: int = socket.AF_INET, kind: int = socket.SOCK_STREAM) -> Socket:
        return self.sockets(1, family, kind)[0]

    def connect(self, port: int, host: str = "127.0.0.1", timeout: float = 2.0) -> Socket:
        family = socket.AF_INET6 if ":" in host else socket.AF_INET
        sock = self.socket(family)
        sock.settimeout(timeout)
        try:
            sock.connect((host, port))
        except BaseException:
            sock.close()
            raise
        return sock

    def outcome(self, port: int, host: str = "127.0.0.1", timeout: float = 1.0) -> str:
        """'connected', 'refused', 'timeout' or the errno's text."""
        try:
            with self.connect(port, host, timeout):
                return "connected"
        except ConnectionRefusedError:
            return "refused"
        except TimeoutError:
            return "timeout"
        except OSError as exc:
            return os.strerror(exc.errno) if exc.errno else str(exc)

    def roundtrip(self, port: int, payload: bytes, host: str = "127.0.0.1", timeout: float = 5.0) -> tuple[str, bytes]:
        """Connect, send payload, half-close, read to EOF: (the target's name, the echoed bytes)."""
        with self.connect(port, host, timeout) as sock:
            sock.sendall(payload)
            sock.shutdown(socket.SHUT_WR)
            return split_reply(read_all(sock))

    def wait_outcome(self, port: int, wanted: str, within: float, host: str = "127.0.0.1") -> float:
        """Seconds until a connection attempt to port has the wanted outcome; AssertionError after `within`."""
        start = time.monotonic()
        seen = ""
        for _ in range(10_000):
            seen = self.outcome(port, host, timeout=min(0.5, within))
            elapsed = time.monotonic() - start
            if seen == wanted:
                return elapsed
            if elapsed >= within:
                break
            time.sleep(0.005)
        raise AssertionError(f"port {port}: still {seen!r} after {within} s, wanted {wanted!r}")

    # --- processes -----------------------------------------------------------------------------------
    def command(self, *argv: str) -> list[str]:
        return ["nsenter", f"--net={self.path}", *argv]

    def listening(self) -> list[tuple[str, int]]:
        """(address, port) of every TCP listener in the namespace, from `ss -ltn`."""
        out = subprocess.run(self.command("ss", "-Hltn"), check=True, capture_output=True, text=True,
                             timeout=30).stdout
        found = []
        for line in out.splitlines():
            local = line.split()[3]  # State Recv-Q Send-Q Local:Port Peer:Port
            host, _, port = local.rpartition(":")
            found.append((host.strip("[]"), int(port)))
        return found


def split_reply(reply: bytes) -> tuple[str, bytes]:
    name, newline, rest = reply.partition(b"\n")
    if not newline:
        return "", reply
    return name.decode(errors="replace"), rest


def read_name(sock: socket.socket) -> str:
    """The greeting line of a named target, read byte by byte so no echo is consumed with it."""
    name = bytearray()
    for _ in range(256):
        byte = sock.recv(1)
        if byte in (b"", b"\n"):
            break
        name += byte
    return name.decode(errors="replace")


def read_exactly(sock: socket.socket, size: int) -> bytes:
    data = bytearray()
    while len(data) < size:
        chunk = sock.recv(size - len(data))
        if not chunk:
            break
        data += chunk
    return bytes(data)


class Process:
    """A process started inside the namespace, stdout and stderr collected line by line in the background."""

    def __init__(self, ns: Namespace, argv: list[str], env: dict[str, str] | None = None) -> None:
        self.lines: list[tuple[float, str]] = []  # (monotonic arrival time, line)
        self._lock = threading.Lock()
        self._arrived = threading.Condition(self._lock)
        self.started = time.monotonic()
        self.proc = subprocess.Popen(ns.command(*argv), cwd=REPO, stdout=subprocess.PIPE, stderr=subprocess.STDOUT,
                                     env={**os.environ, "PYTHONPATH": str(REPO), **(env or {})})
        self._reader = threading.Thread(target=self._read, daemon=True)
        self._reader.start()

    def _read(self) -> None:
        assert self.proc.stdout is not None
        for raw in self.proc.stdout:
            with self._arrived:
                self.lines.append((time.monotonic(), raw.decode(errors="replace").rstrip("\n")))
                self._arrived.notify_all()
        with self._arrived:
            self._arrived.notify_all()

    @property
    def log(self) -> str:
        with self._lock:
            return "\n".join(line for _, line in self.lines)

    def wait_log(self, pattern: str, timeout: float = 15.0, count: int = 1) -> tuple[float, re.Match[str]]:
        """The count-th line matching pattern: (its arrival time, the match). Wakes on every new line."""
        regex = re.compile(pattern)
        deadline = time.monotonic() + timeout
        with self._arrived:
            while True:
                matches = [(t, m) for t, line in self.lines if (m := regex.search(line))]
                if len(matches) >= count:
                    return matches[count - 1]
                left = deadline - time.monotonic()
                if left <= 0:
                    break
                if not self._reader.is_alive():
                    raise AssertionError(
                        f"process exited ({self.proc.poll()}) before {pattern!r}:\n{self.log_unlocked()}")
                self._arrived.wait(min(left, 0.5))
        raise AssertionError(f"timed out after {timeout} s waiting for {pattern!r}:\n{self.log}")

    def log_unlocked(self) -> str:
        return "\n".join(line for _, line in self.lines)

    def matching(self, pattern: str) -> list[str]:
        regex = re.compile(pattern)
        with self._lock:
            return [line for _, line in self.lines if regex.search(line)]

    def wait_exit(self, timeout: float) -> int:
        code = self.proc.wait(timeout)
        self._reader.join(5)
        return code

    def children(self) -> list[psutil.Process]:
        with contextlib.suppress(psutil.Error):
            return psutil.Process(self.proc.pid).children(recursive=True)
        return []

    def stop(self, timeout: float = 15.0) -> int:
        """SIGTERM, then SIGKILL for it and whatever it left running; returns the exit code."""
        leftovers = self.children()
        if self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)
            try:
                self.proc.wait(timeout)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait(10)
        for child in leftovers:
            with contextlib.suppress(psutil.Error):
                child.kill()
        self._reader.join(5)
        return self.proc.returncode


class NamedTargets(Process):
    """This module run as a program: one named echo backend per NAME=HOST:PORT."""

    def __init__(self, ns: Namespace, targets: dict[str, int], host: str = "127.0.0.1") -> None:
        super().__init__(ns, [PYTHON, str(HERE / "netns_client.py"),
                              *(f"{name}={host}:{port}" for name, port in targets.items())])
        self.wait_log(r"^targets: listening", timeout=15)


class Supervisor(Process):
    """`supervisor.py` inside the namespace; by default bpf steering, 2 workers, bound to 127.0.0.1."""

    def __init__(self, ns: Namespace, config: Path, *args: str, wait_ready: bool = True,
                 ready_timeout: float = 20.0) -> None:
        super().__init__(ns, [PYTHON, str(REPO / "supervisor.py"), "-c", str(config), *args])
        if wait_ready:
            self.wait_log(r"ready: config v", timeout=ready_timeout)

    def workers(self) -> list[psutil.Process]:
        with contextlib.suppress(psutil.Error):
            return psutil.Process(self.proc.pid).children()
        return []

    def status(self, count: int) -> str:
        """Ask for the count-th status line (SIGUSR1) and return it."""
        self.proc.send_signal(signal.SIGUSR1)
        return self.wait_log(r"status: .*", timeout=10, count=count)[1].group(0)


def bpf_args(instance: str, pin_root: Path, obj: Path, workers: int = 2, *extra: str) -> list[str]:
    return ["--steering", "bpf", "-w", str(workers), "--instance", instance, "--bpf-pin-root", str(pin_root),
            "--bpf-object", str(obj), "--bind", "127.0.0.1", "--grace", "5", *extra]


def write_config(path: Path, apps: Iterable[tuple[str, Iterable[int], Iterable[str]]]) -> None:
    """Write (name, ports, targets) apps the way operators do: a temp file renamed over the config."""
    import orjson

    document = {"Apps": [{"Name": n, "Ports": list(p), "Targets": list(t)} for n, p, t in apps]}
    tmp = path.with_name(f".{path.name}.{os.getpid()}.{time.monotonic_ns()}.tmp")
    tmp.write_bytes(orjson.dumps(document))
    os.replace(tmp, path)


def stop_all(things: Iterable[Any]) -> None:
    for thing in things:
        with contextlib.suppress(Exception):
            thing.stop()


def dial_until(stop: Callable[[], bool], attempt: Callable[[], bool], limit: int = 100_000,
               seconds: float = 60.0) -> list[tuple[float, bool]]:
    """Repeat attempt() until stop() (bounded in count and time): (monotonic start, succeeded) per attempt."""
    results: list[tuple[float, bool]] = []
    deadline = time.monotonic() + seconds
    while not stop() and len(results) < limit and time.monotonic() < deadline:
        started = time.monotonic()
        results.append((started, attempt()))
    return results


# --- the named target program -----------------------------------------------------------------------------
async def _serve(specs: list[tuple[str, str, int]]) -> None:
    async def handle(name: str, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        try:
            writer.write(name.encode() + b"\n")
            while data := await reader.read(1 << 16):
                writer.write(data)
                await writer.drain()
            writer.write_eof()
            await writer.drain()
        except OSError:
            pass
        finally:
            writer.close()

    servers = [
        await asyncio.start_server(lambda r, w, n=name: handle(n, r, w),  # type: ignore[misc]
                                   host, port, reuse_address=True, backlog=1024)
        for name, host, port in specs
    ]
    print("targets: listening on " + ", ".join(f"{n}={h}:{p}" for n, h, p in specs), flush=True)
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for signum in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(signum, stop.set)
    await stop.wait()
    for server in servers:
        server.close()


def main(argv: list[str]) -> int:
    specs = []
    for spec in argv:
        name, _, address = spec.partition("=")
        host, _, port = address.rpartition(":")
        specs.append((name, host, int(port)))
    asyncio.run(_serve(specs))
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
