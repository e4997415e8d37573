"""The real supervisor in BPF steering mode, end to end: each test gets a fresh network namespace, a private
bpffs pin root, `supervisor.py --steering bpf -w 2` under `nsenter --net`, and named targets (backends that
greet with their name, then echo) in the same namespace. Clients are plain sockets created in the namespace.
"""

from __future__ import annotations

import re
import signal
import socket
import subprocess
import threading
import time
import uuid
from collections.abc import Callable, Iterator
from pathlib import Path

import psutil
import pytest
from netns_client import (
    PYTHON,
    REPO,
    NamedTargets,
    Namespace,
    Process,
    Supervisor,
    bpf_args,
    read_all,
    read_exactly,
    read_name,
    split_reply,
    stop_all,
    write_config,
)
from skiff_bpf_harness import Netns

# Targets sit below the ephemeral range, so the kernel-chosen steering port can never take one of them.
TARGETS = {"alpha-1": 21001, "alpha-2": 21002, "bravo": 21003, "charlie": 21004}
APPS = [
    ("alpha", [7001, 1234], ["127.0.0.1:21001", "127.0.0.1:21002"]),
    ("bravo", [9999], ["127.0.0.1:21003"]),
    ("charlie", [40000], ["127.0.0.1:21004"]),
]
APP_OF_PORT = {port: name for name, ports, _ in APPS for port in ports}
DIAL_INTERVAL = 0.01  # seconds between a steady client's attempts
STEERING_PORT = re.compile(r"BPF sk_lookup steering onto (\d+) listeners on port (\d+)")
STATUS_BPF = re.compile(r"bpf lookups (\d+) steered (\d+) dropped_no_socket (\d+) errors (\d+)")


class Scene:
    """What one test runs in its namespace; everything started here is stopped at teardown."""

    def __init__(self, netns: Netns, pin_root: Path, obj: Path, tmp_path: Path) -> None:
        self.ns = Namespace(netns.name)
        self.pin_root = pin_root
        self.obj = obj
        self.config = tmp_path / "skiff.json"
        self.instance = f"t-{uuid.uuid4().hex[:10]}"
        self.started: list[Process] = []

    def stop_cleanly(self, process: Supervisor) -> None:
        """SIGTERM: exit 0 expected, without a traceback."""
        code = process.stop()
        assert code == 0, process.log
        assert "Traceback" not in process.log, process.log

    @property
    def pin_dir(self) -> Path:
        return self.pin_root / "skiff" / self.instance

    def targets(self, targets: dict[str, int] = TARGETS) -> NamedTargets:
        process = NamedTargets(self.ns, targets)
        self.started.append(process)
        return process

    def supervisor(self, *extra: str, workers: int = 2, args: list[str] | None = None,
                   wait_ready: bool = True) -> Supervisor:
        argv = args if args is not None else bpf_args(self.instance, self.pin_root, self.obj, workers, *extra)
        process = Supervisor(self.ns, self.config, *argv, wait_ready=wait_ready)
        self.started.append(process)
        return process


@pytest.fixture
def scene(netns: Netns, pin_root: Path, bpf_object: Path, tmp_path: Path) -> Iterator[Scene]:
    made = Scene(netns, pin_root, bpf_object, tmp_path)
    try:
        yield made
    finally:
        stop_all(reversed(made.started))  # before the namespace and the pin root go


def served(scene: Scene, port: int, payload: bytes) -> str:
    """One round trip through the proxy: the payload must come back whole; returns the target's name."""
    name, echoed = scene.ns.roundtrip(port, payload)
    assert echoed == payload, f"port {port}: sent {len(payload)} bytes, got {len(echoed)} back from {name!r}"
    return name


def test_configured_ports_reach_their_apps_through_two_listeners(scene: Scene) -> None:
    """Arbitrary ports, one steering listener per worker.

    1. Start four named targets and the supervisor: alpha on 7001 and 1234, bravo on 9999, charlie on 40000.
    2. Eight round trips per port: each payload comes back whole, from a target of that port's app.
    3. Both of alpha's targets served some of its connections.
    4. `ss -ltn` in the namespace lists the targets and exactly two more listeners, both on the steering port
       the start line names; nothing listens on a configured port.
    """
    scene.targets()
    write_config(scene.config, APPS)
    proxy = scene.supervisor()

    names: dict[int, list[str]] = {}
    for port, app in APP_OF_PORT.items():
        names[port] = [served(scene, port, f"{port}-{i}-".encode() * 100) for i in range(8)]
        assert all(n.startswith(app + "-") or n == app for n in names[port]), (port, names[port])

    alpha = names[7001] + names[1234]
    assert {"alpha-1", "alpha-2"} <= set(alpha), alpha

    _, match = proxy.wait_log(STEERING_PORT.pattern)
    assert match.group(1) == "2"
    steering_port = int(match.group(2))
    skiff = sorted(entry for entry in scene.ns.listening() if entry[1] not in TARGETS.values())
    assert skiff == [("127.0.0.1", steering_port)] * 2, skiff
    assert not set(APP_OF_PORT) & {port for _, port in skiff}


def test_unconfigured_port_is_refused(scene: Scene) -> None:
    """A port that is not in the config is not ours: the kernel refuses it as if skiff were not there.

    1. Start the targets and the supervisor with the four configured ports.
    2. 7002, 1235 and 9998 (neighbours of configured ports) are refused; 7001 still serves.
    3. IPv6 ::1 on a configured port is not ours either with --bind 127.0.0.1: refused, not dropped.
    """
    scene.targets()
    write_config(scene.config, APPS)
    scene.supervisor()

    for port in (7002, 1235, 9998):
        assert scene.ns.outcome(port) == "refused", port
    assert served(scene, 7001, b"still here").startswith("alpha-")
    assert scene.ns.outcome(7001, host="::1") == "refused"


def test_reload_adds_and_removes_ports(scene: Scene) -> None:
    """A config rewrite moves the port map: added ports accept, a removed port is refused, both within 1 s,
    and connections made before the reload keep working.

    1. Start with alpha on 7001 and 1234, bravo on 9999.
    2. Open a connection on 7001 (stays configured) and one on 1234 (to be removed); one exchange on each.
    3. Replace the config file: alpha on 7001 and 8080, bravo on 9999 and 40000.
    4. Within 1 s of the replace, 8080 and 40000 connect and 1234 is refused (polled from the replace on).
    5. The added ports reach their apps; the log says the new config was applied by 2/2 workers.
    6. Both connections opened in step 2 still relay a second exchange and close cleanly.
    """
    scene.targets()
    write_config(scene.config, [("alpha", [7001, 1234], APPS[0][2]), ("bravo", [9999], APPS[1][2])])
    proxy = scene.supervisor()
    assert scene.ns.outcome(8080) == "refused"

    kept: dict[int, socket.socket] = {}
    for port in (7001, 1234):
        sock = scene.ns.connect(port, timeout=5)
        assert read_name(sock).startswith("alpha-")
        sock.sendall(b"before")
        assert read_exactly(sock, 6) == b"before"
        kept[port] = sock

    try:
        write_config(scene.config, [("alpha", [7001, 8080], APPS[0][2]), ("bravo", [9999, 40000], APPS[1][2])])
        replaced = time.monotonic()
        wanted = {8080: "connected", 40000: "connected", 1234: "refused"}
        reached: dict[int, float] = {}
        for _ in range(2000):
            for port, outcome in wanted.items():
                if port not in reached and scene.ns.outcome(port, timeout=0.5) == outcome:
                    reached[port] = time.monotonic() - replaced
            if len(reached) == len(wanted) or time.monotonic() - replaced > 3:
                break
            time.sleep(0.005)
        assert set(reached) == set(wanted), f"not reached within 3 s: {set(wanted) - set(reached)}; {reached}"
        assert max(reached.values()) <= 1.0, reached

        assert served(scene, 8080, b"new port").startswith("alpha-")
        assert served(scene, 40000, b"new port too") == "bravo"
        proxy.wait_log(r"config v2 applied by 2/2 workers in \d+ ms", timeout=5)

        for port, sock in kept.items():
            sock.sendall(b"after")
            sock.shutdown(socket.SHUT_WR)
            assert read_all(sock) == b"after", port
    finally:
        for sock in kept.values():
            sock.close()


def test_killed_workers_lose_no_queued_connection(scene: Scene) -> None:
    """Connections queued on the group listeners survive the workers: the supervisor holds the listeners.

    1. Start the supervisor with two workers; SIGSTOP both, so nothing accepts.
    2. Open 30 connections across the four configured ports and send each a distinct payload, half-closed:
       the kernel completes the handshakes and queues them on the group's listeners.
    3. SIGKILL both workers; the supervisor respawns them.
    4. Every one of the 30 connections gets its target's greeting and its whole payload back.
    """
    scene.targets()
    write_config(scene.config, APPS)
    proxy = scene.supervisor()
    workers = proxy.workers()
    assert len(workers) == 2
    for worker in workers:
        worker.send_signal(signal.SIGSTOP)

    ports = list(APP_OF_PORT)
    clients = []
    try:
        for i in range(30):
            port = ports[i % len(ports)]
            sock = scene.ns.connect(port, timeout=15)
            payload = f"queued-{i}-".encode() * 50
            sock.sendall(payload)
            sock.shutdown(socket.SHUT_WR)
            clients.append((port, payload, sock))
        for worker in workers:
            worker.send_signal(signal.SIGKILL)
        psutil.wait_procs(workers, timeout=10)
        proxy.wait_log(r"was killed by SIGKILL; respawning", count=2, timeout=10)

        failures = []
        for port, payload, sock in clients:
            name, echoed = split_reply(read_all(sock))
            if echoed != payload or not name.startswith(APP_OF_PORT[port]):
                failures.append((port, name, len(echoed), len(payload)))
        assert not failures, f"{len(failures)}/30 queued connections were not served: {failures[:5]}"
    finally:
        for _, _, sock in clients:
            sock.close()
        for worker in workers:
            if worker.is_running():
                worker.kill()


def test_auto_falls_back_and_bpf_refuses_without_a_usable_object(scene: Scene) -> None:
    """Without a usable BPF object, `auto` says so once and serves with reuseport; `bpf` stops with one line.

    1. Start `--steering auto --bpf-object /nonexistent.o -w 2`: exactly one fallback line, a reuseport start
       line, and 7001 serves.
    2. `ss -ltn` shows two listeners on every configured port (one per worker), none elsewhere for skiff.
    3. Stop it: exit 0. No instance directory was created under the pin root.
    4. `--steering bpf` with the same object exits 1, printing one line and no traceback.
    """
    scene.targets()
    write_config(scene.config, APPS)
    common = ["-w", "2", "--instance", scene.instance, "--bpf-pin-root", str(scene.pin_root),
              "--bpf-object", "/nonexistent.o", "--bind", "127.0.0.1", "--grace", "5"]
    auto = scene.supervisor(args=["--steering", "auto", *common])
    fallback = auto.matching(r"--steering auto: BPF steering unavailable \(")
    assert len(fallback) == 1, auto.log
    assert auto.matching(r"one socket per port per worker \(reuseport\)"), auto.log
    assert served(scene, 7001, b"fallback").startswith("alpha-")
    skiff = sorted(entry for entry in scene.ns.listening() if entry[1] not in TARGETS.values())
    assert skiff == sorted([("127.0.0.1", port) for port in APP_OF_PORT] * 2), skiff
    scene.stop_cleanly(auto)
    assert not scene.pin_dir.exists()

    done = subprocess.run(scene.ns.command(PYTHON, str(REPO / "supervisor.py"), "-c", str(scene.config),
                                           "--steering", "bpf", *common),
                          cwd=REPO, capture_output=True, text=True, timeout=60)
    output = (done.stdout + done.stderr).strip()
    assert done.returncode == 1, output
    assert len(output.splitlines()) == 1 and "Traceback" not in output, output
    assert "--steering bpf cannot work here" in output and "/nonexistent.o" in output, output


def test_pins_go_on_clean_exit_and_a_successor_takes_them_over(
    scene: Scene, record_property: Callable[[str, object], None]
) -> None:
    """Pins follow the supervisor's life: removed on SIGTERM, kept on SIGKILL and taken over by a successor.

    1. Start a supervisor; its instance directory holds the link, the program and the maps. SIGTERM: exit 0,
       and the instance directory is gone.
    2. Start another supervisor with the same instance; a client dials 7001 in a loop (0.5 s per attempt,
       full round trip or it counts as failed).
    3. SIGKILL the supervisor; its workers see the channel close and leave. The pins stay.
    4. Start a successor with the same instance and pin root: it becomes ready, and the dialer's attempts
       succeed again. The number of failed attempts in the gap is recorded (the old sockets died with the old
       processes, so it is not asserted to be zero).
    5. The successor serves every configured port; on SIGTERM it exits 0 and removes the pins.
    """
    scene.targets()
    write_config(scene.config, APPS)
    first = scene.supervisor()
    assert {"link", "steer", "ports", "sockets"} <= {p.name for p in scene.pin_dir.iterdir()}
    scene.stop_cleanly(first)
    assert not scene.pin_dir.exists(), list(scene.pin_dir.iterdir())

    doomed = scene.supervisor()
    workers = doomed.workers()
    outcomes: list[tuple[float, str]] = []  # (monotonic start, outcome) per attempt
    stop = threading.Event()

    def attempt() -> str:
        try:
            name, echoed = scene.ns.roundtrip(7001, b"gap", timeout=0.5)
        except ConnectionRefusedError:
            return "refused"
        except ConnectionResetError:
            return "reset"
        except TimeoutError:
            return "timeout"
        except OSError as exc:
            return f"error {exc.errno}"
        return "ok" if echoed == b"gap" and name.startswith("alpha-") else "short"

    def dial() -> None:
        # One attempt every DIAL_INTERVAL (a steady client, not a flood): the failure count then measures the gap.
        deadline = time.monotonic() + 60
        while not stop.is_set() and time.monotonic() < deadline and len(outcomes) < 20000:
            started = time.monotonic()
            outcomes.append((started, attempt()))
            stop.wait(max(0.0, started + DIAL_INTERVAL - time.monotonic()))

    dialer = threading.Thread(target=dial, daemon=True)
    dialer.start()
    try:
        for _ in range(200):  # a baseline of successful attempts before the kill
            if sum(o == "ok" for _, o in outcomes) >= 10:
                break
            time.sleep(0.01)
        doomed.proc.send_signal(signal.SIGKILL)
        killed_at = time.monotonic()
        doomed.wait_exit(10)
        _, alive = psutil.wait_procs(workers, timeout=10)
        assert not alive, f"old workers still running: {alive}"
        assert (scene.pin_dir / "link").exists(), "SIGKILL must leave the pins"
        steered_before = sum(o == "ok" for t, o in outcomes if t < killed_at)

        successor = scene.supervisor()
        ready_at = time.monotonic()
        for _ in range(400):
            if sum(o == "ok" for t, o in outcomes if t >= ready_at) >= 10:
                break
            time.sleep(0.01)
    finally:
        stop.set()
        dialer.join(10)

    assert steered_before >= 10, "the dialer never succeeded before the kill"
    after_kill = [(t, o) for t, o in outcomes if t >= killed_at]
    # A dial in the first milliseconds after the SIGKILL may still be served by the dying workers (they finish
    # what they accepted): the gap starts at the first failure and ends at the first success after it.
    first_fail = next((t for t, o in after_kill if o != "ok"), killed_at)
    first_ok = next((t for t, o in after_kill if o == "ok" and t >= first_fail), None)
    assert first_ok is not None, f"no successful attempt after the takeover ({len(after_kill)} attempts)"
    failed = [o for t, o in after_kill if first_fail <= t < first_ok]
    kinds = {kind: failed.count(kind) for kind in sorted(set(failed))}
    record_property("takeover_failed_attempts", len(failed))
    record_property("takeover_gap_seconds", round(first_ok - killed_at, 3))
    print(f"\ntakeover gap: {len(failed)} failed attempts {kinds} at one per {DIAL_INTERVAL * 1000:.0f} ms, "
          f"{first_ok - killed_at:.3f} s from SIGKILL to the first success "
          f"(successor started after {ready_at - killed_at:.3f} s)")
    assert all(o == "ok" for t, o in after_kill if t >= max(first_ok, ready_at) + 0.1), after_kill

    # The successor took the pinned maps over rather than making new ones: the counters kept counting.
    match = STATUS_BPF.search(successor.status(1))
    assert match and int(match.group(2)) >= steered_before, (match and match.group(0), steered_before)

    for port, app in APP_OF_PORT.items():
        assert served(scene, port, b"successor").startswith(app), port
    scene.stop_cleanly(successor)
    assert not scene.pin_dir.exists()


def test_status_line_counts_steered_connections(scene: Scene) -> None:
    """The SIGUSR1 status line reports the program's counters.

    1. Start the supervisor (a fresh instance: its counters start at zero).
    2. 25 round trips across the configured ports, and 5 attempts on an unconfigured port (refused).
    3. SIGUSR1: the status line shows steered >= 25, lookups >= steered, no drops and no errors.
    """
    scene.targets()
    write_config(scene.config, APPS)
    proxy = scene.supervisor()
    ports = list(APP_OF_PORT)
    for i in range(25):
        served(scene, ports[i % len(ports)], b"count me")
    for _ in range(5):
        assert scene.ns.outcome(7002) == "refused"

    line = proxy.status(1)
    match = STATUS_BPF.search(line)
    assert match, line
    lookups, steered, dropped, errors = map(int, match.groups())
    assert steered >= 25, line
    assert lookups >= steered, line
    assert (dropped, errors) == (0, 0), line


def test_clean_stop_exits_0_every_time(scene: Scene) -> None:
    """SIGTERM with many workers exits 0, every time (workers that exit together used to crash the supervisor).

    1. Eight times: start a supervisor with 8 workers (more workers exiting together make the race likely),
       SIGTERM it.
    2. Every run exits 0 without a traceback, and removes its pins.
    """
    scene.targets()
    write_config(scene.config, APPS)
    codes = []
    for _ in range(8):
        proxy = scene.supervisor(workers=8)
        codes.append(proxy.stop())
        assert "Traceback" not in proxy.log, proxy.log
        assert not scene.pin_dir.exists()
    assert codes == [0] * 8, codes


def test_takeover_restarts_without_a_gap(scene: Scene) -> None:
    """A restart with --takeover refuses no connection.

    1. A supervisor serves; a client dials 7001 every DIAL_INTERVAL (a full round trip or it counts as failed).
    2. A successor starts with `--takeover PID`: the predecessor keeps everything while the successor boots its
       workers; once they are ready the successor commits (its program, socket and ports in the pinned maps),
       the predecessor releases the lock, and the SIGTERMed predecessor drains and exits 0 without unpinning.
    3. Not one attempt failed from start to end; the successor owns the pins and removes them on SIGTERM.
    """
    scene.targets()
    write_config(scene.config, APPS)
    first = scene.supervisor()
    outcomes: list[str] = []
    stop = threading.Event()

    def dial() -> None:
        deadline = time.monotonic() + 60
        while not stop.is_set() and time.monotonic() < deadline and len(outcomes) < 20000:
            started = time.monotonic()
            try:
                name, echoed = scene.ns.roundtrip(7001, b"handover", timeout=2)
                outcomes.append("ok" if echoed == b"handover" and name.startswith("alpha-") else "short")
            except OSError as exc:
                outcomes.append(type(exc).__name__)
            stop.wait(max(0.0, started + DIAL_INTERVAL - time.monotonic()))

    dialer = threading.Thread(target=dial, daemon=True)
    dialer.start()
    try:
        for _ in range(200):
            if outcomes.count("ok") >= 10:
                break
            time.sleep(0.01)
        successor = scene.supervisor("--takeover", str(first.proc.pid))
        assert first.wait_exit(15) == 0, first.log
        before = len(outcomes)
        for _ in range(300):
            if len(outcomes) >= before + 20:
                break
            time.sleep(0.01)
    finally:
        stop.set()
        dialer.join(10)
    failed = [o for o in outcomes if o != "ok"]
    print(f"\ntakeover: {len(outcomes)} attempts, {len(failed)} failed")
    assert len(outcomes) >= 40 and not failed, (len(outcomes), failed[:10])
    assert "committed; released BPF steering (pins kept)" in first.log, first.log
    assert (scene.pin_dir / "link").exists()
    scene.stop_cleanly(successor)
    assert not scene.pin_dir.exists()


def test_dual_stack_bind_steers_ipv4_and_ipv6(scene: Scene) -> None:
    """1. `--bind ::` in bpf mode: one dual-stack listener per worker. 2. A configured port answers on
    127.0.0.1 and on ::1, by the right app. 3. `--bind ::1` (a single IPv6 address the filter cannot match)
    exits 4 (BPF steering failed) with one line."""
    scene.targets()
    write_config(scene.config, APPS)
    scene.supervisor("--bind", "::")
    for host in ("127.0.0.1", "::1"):
        name, echoed = scene.ns.roundtrip(9999, b"both", host=host)
        assert (name.split("-")[0], echoed) == ("bravo", b"both"), (host, name, echoed)
    refused = scene.supervisor("--bind", "::1", wait_ready=False)
    assert refused.wait_exit(15) == 4
    assert "the steering filter matches one IPv4 address or any address" in refused.log, refused.log


def _ipv6_listener_gets(port: int, count: int) -> int:
    """In the namespace: another program's IPv6 listener on [::1]:port; how many of count dials it accepts."""
    other = socket.socket(socket.AF_INET6, socket.SOCK_STREAM)
    other.setsockopt(socket.IPPROTO_IPV6, socket.IPV6_V6ONLY, 1)
    other.bind(("::1", port))
    other.listen(16)
    other.settimeout(2)
    got = 0
    try:
        for _ in range(count):
            try:
                with socket.create_connection(("::1", port), timeout=2):
                    conn, _ = other.accept()
                    conn.close()
                    got += 1
            except OSError:
                pass
    finally:
        other.close()
    return got


def test_ipv4_bind_leaves_ipv6_on_its_ports_to_others(scene: Scene, netns: Netns) -> None:
    """1. The default `--bind 0.0.0.0` in bpf mode: IPv4 group listeners. 2. Another program listens on
    [::1]:9999 (a configured port): it gets all 5 of 5 IPv6 connections (the program passes what its socket
    cannot take). 3. IPv4 to 9999 still reaches skiff's app."""
    scene.targets()
    write_config(scene.config, APPS)
    scene.supervisor("--bind", "0.0.0.0")
    assert netns.run(_ipv6_listener_gets, 9999, 5) == 5
    name, echoed = scene.ns.roundtrip(9999, b"v4")
    assert (name.split("-")[0], echoed) == ("bravo", b"v4")


def test_another_instance_on_steered_ports_refuses(scene: Scene) -> None:
    """A second instance whose config shares a port with a running instance's pinned port map refuses.

    1. Start instance A (bpf) serving APPS. 2. Start instance B (bpf, same pin root) on 9999 only: it exits 3
       with one line naming A's instance and port 9999; A still serves 9999. 3. B in reuseport mode refuses
       the same way (A's program would steal its connections). 4. Seen from another network namespace (this
       test's), A's pins steer nothing there: no conflict.
    """
    from control.exclusive import pinned_conflict
    scene.targets()
    write_config(scene.config, APPS)
    first = scene.supervisor()
    other = scene.config.with_name("other.json")
    write_config(other, [("other", [9999], ["127.0.0.1:21003"])])
    for steering in ("bpf", "reuseport"):
        argv = bpf_args(f"{scene.instance}-b", scene.pin_root, scene.obj, 1)
        argv[1] = steering
        done = subprocess.run(scene.ns.command(PYTHON, str(REPO / "supervisor.py"), "-c", str(other), *argv),
                              cwd=REPO, capture_output=True, text=True, timeout=60)
        output = (done.stdout + done.stderr).strip()
        assert done.returncode == 3, output
        assert len(output.splitlines()) == 1 and "Traceback" not in output, output
        assert f"ports 9999 are already steered by skiff instance '{scene.instance}'" in output, output
    assert served(scene, 9999, b"still ours") == "bravo"
    assert pinned_conflict(scene.pin_root, f"{scene.instance}-b", [9999]) is None
    scene.stop_cleanly(first)


def test_systemd_restart_keeps_pins_and_sockets_and_a_stop_removes_them(scene: Scene, tmp_path: Path) -> None:
    """`systemctl restart` in bpf mode, systemd played by tests/fake_systemd.py.

    1. Start under the fake systemd with --fd-store: the two group listeners are stored (group-0, group-1).
    2. A client dials 7001 every 10 ms (full round trip, 15 s timeout) in the namespace.
    3. Restart (SIGTERM while a "restart" job runs): the old supervisor exits 0 leaving the pins; the new one
       adopts both group sockets and takes the pinned state over. No attempt failed.
    4. A real stop: the pins are gone, the store is empty, 7001 is refused.
    """
    from fake_systemd_path import FakeSystemd

    scene.targets()
    write_config(scene.config, APPS)
    manager = FakeSystemd(tmp_path, prefix=["nsenter", f"--net={scene.ns.path}"])
    argv = [str(REPO / "supervisor.py"), "-c", str(scene.config), "--fd-store",
            *bpf_args(scene.instance, scene.pin_root, scene.obj, 2)]
    stop = threading.Event()
    results: list[tuple[float, bool]] = []

    def attempt() -> None:
        started = time.monotonic()
        try:
            name, echoed = scene.ns.roundtrip(7001, b"restart", timeout=15.0)
            results.append((started, echoed == b"restart" and name.startswith("alpha-")))
        except OSError:
            results.append((started, False))

    def dial() -> None:
        for _ in range(20_000):  # bounded; stopped by the test long before
            if stop.is_set():
                return
            attempt()
            time.sleep(DIAL_INTERVAL)  # the client's pace, not synchronisation

    dialer = threading.Thread(target=dial)
    try:
        manager.start(argv)
        assert manager.names() == ["group-0", "group-1"]
        dialer.start()
        deadline = time.monotonic() + 30
        while len(results) < 20 and time.monotonic() < deadline:
            time.sleep(0.05)
        before = len(results)
        code, _ = manager.restart()
        assert code == 0, manager.log
        assert scene.pin_dir.exists()
        assert "adopting 2 listening sockets kept in systemd's descriptor store" in manager.log
        assert served(scene, 7001, b"after").startswith("alpha-")
        deadline = time.monotonic() + 30
        while len(results) < before + 20 and time.monotonic() < deadline:
            time.sleep(0.05)
        stop.set()
        dialer.join(60)
        assert len(results) >= before + 20 and all(ok for _, ok in results), [r for r in results if not r[1]][:5]
        assert manager.stop() == 0, manager.log
        assert manager.names() == []
        assert not scene.pin_dir.exists()
        assert scene.ns.outcome(7001) == "refused"
    finally:
        stop.set()
        if dialer.is_alive():
            dialer.join(60)
        manager.close()
