"""`--takeover PID` when the successor fails: real supervisors in a private network namespace and bpffs, real
signals, faults injected through SKIFF_FAILPOINT (in the successor's environment only) or SIGKILL.

A prober dials a configured port every PROBE_INTERVAL for the whole attempt and a few seconds after; every
attempt is a full round trip (greeting and echo) or it counts as failed. The predecessor must refuse no one,
serve afterwards, and keep moving its BPF port map on reloads.
"""

from __future__ import annotations

import contextlib
import os
import signal
import threading
import time
from collections.abc import Iterator
from pathlib import Path

import pytest
from netns_client import PYTHON, REPO, Process, bpf_args, write_config
from skiff_bpf_harness import Netns
from test_supervisor_bpf import APP_OF_PORT, APPS, Scene, served

PROBE_INTERVAL = 0.02
PROBE_TIMEOUT = 5.0  # a SYN the kernel had to retransmit (1 s) still counts as served, and shows as late
LATE = 0.5  # seconds: an attempt this slow waited somewhere (a queue, a retransmitted SYN)
AFTER = 100  # attempts the prober makes after the successor is gone (2 s at PROBE_INTERVAL, or more)
FAILING_BOOT = {"SKIFF_FAILPOINT": "worker-boot"}


class Prober:
    """Dials `port` every PROBE_INTERVAL on a thread: (monotonic start, outcome, seconds) per attempt."""

    def __init__(self, scene: Scene, port: int = 7001) -> None:
        self.scene, self.port = scene, port
        self.attempts: list[tuple[float, str, float]] = []
        self.stopped = threading.Event()
        self.thread = threading.Thread(target=self.run, daemon=True)

    def attempt(self) -> str:
        try:
            name, echoed = self.scene.ns.roundtrip(self.port, b"probe", timeout=PROBE_TIMEOUT)
        except OSError as exc:
            return type(exc).__name__
        return "ok" if echoed == b"probe" and name.startswith(APP_OF_PORT[self.port]) else f"short {name!r}"

    def run(self) -> None:
        deadline = time.monotonic() + 120
        while not self.stopped.is_set() and time.monotonic() < deadline and len(self.attempts) < 20000:
            started = time.monotonic()
            outcome = self.attempt()
            self.attempts.append((started, outcome, time.monotonic() - started))
            self.stopped.wait(max(0.0, started + PROBE_INTERVAL - time.monotonic()))

    def wait_attempts(self, more: int, ok_only: bool = False) -> None:
        """Until `more` further attempts were made (bounded: 60 s)."""
        def count() -> int:
            return sum(1 for _, o, _ in self.attempts if o == "ok" or not ok_only)
        goal = count() + more
        deadline = time.monotonic() + 60
        while count() < goal and time.monotonic() < deadline and self.thread.is_alive():
            time.sleep(0.02)
        assert count() >= goal, f"the prober made only {count()} of {goal} attempts"

    @property
    def failed(self) -> list[str]:
        return [o for _, o, _ in self.attempts if o != "ok"]

    def late(self) -> list[float]:
        return [round(s, 2) for _, o, s in self.attempts if o == "ok" and s >= LATE]

    def summary(self) -> str:
        return (f"{len(self.attempts)} attempts, {len(self.failed)} failed {sorted(set(self.failed))}, "
                f"{len(self.late())} late (>= {LATE} s) {self.late()[:10]}")

    def __enter__(self) -> Prober:
        self.thread.start()
        self.wait_attempts(10, ok_only=True)
        return self

    def __exit__(self, *exc: object) -> None:
        self.stopped.set()
        self.thread.join(PROBE_TIMEOUT + 5)


def _in_namespace(ns_path: str) -> list[int]:
    """Every process whose network namespace is ns_path's (all of them started by this test)."""
    inode = os.stat(ns_path).st_ino
    found = []
    for entry in os.listdir("/proc"):
        if entry.isdigit():
            with contextlib.suppress(OSError):
                if os.stat(f"/proc/{entry}/ns/net").st_ino == inode:
                    found.append(int(entry))
    return found


@pytest.fixture
def stage(netns: Netns, pin_root: Path, bpf_object: Path, tmp_path: Path) -> Iterator[Scene]:
    """The scene, plus: whatever still runs in the namespace at the end (a killed successor's orphaned workers
    draining) is killed, after the processes the test started were stopped."""
    made = Scene(netns, pin_root, bpf_object, tmp_path)
    try:
        yield made
    finally:
        for process in reversed(made.started):
            with contextlib.suppress(Exception):
                process.stop()
        for pid in _in_namespace(made.ns.path):
            with contextlib.suppress(ProcessLookupError):
                os.kill(pid, signal.SIGKILL)


def successor(scene: Scene, predecessor: Process, *extra: str, env: dict[str, str] | None = None,
              steering: str = "bpf") -> Process:
    """`supervisor.py --takeover PREDECESSOR` with its own environment (a failpoint stays in the successor)."""
    argv = bpf_args(scene.instance, scene.pin_root, scene.obj, 2, "--takeover", str(predecessor.proc.pid), *extra)
    argv[argv.index("--steering") + 1] = steering
    process = Process(scene.ns, [PYTHON, str(REPO / "supervisor.py"), "-c", str(scene.config), *argv], env=env)
    scene.started.append(process)
    return process


def reload_moves_ports(scene: Scene, proxy: Process) -> None:
    """Rewrite the config (alpha: 7001, 8080; bravo: 9999, 40000: 1234 goes), SIGHUP: the BPF map follows."""
    write_config(scene.config, [("alpha", [7001, 8080], APPS[0][2]), ("bravo", [9999, 40000], APPS[1][2])])
    proxy.proc.send_signal(signal.SIGHUP)
    scene.ns.wait_outcome(8080, "connected", within=10)
    scene.ns.wait_outcome(1234, "refused", within=10)
    assert served(scene, 8080, b"added").startswith("alpha-")
    assert served(scene, 40000, b"added too") == "bravo"


def test_failing_successor_costs_no_connection(stage: Scene) -> None:
    """A successor whose workers cannot boot leaves the predecessor fully in charge.

    1. A supervisor serves; the prober dials 7001 every 20 ms.
    2. A successor starts with --takeover and SKIFF_FAILPOINT=worker-boot: its workers fail five times in a
       row and it gives up (exit 2, workers cannot boot), while the predecessor keeps lock, steering, socket.
    3. The prober goes on for 100 attempts after the successor's exit.
    4. Not one attempt failed; the predecessor says its successor went away before committing. Every
       configured port is served; the pins are there, and the predecessor still owns them: SIGTERM exits 0
       and removes them.
    """
    stage.targets()
    write_config(stage.config, APPS)
    first = stage.supervisor("--no-watch")
    with Prober(stage) as prober:
        doomed = successor(stage, first, env=FAILING_BOOT)
        assert doomed.wait_exit(30) == 2, doomed.log
        prober.wait_attempts(AFTER)
    print(f"\nfailing successor (bpf): {prober.summary()}")
    assert not prober.failed, prober.summary()
    assert first.matching(rf"successor \(pid {doomed.proc.pid}\) went away before committing"), first.log
    assert "workers cannot boot" in doomed.log and "Traceback" not in doomed.log, doomed.log
    for port, app in APP_OF_PORT.items():
        assert served(stage, port, b"still ours").startswith(app), port
    assert (stage.pin_dir / "link").exists()
    stage.stop_cleanly(first)
    assert not stage.pin_dir.exists()


@pytest.mark.parametrize("step", ["started", "booting", "committing"])
def test_successor_killed_at_any_step_costs_no_connection(stage: Scene, step: str) -> None:
    """A successor SIGKILLed before its commit point leaves (or puts back) the predecessor in charge.

    1. A supervisor serves; the prober dials 7001 every 20 ms.
    2. A successor starts with --takeover and dies by SIGKILL:
       started:    as soon as it logs its start line (hand-over connection made, listeners and a standby view
                   of the maps open, no worker forked yet; its workers cannot boot, so it gets no further);
       booting:    once its first worker failed to boot (workers fork and fail in a loop);
       committing: it kills itself (failpoint takeover-commit) after pointing the pinned link, the sockmap and
                   the port map at itself, before telling the predecessor "committed".
    3. The prober goes on for 100 attempts after the successor's death.
    4. Not one attempt failed (committing: at most two refused, see below); the predecessor logs that the
       successor went away (and, when committing, that it took steering back); every configured port is
       served by the predecessor; a reload on it still moves the port map.
    """
    stage.targets()
    write_config(stage.config, APPS)
    first = stage.supervisor("--no-watch")
    env = {"SKIFF_FAILPOINT": "takeover-commit"} if step == "committing" else FAILING_BOOT
    with Prober(stage) as prober:
        doomed = successor(stage, first, env=env)
        pid = doomed.proc.pid
        if step == "started":
            doomed.wait_log(r"starting: config v1")
            doomed.proc.send_signal(signal.SIGKILL)
        elif step == "booting":
            doomed.wait_log(r"worker 0 \(pid \d+\) exited with code \d+ before it was ready")
            doomed.proc.send_signal(signal.SIGKILL)
        assert doomed.wait_exit(30) == -signal.SIGKILL, doomed.log
        prober.wait_attempts(AFTER)
    print(f"\nsuccessor killed ({step}): {prober.summary()}")
    if step == "committing":
        # The one step that can cost anything: connections steered to the successor in the milliseconds between
        # its sockmap write and its death are its own. Its ready workers drain them on their channel's EOF, but
        # between its last listener closing (the sockmap entry goes with it and the program refuses) and the
        # predecessor pointing group 0 back at its own socket a dial is refused, and one its worker accepted
        # just as it stopped may close without a byte. At one attempt per 20 ms: 0 or 1, allow 2.
        assert len(prober.failed) <= 2, prober.summary()
    else:
        assert not prober.failed, prober.summary()
    went = "while committing; took BPF steering back" if step == "committing" else "before committing"
    first.wait_log(rf"successor \(pid {pid}\) went away {went}", timeout=10)
    for port, app in APP_OF_PORT.items():
        assert served(stage, port, b"still ours").startswith(app), port
    reload_moves_ports(stage, first)
    stage.stop_cleanly(first)
    assert not stage.pin_dir.exists()


def test_reload_after_failed_takeover_moves_the_port_map(stage: Scene) -> None:
    """After any takeover attempt the predecessor's reloads still update the BPF port map.

    1. A supervisor serves alpha on 7001 and 1234, bravo on 9999, charlie on 40000 (--no-watch: SIGHUP reloads).
    2. A successor whose workers cannot boot tries to take over and gives up.
    3. The config moves alpha to 7001 and 8080, bravo to 9999 and 40000; SIGHUP to the predecessor.
    4. 8080 connects and reaches alpha, 40000 reaches bravo, 1234 is refused.
    """
    stage.targets()
    write_config(stage.config, APPS)
    first = stage.supervisor("--no-watch")
    doomed = successor(stage, first, env=FAILING_BOOT)
    assert doomed.wait_exit(30) == 2, doomed.log
    reload_moves_ports(stage, first)
    first.wait_log(r"config v2 applied by 2/2 workers")
    stage.stop_cleanly(first)


def test_takeover_after_a_failed_one_hands_everything_over(stage: Scene) -> None:
    """A failed attempt, then a good one: no connection refused throughout, and the new supervisor owns it all.

    1. A supervisor serves; the prober dials 7001 every 20 ms.
    2. A successor whose workers cannot boot tries and gives up (exit 2).
    3. A healthy successor takes over: it commits, the predecessor drains and exits 0 without unpinning.
    4. Not one attempt failed from step 1 to 100 attempts after the predecessor's exit.
    5. The new supervisor holds the instance lock (a third supervisor of the instance exits 4 naming its pid)
       and the pins; a SIGHUP reload on it moves the port map; SIGTERM exits 0 and removes the pins.
    """
    stage.targets()
    write_config(stage.config, APPS)
    first = stage.supervisor("--no-watch")
    with Prober(stage) as prober:
        doomed = successor(stage, first, env=FAILING_BOOT)
        assert doomed.wait_exit(30) == 2, doomed.log
        heir = successor(stage, first, "--no-watch")
        assert first.wait_exit(30) == 0, first.log
        prober.wait_attempts(AFTER)
    print(f"\nfailed, then good takeover: {prober.summary()}")
    assert not prober.failed, prober.summary()
    heir.wait_log(r"takeover complete: this supervisor owns the instance", timeout=10)
    assert (stage.pin_dir / "link").exists()
    third = stage.supervisor("--no-watch", wait_ready=False)
    assert third.wait_exit(30) == 4, third.log
    assert f"is locked by pid {heir.proc.pid}" in third.log, third.log
    reload_moves_ports(stage, heir)
    assert heir.stop() == 0, heir.log
    assert not stage.pin_dir.exists()


def test_failing_successor_in_reuseport_mode_refuses_no_client(stage: Scene) -> None:
    """reuseport mode: the successor's sockets join the predecessor's SO_REUSEPORT groups at once, so the
    kernel queues some new connections on them; when the successor gives up, tcp_migrate_req moves its
    queue to the predecessor's sockets.

    1. A reuseport supervisor serves; the prober dials 7001 every 20 ms (5 s per attempt).
    2. A successor whose workers cannot boot tries to take over and gives up after ~1.5 s of boot retries.
    3. Not one attempt failed: the attempts the kernel queued on the successor's sockets were served late
       (connected at once, answered once migrated) by the predecessor; at least one such late attempt.
    """
    stage.targets()
    write_config(stage.config, APPS)
    common = ["-w", "2", "--bind", "127.0.0.1", "--grace", "5", "--no-watch"]
    first = stage.supervisor(args=["--steering", "reuseport", *common])
    with Prober(stage) as prober:
        doomed = successor(stage, first, env=FAILING_BOOT, steering="reuseport")
        assert doomed.wait_exit(30) == 2, doomed.log
        prober.wait_attempts(AFTER)
    print(f"\nfailing successor (reuseport): {prober.summary()}")
    assert not prober.failed, prober.summary()
    assert prober.late(), f"no attempt was queued on the successor's sockets: {prober.summary()}"
    for port, app in APP_OF_PORT.items():
        assert served(stage, port, b"still ours").startswith(app), port
    stage.stop_cleanly(first)


def test_predecessor_stopped_mid_handover_leaves_the_pins_to_its_successor(stage: Scene, tmp_path: Path) -> None:
    """A predecessor stopped while a successor is connected removes nothing; the successor commits alone.

    1. A supervisor serves. A successor whose workers cannot boot while a file exists (a gated failpoint)
       connects for a takeover, and is SIGSTOPped once the predecessor logged the connection.
    2. SIGTERM to the predecessor: it drains and exits 0, but leaves the pins (a successor is connected).
    3. The file goes, SIGCONT: the successor sees its predecessor gone, boots its workers, commits alone (its
       program, socket and ports into the pinned state) and takes the instance lock.
    4. Every configured port is served; SIGTERM to the successor exits 0 and removes the pins.
    """
    stage.targets()
    write_config(stage.config, APPS)
    first = stage.supervisor("--no-watch")
    gate = tmp_path / "no-boot"
    gate.touch()
    heir = successor(stage, first, "--no-watch", env={"SKIFF_FAILPOINT": f"worker-boot:{gate}"})
    first.wait_log(rf"successor \(pid {heir.proc.pid}\) connected")
    heir.proc.send_signal(signal.SIGSTOP)
    try:
        first.proc.send_signal(signal.SIGTERM)
        assert first.wait_exit(20) == 0, first.log
        assert (stage.pin_dir / "link").exists(), first.log
    finally:
        gate.unlink()
        heir.proc.send_signal(signal.SIGCONT)
    heir.wait_log(r"went away before we committed; taking over alone", timeout=20)
    heir.wait_log(r"takeover complete: this supervisor owns the instance", timeout=20)
    for port, app in APP_OF_PORT.items():
        assert served(stage, port, b"heir").startswith(app), port
    assert heir.stop() == 0, heir.log
    assert "Traceback" not in heir.log, heir.log
    assert not stage.pin_dir.exists()


def _socket_inodes(pid: int) -> set[int]:
    inodes = set()
    for fd in os.listdir(f"/proc/{pid}/fd"):
        with contextlib.suppress(OSError):
            target = os.readlink(f"/proc/{pid}/fd/{fd}")
            if target.startswith("socket:["):
                inodes.add(int(target[8:-1]))
    return inodes


def test_workers_never_hold_the_handover_socket(stage: Scene) -> None:
    """Fork safety: a worker forked while a hand-over is open holds none of its descriptors (a copy would keep
    the connection open after the successor died, hiding the EOF the predecessor watches for).

    1. A supervisor serves; SIGUSR2 (what --takeover sends): it listens on @skiff-takeover-<pid>.
    2. SIGKILL worker 0; the supervisor respawns it.
    3. The supervisor holds the listening socket (/proc/net/unix names it); the new worker does not.
    """
    stage.targets()
    write_config(stage.config, APPS)
    first = stage.supervisor("--no-watch")
    pid = first.proc.pid
    first.proc.send_signal(signal.SIGUSR2)
    first.wait_log(r"SIGUSR2: waiting for a successor")
    old = {p.pid for p in first.workers()}
    os.kill(min(old), signal.SIGKILL)
    first.wait_log(r"was killed by SIGKILL; respawning")
    deadline = time.monotonic() + 10
    while time.monotonic() < deadline and len({p.pid for p in first.workers()} - old) < 1:
        time.sleep(0.02)
    (respawned,) = {p.pid for p in first.workers()} - old
    with open(f"/proc/{pid}/net/unix") as table:  # the supervisor's view: its network namespace
        rows = [line.split() for line in table.read().splitlines()[1:]]
    inodes = {int(row[6]) for row in rows if len(row) >= 8 and row[7] == f"@skiff-takeover-{pid}"}
    assert inodes and inodes <= _socket_inodes(pid), (inodes, rows[:5])
    assert not inodes & _socket_inodes(respawned)
    served(stage, 7001, b"still served")


def test_takeover_by_a_reuseport_successor_hands_the_ports_over(stage: Scene) -> None:
    """A bpf supervisor taken over by a reuseport one (a changed --steering): no connection refused.

    1. A bpf supervisor serves; the prober dials 7001 every 20 ms.
    2. A successor with --steering reuseport takes over: its sockets listen on every configured port, but the
       predecessor's program still steers them to the predecessor's listeners until the commit.
    3. At the commit the sockmap still holds the predecessor's socket (the successor does not steer with BPF),
       so the predecessor removes its steering (detach, unpin) instead of leaving it to nobody; it drains and
       exits 0.
    4. Not one attempt failed; the pins are gone; every port is served by the successor's sockets.
    """
    stage.targets()
    write_config(stage.config, APPS)
    first = stage.supervisor("--no-watch")
    with Prober(stage) as prober:
        heir = successor(stage, first, "--no-watch", steering="reuseport")
        assert first.wait_exit(30) == 0, first.log
        prober.wait_attempts(AFTER)
    print(f"\nbpf -> reuseport takeover: {prober.summary()}")
    assert not prober.failed, prober.summary()
    assert not stage.pin_dir.exists(), first.log
    for port, app in APP_OF_PORT.items():
        assert served(stage, port, b"heir").startswith(app), port
    assert heir.stop() == 0, heir.log


def test_takeover_in_reuseport_mode_refuses_no_client(stage: Scene) -> None:
    """The same protocol between two reuseport supervisors (a guard: nothing to yield or take back there).

    1. A reuseport supervisor serves; the prober dials 7001 every 20 ms.
    2. A reuseport successor takes over: it commits once its workers are ready; the predecessor drains and
       exits 0 (tcp_migrate_req moves what was queued on its sockets to the successor's).
    3. Not one attempt failed; the successor serves every port and stops cleanly.
    """
    stage.targets()
    write_config(stage.config, APPS)
    common = ["-w", "2", "--bind", "127.0.0.1", "--grace", "5", "--no-watch"]
    first = stage.supervisor(args=["--steering", "reuseport", *common])
    with Prober(stage) as prober:
        heir = successor(stage, first, "--no-watch", steering="reuseport")
        assert first.wait_exit(30) == 0, first.log
        prober.wait_attempts(AFTER)
    print(f"\nreuseport takeover: {prober.summary()}")
    assert not prober.failed, prober.summary()
    heir.wait_log(r"takeover complete: this supervisor owns the instance")
    for port, app in APP_OF_PORT.items():
        assert served(stage, port, b"heir").startswith(app), port
    assert heir.stop() == 0, heir.log
