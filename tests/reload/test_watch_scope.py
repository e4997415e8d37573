"""What the watcher reacts to: the config file and its symlink chain, never its neighbours in the directory.

A broken config beside a busy file (a log, a pid file) used to log one failed reload per second; with skiff's own
log in that directory every error line caused the next reload, forever.
"""

from __future__ import annotations

import subprocess
import time
from pathlib import Path
from typing import Any

from tests.support import PYTHON, ROOT, app, echo_roundtrip, free_ports, wait_for, write_config

BROKEN = b'{"Apps": [{"Name": "a", "Ports": [0], "Targets": ["x:1"]}]}'


def failed_lines(log: str) -> list[str]:
    return [line for line in log.splitlines() if "reload failed" in line]


def test_a_busy_neighbour_does_not_reload_a_broken_config(start_echo, start_skiff,  # type: ignore[no-untyped-def]
                                                          config_path: Path) -> None:
    """1. A serving config, then a broken one: one failed-reload line. 2. A neighbour file in the same
    directory is written every 50 ms for 2 s. 3. A good config applies v2 (every event before it has been
    read by then). 4. Still exactly one failed-reload line; traffic flowed throughout."""
    [target] = free_ports(1)
    port, extra = free_ports(2)
    start_echo([target])
    skiff = start_skiff([app("a", [port], [f"127.0.0.1:{target}"])])
    write_config(config_path, BROKEN)
    skiff.wait_log(r"reload failed, still serving config v1")
    neighbour = config_path.with_name("skiff.pid")
    deadline = time.monotonic() + 2.0
    writes = 0
    while time.monotonic() < deadline:  # bounded by the deadline
        with open(neighbour, "a") as f:
            f.write(f"{writes}\n")
        writes += 1
        time.sleep(0.05)  # the pace of the neighbour's writes, not a synchronisation
    assert writes >= 20
    assert echo_roundtrip(port) == b"ping"
    write_config(config_path, [app("a", [port, extra], [f"127.0.0.1:{target}"])])
    skiff.wait_log(r"config v2 applied by 2/2 workers")
    assert len(failed_lines(skiff.log)) == 1, failed_lines(skiff.log)
    assert echo_roundtrip(extra) == b"ping"


class LoggingToFile:
    """The supervisor with its stderr (its log) in a file beside its config, as `skiff 2>>/etc/skiff/log` does."""

    def __init__(self, config: Path, log: Path) -> None:
        self.log_path = log
        with open(log, "ab") as out:
            self.proc = subprocess.Popen(
                [PYTHON, str(ROOT / "supervisor.py"), "-c", str(config), "-w", "2", "--bind", "127.0.0.1",
                 "--grace", "5"], cwd=ROOT, stdout=out, stderr=out)

    @property
    def log(self) -> str:
        return self.log_path.read_text(errors="replace")

    def stop(self) -> None:
        if self.proc.poll() is None:
            self.proc.terminate()
            try:
                self.proc.wait(15)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait()


def test_own_log_beside_a_broken_config_does_not_feed_reloads(start_echo, processes: list[Any],  # type: ignore[no-untyped-def]
                                                              config_path: Path) -> None:
    """1. skiff logs to a file in its config's directory. 2. A broken config: one failed-reload line, which
    is itself a write in that directory. 3. Over 3 s no further failure (the error line must not trigger the
    next reload). 4. A good config then applies v2: the watcher still follows the file."""
    [target] = free_ports(1)
    port, extra = free_ports(2)
    start_echo([target])
    write_config(config_path, [app("a", [port], [f"127.0.0.1:{target}"])])
    skiff = LoggingToFile(config_path, config_path.with_name("skiff.log"))
    processes.append(skiff)
    wait_for(lambda: "ready: config v1" in skiff.log or skiff.proc.poll() is not None, 15, "skiff to be ready")
    assert skiff.proc.poll() is None, skiff.log
    write_config(config_path, BROKEN)
    wait_for(lambda: failed_lines(skiff.log), 10, "the failed reload")
    time.sleep(3.0)  # the window in which a self-sustaining loop would log ~30 lines; nothing to await
    assert len(failed_lines(skiff.log)) <= 2, failed_lines(skiff.log)[:5]
    write_config(config_path, [app("a", [port, extra], [f"127.0.0.1:{target}"])])
    wait_for(lambda: "config v2 applied by 2/2 workers" in skiff.log, 10, "v2 to apply")
    assert len(failed_lines(skiff.log)) <= 2, failed_lines(skiff.log)[:5]
    assert echo_roundtrip(extra) == b"ping"


def test_symlink_chain_names_each_link_and_the_file(tmp_path: Path) -> None:
    """The ConfigMap layout (config.json -> ..data/config.json, ..data -> ..v1): the root is watched for both
    link names, the version directory for the file; an absolute link, a missing file and a loop resolve too."""
    from control.watcher import symlink_chain

    (tmp_path / "..v1").mkdir()
    (tmp_path / "..v1" / "config.json").write_text("{}")
    (tmp_path / "..data").symlink_to("..v1")
    (tmp_path / "config.json").symlink_to("..data/config.json")
    assert symlink_chain(tmp_path / "config.json") == {tmp_path: {"config.json", "..data"},
                                                       tmp_path / "..v1": {"config.json"}}
    (tmp_path / "abs.json").symlink_to(tmp_path / "..data" / "config.json")
    assert symlink_chain(tmp_path / "abs.json") == {tmp_path: {"abs.json", "..data"},
                                                    tmp_path / "..v1": {"config.json"}}
    assert symlink_chain(tmp_path / "..v1" / "config.json") == {tmp_path / "..v1": {"config.json"}}
    assert symlink_chain(tmp_path / "gone" / "config.json") == {tmp_path: {"gone"}}
    (tmp_path / "loop").symlink_to("loop")
    assert symlink_chain(tmp_path / "loop") == {tmp_path: {"loop"}}
