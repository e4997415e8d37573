"""Hot reload: new configs apply under load without losing a connection; bad ones change nothing."""

from __future__ import annotations

import os
import signal
import socket
import threading
import time
from pathlib import Path

import psutil
import pytest

from tests.proxy.bad_configs import BAD_CONFIGS
from tests.support import app, can_connect, echo_roundtrip, free_ports, wait_for, write_config


class ClosedLoop:
    """Clients that connect, echo, close, again and again, until stopped; they count what failed."""

    def __init__(self, ports: list[int], threads: int = 4) -> None:
        self.ports = ports
        self.ok = 0
        self.failures: list[str] = []
        self._stop = threading.Event()
        self._lock = threading.Lock()
        self._threads = [threading.Thread(target=self._run, args=(i,), daemon=True) for i in range(threads)]
        for t in self._threads:
            t.start()

    def _run(self, index: int) -> None:
        n = 0
        deadline = time.monotonic() + 120  # bounded, whatever happens to the test
        while not self._stop.is_set() and time.monotonic() < deadline:
            port = self.ports[(index + n) % len(self.ports)]
            payload = f"{index}-{n}".encode() * 10
            try:
                got = echo_roundtrip(port, payload, timeout=5)
                failure = None if got == payload else f"port {port}: echo mismatch ({len(got)} bytes)"
            except OSError as exc:
                failure = f"port {port}: {exc!r}"
            with self._lock:
                if failure:
                    self.failures.append(failure)
                else:
                    self.ok += 1
            n += 1

    def stop(self) -> None:
        self._stop.set()
        for t in self._threads:
            t.join(10)


class Held:
    """A connection opened before a change, used again after it."""

    def __init__(self, port: int) -> None:
        self.sock = socket.create_connection(("127.0.0.1", port), timeout=5)

    def roundtrip(self, payload: bytes) -> bytes:
        self.sock.sendall(payload)
        got = b""
        while len(got) < len(payload):
            chunk = self.sock.recv(65536)
            if not chunk:
                break
            got += chunk
        return got

    def close(self) -> None:
        self.sock.close()


def applied(skiff, version: int) -> None:  # type: ignore[no-untyped-def]
    skiff.wait_log(rf"config v{version} applied by 2/2 workers", timeout=10)


def test_reload_storm_under_load(start_echo, start_skiff, config_path: Path) -> None:  # type: ignore[no-untyped-def]
    """1. A stable app (2 ports) and a churning app. 2. Closed-loop clients on the stable ports, and held
    connections opened before the storm. 3. 60 rewrites by rename, in-place write and SIGHUP, adding and
    removing ports and targets. 4. No client failed; held connections still echo; the last change's added
    port accepts and removed port refuses within 1 s."""
    targets = free_ports(3)
    stable = free_ports(2)
    churn = free_ports(8)
    start_echo(targets)
    t = [f"127.0.0.1:{p}" for p in targets]

    def config(i: int) -> list[dict[str, object]]:
        stable_targets = [t[0], t[1]] if i % 2 else [t[0], t[2]]
        ports = [churn[(i + k) % len(churn)] for k in range(3)]
        return [app("stable", stable, stable_targets), app("churn", ports, [t[i % 3]])]

    write_config(config_path, config(0))
    skiff = start_skiff(None)
    held = [Held(stable[i % 2]) for i in range(6)]
    for h in held:
        assert h.roundtrip(b"before") == b"before"
    clients = ClosedLoop(stable)
    try:
        wait_for(lambda: clients.ok > 20, 10, "clients to get going")
        for i in range(1, 61):
            how = ("rename", "inplace", "sighup")[i % 3]
            write_config(config_path, config(i), how="inplace" if how == "sighup" else how)
            if how == "sighup":
                skiff.signal(signal.SIGHUP)
            time.sleep(0.05)
        final = config(61)
        write_config(config_path, final)
        skiff.signal(signal.SIGHUP)
        changed_at = time.monotonic()
        added = set(final[1]["Ports"]) - set(config(60)[1]["Ports"])  # type: ignore[arg-type]
        removed = set(config(60)[1]["Ports"]) - set(final[1]["Ports"])  # type: ignore[arg-type]
        for port in added:
            wait_for(lambda p=port: can_connect(p), 1.0 - (time.monotonic() - changed_at), f"port {port} to accept")
        for port in removed:
            wait_for(lambda p=port: not can_connect(p), 1.5 - (time.monotonic() - changed_at),
                     f"port {port} to refuse")
        wait_for(lambda: clients.ok > 200, 20, "more client round trips")
    finally:
        clients.stop()
    assert clients.failures == [], clients.failures[:5]
    for h in held:
        assert h.roundtrip(b"after the storm") == b"after the storm"
        h.close()
    versions = [int(m) for m in __import__("re").findall(r"config v(\d+) applied", skiff.log)]
    assert max(versions) >= 20, skiff.log[-3000:]
    # An in-place write can be read half-done (as with any program that reads files others write in place);
    # that reload fails and the write's close brings the next one. Nothing else may fail.
    failed = [line for line in skiff.log.splitlines() if "reload failed" in line]
    assert all("not valid JSON" in line for line in failed), failed
    assert "Traceback" not in skiff.log


def test_malformed_configs_are_rejected_while_traffic_flows(start_echo, start_skiff,  # type: ignore[no-untyped-def]
                                                            config_path: Path) -> None:
    """1. A serving config. 2. Each malformed config in turn: one log line naming its problem; the old
    config keeps serving (an echo after each). 3. The status line says the last reload failed. 4. The next
    valid file is picked up."""
    [target] = free_ports(1)
    port, extra = free_ports(2)
    start_echo([target])
    good = [app("a", [port], [f"127.0.0.1:{target}"])]
    skiff = start_skiff(good)
    for i, (data, expected) in enumerate(BAD_CONFIGS, start=1):
        write_config(config_path, data)
        line = skiff.wait_log(r"reload failed, still serving config v1: .*", count=i).group(0)
        assert expected in line, (expected, line)
        assert echo_roundtrip(port, b"still here") == b"still here"
    skiff.signal(signal.SIGUSR1)
    assert "last reload FAILED" in skiff.wait_log(r"status: .*").group(0)
    write_config(config_path, [app("a", [port, extra], [f"127.0.0.1:{target}"])])
    applied(skiff, 2)
    assert echo_roundtrip(extra, b"new port") == b"new port"
    assert "Traceback" not in skiff.log


def test_every_way_of_changing_the_file(start_echo, start_skiff, tmp_path: Path) -> None:  # type: ignore[no-untyped-def]
    """1. The config path is a symlink into a ..data directory (the Kubernetes ConfigMap layout).
    2. A symlink swap, an in-place write, a rename and SIGHUP each apply a new version; unchanged content
    makes none. 3. A missing file is logged, not fatal; putting it back reloads."""
    [target] = free_ports(1)
    ports = free_ports(5)
    start_echo([target])
    t = f"127.0.0.1:{target}"
    root = tmp_path / "configmap"
    root.mkdir()

    def publish(n: int, apps: list[dict[str, object]]) -> None:
        version_dir = root / f"..v{n}"
        version_dir.mkdir()
        write_config(version_dir / "config.json", apps)
        tmp_link = root / "..data_tmp"
        tmp_link.symlink_to(version_dir.name)
        os.replace(tmp_link, root / "..data")

    publish(1, [app("a", ports[:1], [t])])
    path = root / "config.json"
    path.symlink_to("..data/config.json")
    from tests.support import Skiff

    skiff = Skiff(path)
    try:
        publish(2, [app("a", ports[:2], [t])])
        applied(skiff, 2)
        assert echo_roundtrip(ports[1]) == b"ping"
        real = (root / "..data").resolve() / "config.json"
        write_config(real, [app("a", ports[:3], [t])], how="inplace")
        applied(skiff, 3)
        write_config(real, [app("a", ports[:4], [t])], how="rename")
        applied(skiff, 4)
        write_config(real, [app("a", ports[:4], [t])], how="inplace")  # same content
        skiff.signal(signal.SIGHUP)
        skiff.wait_log(r"SIGHUP: config unchanged, still v4")
        write_config(real, [app("a", ports[:5], [t])], how="inplace")
        skiff.signal(signal.SIGHUP)
        applied(skiff, 5)
        os.unlink(path)
        skiff.wait_log(r"reload failed, still serving config v5: cannot read .*No such file")
        assert echo_roundtrip(ports[4]) == b"ping"
        path.symlink_to("..data/config.json")
        write_config(real, [app("a", ports[:1], [t])])
        applied(skiff, 6)
        wait_for(lambda: not can_connect(ports[4]), 1.0, "removed port to refuse")
    finally:
        skiff.stop()


def target_connections(echo_pid: int) -> int:
    return sum(1 for c in psutil.Process(echo_pid).net_connections("tcp") if c.status == psutil.CONN_ESTABLISHED)


def test_existing_connection_keeps_a_removed_target(start_echo, start_skiff,  # type: ignore[no-untyped-def]
                                                    config_path: Path) -> None:
    """1. A connection through skiff to target A. 2. Reload: the app's only target is now B. 3. The old
    connection still works (it keeps A until it ends); new connections go to B."""
    a, b = free_ports(2)
    [port] = free_ports(1)
    echo_a = start_echo([a])
    echo_b = start_echo([b])
    skiff = start_skiff([app("x", [port], [f"127.0.0.1:{a}"])])
    held = Held(port)
    assert held.roundtrip(b"one") == b"one"
    write_config(config_path, [app("x", [port], [f"127.0.0.1:{b}"])])
    applied(skiff, 2)
    assert held.roundtrip(b"two") == b"two"
    assert target_connections(echo_a.proc.pid) == 1
    fresh = Held(port)
    assert fresh.roundtrip(b"three") == b"three"
    assert target_connections(echo_b.proc.pid) == 1
    held.close()
    fresh.close()


def test_respawned_worker_starts_on_the_current_version(start_echo, start_skiff,  # type: ignore[no-untyped-def]
                                                        config_path: Path) -> None:
    """1. Reload to v2 with a new port. 2. SIGKILL worker 0. 3. Its replacement is titled v2 and serves
    the new port."""
    [target] = free_ports(1)
    first, second = free_ports(2)
    start_echo([target])
    skiff = start_skiff([app("x", [first], [f"127.0.0.1:{target}"])])
    write_config(config_path, [app("x", [first, second], [f"127.0.0.1:{target}"])])
    applied(skiff, 2)
    old = skiff.worker_pid(0)
    os.kill(old, signal.SIGKILL)
    skiff.wait_log(rf"worker 0 \(pid {old}\) was killed by SIGKILL; respawning")
    wait_for(lambda: skiff.worker_pid(0) != old, 5, "worker 0 to respawn")
    new = psutil.Process(skiff.worker_pid(0))
    wait_for(lambda: "config v2" in " ".join(new.cmdline()), 5, "the new worker's title")
    for _ in range(20):
        assert echo_roundtrip(second, b"v2") == b"v2"


def test_reload_with_a_port_taken_keeps_the_old_config(start_echo, start_skiff,  # type: ignore[no-untyped-def]
                                                       config_path: Path) -> None:
    """1. Another process listens on a port (without SO_REUSEPORT). 2. A reload adds it: one line naming
    the port, nothing changes. 3. Freed, the same file applies on SIGHUP."""
    [target] = free_ports(1)
    port, taken = free_ports(2)
    start_echo([target])
    skiff = start_skiff([app("x", [port], [f"127.0.0.1:{target}"])])
    blocker = socket.socket()
    blocker.bind(("127.0.0.1", taken))
    blocker.listen()
    try:
        write_config(config_path, [app("x", [port, taken], [f"127.0.0.1:{target}"])])
        line = skiff.wait_log(r"reload failed, still serving config v1: .*").group(0)
        assert f"cannot listen on 127.0.0.1:{taken}" in line
        assert echo_roundtrip(port) == b"ping"
    finally:
        blocker.close()
    skiff.signal(signal.SIGHUP)
    applied(skiff, 2)
    assert echo_roundtrip(taken) == b"ping"


@pytest.mark.parametrize("workers", [2])
def test_removed_port_serves_what_was_queued(start_echo, start_skiff, config_path: Path,  # type: ignore[no-untyped-def]
                                             workers: int) -> None:
    """1. Workers stopped (SIGSTOP), 20 clients connect to a port and send: the kernel queues them.
    2. A reload removes that port; the workers resume. 3. Every queued client gets its echo (accepted
    and served, not reset); new connections to the port are refused."""
    [target] = free_ports(1)
    keep, drop = free_ports(2)
    start_echo([target])
    t = f"127.0.0.1:{target}"
    skiff = start_skiff([app("x", [keep, drop], [t])], workers=workers)
    pids = [w.pid for w in skiff.workers()]
    clients = []
    for pid in pids:
        os.kill(pid, signal.SIGSTOP)
    try:
        for i in range(20):
            sock = socket.create_connection(("127.0.0.1", drop), timeout=5)
            sock.sendall(f"queued {i}".encode())
            sock.shutdown(socket.SHUT_WR)
            clients.append(sock)
        write_config(config_path, [app("x", [keep], [t])])
        skiff.signal(signal.SIGHUP)
        time.sleep(0.3)  # let the supervisor send the snapshot while workers are stopped
    finally:
        for pid in pids:
            os.kill(pid, signal.SIGCONT)
    applied(skiff, 2)
    from tests.support import read_all

    for i, sock in enumerate(clients):
        assert read_all(sock) == f"queued {i}".encode()
        sock.close()
    wait_for(lambda: not can_connect(drop), 1.0, "the removed port to refuse")
