"""Lifecycle of BPF steering across processes: takeover without a gap, the instance lock, and probe().

Supervisors are played by separate Python processes (steer_proc.py) started inside the test's namespace.
"""

from __future__ import annotations

import json
import os
import select
import socket
import subprocess
import sys
import threading
import time
from pathlib import Path

from skiff_bpf_harness import Netns, connect_and_accept, connect_outcome, cookie, listener

from bpf.loader import Steering, SteeringError, probe

HERE = Path(__file__).resolve().parent
REPO = HERE.parents[1]
ENV = {**os.environ, "PYTHONPATH": str(REPO)}


def _proc(mode: str, instance: str, obj: Path, pin_root: Path, sock: socket.socket | None = None) -> dict:
    args = [sys.executable, str(HERE / "steer_proc.py"), mode, instance, str(obj), str(pin_root)]
    fds = ()
    if sock is not None:
        args.append(str(sock.fileno()))
        fds = (sock.fileno(),)
    done = subprocess.run(args, pass_fds=fds, env=ENV, capture_output=True, text=True, timeout=30)
    assert done.returncode == 0, done.stdout + done.stderr
    return json.loads(done.stdout.splitlines()[-1])


def _takeover(obj: Path, pin_root: Path) -> dict[str, object]:
    old, new = listener(), listener()
    accepted = {old.fileno(): 0, new.fileno(): 0}
    outcomes: list[str] = []
    stop = threading.Event()
    old_busy, new_busy = threading.Event(), threading.Event()

    def accept() -> None:
        deadline = time.monotonic() + 30
        while not stop.is_set() and time.monotonic() < deadline:
            for ready in select.select([old, new], [], [], 0.05)[0]:
                conn, _ = ready.accept()
                conn.close()
                accepted[ready.fileno()] += 1
                if accepted[old.fileno()] >= 20:
                    old_busy.set()
                if accepted[new.fileno()] >= 20:
                    new_busy.set()

    def dial() -> None:
        deadline = time.monotonic() + 30
        while not stop.is_set() and time.monotonic() < deadline and len(outcomes) < 50000:
            outcomes.append(connect_outcome(7001, timeout=1.0)[0])
            time.sleep(0.002)

    _proc("start", "takeover", obj, pin_root, old)  # 1. first supervisor: steer and exit, pins stay
    threads = [threading.Thread(target=accept), threading.Thread(target=dial)]
    for t in threads:
        t.start()
    try:
        assert old_busy.wait(10), "no traffic reached the first listener"
        before = len(outcomes)
        seen = _proc("takeover", "takeover", obj, pin_root, new)  # 2. successor takes over, repoints
        during = len(outcomes) - before
        assert new_busy.wait(10), "no traffic reached the repointed listener"
    finally:
        stop.set()
        for t in threads:
            t.join(10)
    _proc("finish", "takeover", obj, pin_root)  # 3. clean shutdown
    return {
        "seen": seen,
        "old_cookie": cookie(old),
        "failures": [o for o in outcomes if o != "connected"],
        "attempts": len(outcomes),
        "during_takeover": during,
        "after_finish": connect_outcome(7001)[0],
    }


def test_takeover_keeps_steering_throughout(netns: Netns, bpf_object: Path, pin_root: Path) -> None:
    """1. Process A opens, points group 0 at listener OLD, steers 7001, closes with unpin=False and exits.
    2. A client dials 7001 continuously while process B opens the same instance: B finds 7001 → 0 and
       OLD's cookie in the maps, and repoints group 0 at listener NEW.
    3. Every dial succeeded, OLD then NEW received traffic; after a clean shutdown 7001 is refused and
       nothing stays pinned."""
    result = netns.run(_takeover, bpf_object, pin_root)
    assert result["seen"] == {"ports": {"7001": 0}, "cookie": result["old_cookie"]}
    assert result["failures"] == []
    assert result["attempts"] >= 40
    assert result["during_takeover"] >= 5, "the client must be dialling while the successor starts"
    assert result["after_finish"] == "refused"
    assert not (pin_root / "skiff").exists()


def _second_open(obj: Path, pin_root: Path) -> dict[str, object]:
    args = [sys.executable, str(HERE / "steer_proc.py"), "hold", "locked", str(obj), str(pin_root)]
    holder = subprocess.Popen(args, env=ENV, stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True)
    try:
        assert holder.stdout is not None and holder.stdin is not None
        assert json.loads(holder.stdout.readline()) == {"holding": True}
        try:
            Steering.open("locked", obj, pin_root=pin_root).close(unpin=True)
            refused = ""
        except SteeringError as exc:
            refused = str(exc)
        holder.stdin.close()
        assert holder.wait(10) == 0
    finally:
        if holder.poll() is None:
            holder.kill()
            holder.wait(10)
    Steering.open("locked", obj, pin_root=pin_root).close(unpin=True)  # free again once the holder is gone
    return {"refused": refused, "holder_pid": holder.pid}


def test_second_open_is_refused_naming_the_holder(netns: Netns, bpf_object: Path, pin_root: Path) -> None:
    """1. A separate process opens instance 'locked' and holds it.
    2. Opening the same instance here fails with one line naming the holder's pid.
    3. Once the holder has shut down, opening works."""
    result = netns.run(_second_open, bpf_object, pin_root)
    refused = result["refused"]
    assert refused.startswith("bpf: ")
    assert f"pid {result['holder_pid']}" in refused
    assert "\n" not in refused
    assert not (pin_root / "skiff").exists()


def _probe_without_caps(obj: Path) -> str:
    code = f"from pathlib import Path; from bpf.loader import probe; print(probe(Path({str(obj)!r})))"
    cmd = ["setpriv", "--inh-caps=-all", "--bounding-set=-all", sys.executable, "-c", code]
    return subprocess.run(cmd, env=ENV, capture_output=True, text=True, check=True, timeout=30).stdout.strip()


def test_probe(netns: Netns, bpf_object: Path, tmp_path: Path) -> None:
    """1. As root in a fresh namespace probe() says steering works (None).
    2. A missing object and a process without capabilities each get a one-line reason."""
    assert netns.run(probe, bpf_object) is None
    missing = netns.run(probe, tmp_path / "nope.bpf.o")
    assert missing is not None and "does not exist" in missing
    reason = netns.run(_probe_without_caps, bpf_object)
    assert reason.startswith("bpf: cannot ")
    assert "Operation not permitted" in reason


PREVIOUS = "a86760d"  # the last commit before the group_families map: what a running supervisor may have pinned


def _previous_release(root: Path) -> tuple[Path, Path]:
    """PREVIOUS's bpf package and its object, built from its own .c with its own Makefile: (pythonpath, .o)."""
    package = root / "previous" / "bpf"
    package.mkdir(parents=True)
    names = subprocess.run(["git", "-C", str(REPO), "ls-tree", "--name-only", f"{PREVIOUS}:bpf"],
                           check=True, capture_output=True, text=True, timeout=30).stdout.split()
    for name in names:
        blob = subprocess.run(["git", "-C", str(REPO), "show", f"{PREVIOUS}:bpf/{name}"],
                              check=True, capture_output=True, timeout=30).stdout
        (package / name).write_bytes(blob)
    subprocess.run(["make", "-s", "-C", str(package)], check=True, timeout=60)
    return package.parent, package / "skiff.bpf.o"


def _takeover_from_previous(obj: Path, pin_root: Path, old_path: Path, old_obj: Path) -> dict[str, object]:
    old, new = listener(), listener()
    other = socket.socket(socket.AF_INET6, socket.SOCK_STREAM)  # another program's IPv6 listener on 7001
    other.setsockopt(socket.IPPROTO_IPV6, socket.IPV6_V6ONLY, 1)
    other.bind(("::1", 7001))
    other.listen(16)
    # 1. The previous release steers 7001 to OLD and exits, leaving its pins.
    args = [sys.executable, str(HERE / "steer_proc.py"), "start", "old", str(old_obj), str(pin_root),
            str(old.fileno())]
    done = subprocess.run(args, pass_fds=(old.fileno(),), env={**os.environ, "PYTHONPATH": str(old_path)},
                          capture_output=True, text=True, timeout=30)
    assert done.returncode == 0, done.stdout + done.stderr
    before = {"v4": connect_and_accept(7001, old), "v6": connect_outcome(7001, host="::1")[0]}
    # 2. This release takes the pins over and repoints group 0 at NEW.
    seen = _proc("takeover", "old", obj, pin_root, new)
    after = {"v4": connect_and_accept(7001, new), "v6": connect_and_accept(7001, other, host="::1")}
    other.close()
    _proc("finish", "old", obj, pin_root)
    return {"seen": seen, "old_cookie": cookie(old), "before": before, "after": after}


def test_takeover_from_the_previous_object_keeps_the_maps(netns: Netns, bpf_object: Path, pin_root: Path,
                                                           tmp_path: Path) -> None:
    """1. The previous commit's loader and object (built from its .c) steer 7001 to listener OLD and exit with
       the pins kept; IPv6 to 7001 is dropped then (its old behaviour) though another program listens there.
    2. This release opens the same instance: the pinned maps are reused as they are (ports and OLD's cookie
       are there), the new group_families map is added, and group 0 is repointed at NEW.
    3. IPv4 to 7001 reaches NEW; IPv6 to 7001 now reaches the other program. A clean stop leaves no pins."""
    old_path, old_obj = _previous_release(tmp_path)
    result = netns.run(_takeover_from_previous, bpf_object, pin_root, old_path, old_obj)
    assert result["seen"] == {"ports": {"7001": 0}, "cookie": result["old_cookie"]}
    assert result["before"] == {"v4": 7001, "v6": "refused"}
    assert result["after"] == {"v4": 7001, "v6": 7001}
    assert not (pin_root / "skiff").exists()
