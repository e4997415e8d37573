"""A real 3-member etcd cluster on loopback ports, its data on tmpfs, for the clustered-config tests and bench.

`EtcdCluster` starts Debian's `etcd` binary three times; members can be killed (SIGKILL) and started again on
the same data; `destroy()` kills whatever still runs and removes the data directories, even after a failure.
"""

from __future__ import annotations

import contextlib
import shutil
import signal
import subprocess
import tempfile
import time
from pathlib import Path

from control.sources.etcdapi import Cluster, EtcdError
from tests.support import free_ports

TMPFS = Path("/dev/shm")


class EtcdCluster:
    def __init__(self, members: int = 3, client_ports: list[int] | None = None) -> None:
        """`client_ports`: reuse another cluster's, to replace it with a new cluster (a new cluster ID)."""
        if shutil.which("etcd") is None:
            raise RuntimeError("etcd is not installed (scripts/install-system-deps.sh installs etcd-server)")
        ports = free_ports(2 * members)
        self.client_ports = client_ports or ports[:members]
        self.peer_ports = ports[members:]
        self.names = [f"m{i}" for i in range(members)]
        self.root = Path(tempfile.mkdtemp(prefix="skiff-etcd-", dir=TMPFS if TMPFS.is_dir() else None))
        self.procs: list[subprocess.Popen[bytes] | None] = [None] * members
        self.initial = ",".join(f"{n}=http://127.0.0.1:{p}" for n, p in zip(self.names, self.peer_ports, strict=True))
        self.endpoints = tuple(("127.0.0.1", p) for p in self.client_ports)
        self.client = Cluster(self.endpoints)

    def url(self, prefix: str, members: list[int] | None = None) -> str:
        hosts = ",".join(f"127.0.0.1:{self.client_ports[i]}" for i in (members or range(len(self.names))))
        return f"etcd://{hosts}/{prefix.strip('/')}"

    def start(self, i: int | None = None) -> None:
        for j in ([i] if i is not None else range(len(self.names))):
            if self.procs[j] is not None and self.procs[j].poll() is None:  # type: ignore[union-attr]
                continue
            log = open(self.root / f"{self.names[j]}.log", "ab")  # noqa: SIM115 (the child keeps it)
            self.procs[j] = subprocess.Popen(
                ["etcd", "--name", self.names[j], "--data-dir", str(self.root / self.names[j]),
                 "--listen-client-urls", f"http://127.0.0.1:{self.client_ports[j]}",
                 "--advertise-client-urls", f"http://127.0.0.1:{self.client_ports[j]}",
                 "--listen-peer-urls", f"http://127.0.0.1:{self.peer_ports[j]}",
                 "--initial-advertise-peer-urls", f"http://127.0.0.1:{self.peer_ports[j]}",
                 "--initial-cluster", self.initial, "--initial-cluster-state", "new",
                 "--initial-cluster-token", self.root.name, "--heartbeat-interval", "50",
                 "--election-timeout", "500", "--log-level", "warn"],
                stdout=log, stderr=subprocess.STDOUT)
            log.close()

    def wait_healthy(self, timeout: float = 30.0) -> None:
        """Every running member answers and the cluster commits a write (a leader exists)."""
        deadline = time.monotonic() + timeout
        last = ""
        while time.monotonic() < deadline:
            try:
                self.client.call("put", "/skiff-test/health", b"ok")
                return
            except EtcdError as exc:
                last = str(exc)
            time.sleep(0.1)
        raise AssertionError(f"etcd did not become healthy within {timeout} s: {last}\n{self.logs()}")

    def wait_member(self, i: int, revision: int, timeout: float = 30.0) -> None:
        """Member i answers (itself, not through another member) at `revision` or later."""
        endpoint = self.client.endpoints[i]
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            try:
                if endpoint.list_prefix("/skiff-test/").revision >= revision:
                    return
            except EtcdError:
                pass
            time.sleep(0.1)
        raise AssertionError(f"etcd member {i} did not catch up with revision {revision}\n{self.logs()}")

    def kill(self, i: int | None = None) -> None:
        for j in ([i] if i is not None else range(len(self.names))):
            proc = self.procs[j]
            if proc is not None and proc.poll() is None:
                proc.send_signal(signal.SIGKILL)
                proc.wait(10)

    def logs(self) -> str:
        return "\n".join(p.read_text(errors="replace")[-2000:] for p in sorted(self.root.glob("*.log")))

    def destroy(self) -> None:
        self.kill()
        with contextlib.suppress(OSError):
            shutil.rmtree(self.root)
