"""systemd's side of the descriptor-store protocol, played by a test: a notify socket that keeps the passed
descriptors, a restart that hands them to the next start as LISTEN_FDS, and `systemctl list-jobs`.

    manager = FakeSystemd(tmp_path)
    manager.start([supervisor.py, ...])   # NOTIFY_SOCKET set; LISTEN_FDS from fd 3 when the store holds any
    manager.restart()                     # SIGTERM while a "restart" job runs, wait for the exit, start again
    manager.stop()                        # SIGTERM while a "stop" job runs; the store is flushed, as systemd does

Run as a program (`python fake_systemd.py --exec ARGV...`) it is the exec shim of a start: it moves the
descriptors it was given (FAKE_SYSTEMD_FDS) to 3, 4, ..., sets LISTEN_FDS, LISTEN_FDNAMES and LISTEN_PID to
its own pid, and execs ARGV (so the supervisor is the process LISTEN_PID names, as under systemd).
"""

from __future__ import annotations

import array
import contextlib
import fcntl
import os
import signal
import socket
import subprocess
import sys
import threading
import time
from pathlib import Path

HERE = Path(__file__).resolve()
ROOT = HERE.parent.parent
UNIT = "skiff.service"
MAX_FDS = 253


class FakeSystemd:
    def __init__(self, tmp: Path, prefix: list[str] | None = None) -> None:
        self.tmp = tmp
        self.prefix = prefix or []  # e.g. a namespace entry: ["nsenter", "--net=...", "--"]
        self.notify_path = tmp / "notify.sock"
        self.sock = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
        self.sock.bind(str(self.notify_path))
        self.store: list[tuple[str, int]] = []
        self.messages: list[str] = []
        self.cond = threading.Condition()
        self.closed = False
        self.jobs = tmp / "jobs"
        self.jobs.write_text("")
        bindir = tmp / "bin"
        bindir.mkdir()
        systemctl = bindir / "systemctl"
        # `systemctl list-jobs --no-legend --plain UNIT`: the job the manager runs now, if any.
        systemctl.write_text(f"#!/bin/sh\ncat '{self.jobs}'\n")
        systemctl.chmod(0o755)
        self.path = f"{bindir}:{os.environ.get('PATH', '')}"
        self.proc: subprocess.Popen[bytes] | None = None
        self.lines: list[str] = []
        self.reader = threading.Thread(target=self._receive, daemon=True)
        self.reader.start()

    # --- the notify socket ------------------------------------------------------------------------------
    def _receive(self) -> None:
        size = socket.CMSG_SPACE(MAX_FDS * 4)
        while not self.closed:
            try:
                data, ancillary, _, _ = self.sock.recvmsg(65536, size)
            except OSError:
                return
            fds: list[int] = []
            for level, kind, raw in ancillary:
                if level == socket.SOL_SOCKET and kind == socket.SCM_RIGHTS:
                    got = array.array("i")
                    got.frombytes(raw[: len(raw) - len(raw) % 4])
                    fds += list(got)
            self._handle(data.decode(errors="replace"), fds)

    def _handle(self, text: str, fds: list[int]) -> None:
        fields = dict(line.partition("=")[::2] for line in text.splitlines())
        name = fields.get("FDNAME", "stored")
        with self.cond:
            self.messages.append(text)
            if fields.get("FDSTORE") == "1":
                self.store += [(name, fd) for fd in fds]
                fds = []
            elif fields.get("FDSTOREREMOVE") == "1":
                for stored_name, fd in [e for e in self.store if e[0] == name]:
                    os.close(fd)
                    self.store.remove((stored_name, fd))
            self.cond.notify_all()
        for fd in fds:  # descriptors sent without FDSTORE=1 are dropped, as systemd does
            os.close(fd)

    def wait_message(self, prefix: str, after: int, timeout: float = 30.0) -> int:
        """Index of the first message starting with prefix received at or after index `after`."""
        deadline = time.monotonic() + timeout
        with self.cond:
            while True:
                for i in range(after, len(self.messages)):
                    if self.messages[i].startswith(prefix):
                        return i
                left = deadline - time.monotonic()
                if left <= 0 or (self.proc is not None and self.proc.poll() is not None):
                    raise AssertionError(f"no {prefix!r} from skiff within {timeout} s:\n{self.log}")
                self.cond.wait(min(left, 0.5))

    def names(self) -> list[str]:
        with self.cond:
            return sorted(name for name, _ in self.store)

    # --- the service ------------------------------------------------------------------------------------
    def start(self, argv: list[str]) -> int:
        """Start ARGV with the store's descriptors; returns once it sent READY=1."""
        self.argv = argv
        with self.cond:
            stored = list(self.store)
            mark = len(self.messages)
        env = {**os.environ, "NOTIFY_SOCKET": str(self.notify_path), "PATH": self.path,
               "FAKE_SYSTEMD_FDS": ",".join(str(fd) for _, fd in stored),
               "FAKE_SYSTEMD_NAMES": ":".join(name for name, _ in stored), "SKIFF_UNIT": UNIT}
        self.lines = []
        self.proc = subprocess.Popen([*self.prefix, sys.executable, str(HERE), "--exec", *argv], cwd=ROOT,
                                     stdout=subprocess.PIPE, stderr=subprocess.STDOUT, env=env,
                                     pass_fds=[fd for _, fd in stored])
        threading.Thread(target=self._read_log, args=(self.proc,), daemon=True).start()
        return self.wait_message("READY=1", mark)

    def _read_log(self, proc: subprocess.Popen[bytes]) -> None:
        assert proc.stdout is not None
        for raw in proc.stdout:
            self.lines.append(raw.decode(errors="replace").rstrip("\n"))

    @property
    def log(self) -> str:
        return "\n".join(self.lines)

    def _stop(self, job: str, timeout: float) -> int:
        assert self.proc is not None
        self.jobs.write_text(f"1 {UNIT} {job} running\n")
        try:
            self.proc.send_signal(signal.SIGTERM)
            code = self.proc.wait(timeout)
        finally:
            self.jobs.write_text("")
        return code

    def restart(self, timeout: float = 60.0) -> tuple[int, int]:
        """`systemctl restart`: stop (the store stays), then start with the store. (old exit code, index of
        the new READY=1 message)."""
        code = self._stop("restart", timeout)
        return code, self.start(self.argv)

    def stop(self, timeout: float = 60.0) -> int:
        """`systemctl stop`: SIGTERM, wait, flush the store."""
        if self.proc is None or self.proc.poll() is not None:
            self.flush()
            return self.proc.returncode if self.proc is not None else 0
        code = self._stop("stop", timeout)
        self.flush()
        return code

    def flush(self) -> None:
        with self.cond:
            for _, fd in self.store:
                os.close(fd)
            self.store.clear()

    def close(self) -> None:
        """Teardown: kill what is left (by pid and its children), flush the store, close the socket."""
        if self.proc is not None and self.proc.poll() is None:
            with contextlib.suppress(Exception):
                self.stop(timeout=20)
        if self.proc is not None and self.proc.poll() is None:
            import psutil

            with contextlib.suppress(psutil.Error):
                for child in psutil.Process(self.proc.pid).children(recursive=True):
                    child.kill()
            self.proc.kill()
            self.proc.wait()
        self.flush()
        self.closed = True
        self.sock.close()
        self.reader.join(5)


def exec_shim(argv: list[str]) -> None:
    given = [int(fd) for fd in os.environ.pop("FAKE_SYSTEMD_FDS", "").split(",") if fd]
    names = os.environ.pop("FAKE_SYSTEMD_NAMES", "")
    # Out of the way first, so moving one to 3+i never overwrites another that is still to be moved.
    high = [fcntl.fcntl(fd, fcntl.F_DUPFD_CLOEXEC, 3 + len(given)) for fd in given]
    for fd in given:
        os.close(fd)
    for i, fd in enumerate(high):
        os.dup2(fd, 3 + i, inheritable=True)
        os.close(fd)
    if given:
        os.environ.update(LISTEN_FDS=str(len(given)), LISTEN_FDNAMES=names, LISTEN_PID=str(os.getpid()))
    os.execv(sys.executable, [sys.executable, *argv])


if __name__ == "__main__":
    if sys.argv[1:2] != ["--exec"]:
        sys.exit("usage: fake_systemd.py --exec ARGV...")
    exec_shim(sys.argv[2:])
