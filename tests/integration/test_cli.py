"""The command line as an operator meets it: --check, config mistakes, bad arguments, JSON logs.

Every failure here must be one readable line (the path into the document for a config mistake) and never a
Python traceback.
"""

from __future__ import annotations

import signal
import subprocess
from pathlib import Path

import orjson
import pytest

from tests.support import PYTHON, ROOT, app, echo_roundtrip, free_ports, write_config

BAD_TARGET = 'Apps[0].Targets[0]: "nocolon" is not host:port'


def run_supervisor(*args: str, timeout: float = 20.0) -> subprocess.CompletedProcess[str]:
    return subprocess.run([PYTHON, str(ROOT / "supervisor.py"), *args], cwd=ROOT, capture_output=True, text=True,
                          timeout=timeout)


def lines(text: str) -> list[str]:
    return [line for line in text.splitlines() if line.strip()]


@pytest.fixture
def good_config(config_path: Path) -> Path:
    port, target = free_ports(2)
    write_config(config_path, [app("web", [port], [f"127.0.0.1:{target}"])])
    return config_path


@pytest.fixture
def bad_config(config_path: Path) -> Path:
    port, target = free_ports(2)
    write_config(config_path, [app("web", [port], ["nocolon", f"127.0.0.1:{target}"])])
    return config_path


def test_check_accepts_a_good_config_with_one_summary_line(good_config: Path) -> None:
    """1. A valid config with one app, one port, one target. 2. `--check` exits 0.
    3. stdout is exactly one line naming the file and summing it up; stderr is empty."""
    result = run_supervisor("-c", str(good_config), "--check")
    assert result.returncode == 0, result.stderr
    assert lines(result.stdout) == [f"{good_config}: ok: 1 app, 1 port, 1 target"]
    assert result.stderr == ""


def test_check_rejects_a_bad_config_with_one_line_naming_the_path(bad_config: Path) -> None:
    """1. A config whose first target has no port. 2. `--check` exits 1.
    3. Exactly one line, naming Apps[0].Targets[0]; no traceback; nothing on stdout."""
    result = run_supervisor("-c", str(bad_config), "--check")
    assert result.returncode == 1
    assert result.stdout == ""
    assert lines(result.stderr) == [f"{bad_config}: invalid: {BAD_TARGET}"]
    assert "Traceback" not in result.stderr


def test_supervisor_refuses_to_start_on_a_bad_config_with_one_line(bad_config: Path) -> None:
    """1. Start the supervisor (no --check) on the bad config. 2. It exits non-zero, promptly.
    3. Its whole output is one log line carrying the path into the document, and no traceback."""
    result = run_supervisor("-c", str(bad_config), "-w", "1", "--bind", "127.0.0.1")
    assert result.returncode != 0
    output = lines(result.stdout + result.stderr)
    assert len(output) == 1, output
    assert BAD_TARGET in output[0] and str(bad_config) in output[0]
    assert "Traceback" not in result.stdout + result.stderr


@pytest.mark.parametrize("check", [True, False], ids=["check", "start"])
def test_a_missing_config_file_is_one_clear_line(tmp_path: Path, check: bool) -> None:
    """1. Point -c at a file that does not exist, with and without --check. 2. Exit code 1.
    3. One line saying the file cannot be read and why; no traceback."""
    missing = tmp_path / "nope.json"
    result = run_supervisor("-c", str(missing), "-w", "1", "--bind", "127.0.0.1", *(["--check"] if check else []))
    assert result.returncode == 1
    output = lines(result.stdout + result.stderr)
    assert len(output) == 1, output
    assert f"cannot read {missing}: No such file or directory" in output[0]
    assert "Traceback" not in result.stdout + result.stderr


@pytest.mark.parametrize(("args", "complaint"), [
    (["-w", "0"], "argument -w/--workers: 0 is outside 1-1024"),
    (["-w", "two"], "argument -w/--workers: 'two' is not a whole number"),
    (["--grace", "x"], "argument --grace: 'x' is not a number of seconds"),
    (["--grace", "-1"], "argument --grace: -1 is outside 0-86400 seconds"),
    (["--bind", "localhost"], "argument --bind: 'localhost' is not an IP address"),
    (["--log-format", "xml"], "argument --log-format: invalid choice"),
])
def test_bad_arguments_exit_2_without_a_traceback(good_config: Path, args: list[str], complaint: str) -> None:
    """1. A good config but one bad argument. 2. Exit code 2 (usage error), before any socket is opened.
    3. The last line names the argument and the problem; no traceback."""
    result = run_supervisor("-c", str(good_config), *args)
    assert result.returncode == 2
    assert "Traceback" not in result.stderr
    assert complaint in lines(result.stderr)[-1]


def test_json_log_lines_are_json_with_the_stable_fields(start_echo, start_skiff, config_path) -> None:  # type: ignore[no-untyped-def]
    """1. An echo target and skiff with `--log-format json`. 2. One connection through it, a SIGUSR1 status,
    then SIGTERM. 3. Every line of the log parses as a JSON object with timestamp, level, event and message,
    and the start, ready, status, stopping and stopped events are among them."""
    port, target = free_ports(2)
    start_echo([target])
    skiff = start_skiff([app("web", [port], [f"127.0.0.1:{target}"])], "--log-format", "json")
    assert echo_roundtrip(port, b"json") == b"json"
    skiff.signal(signal.SIGUSR1)
    skiff.wait_log(r'"event":"status"')
    assert skiff.stop() == 0
    entries = []
    for line in skiff.lines:
        entry = orjson.loads(line)
        assert isinstance(entry, dict), line
        assert {"timestamp", "level", "event", "message"} <= set(entry), line
        assert entry["level"] in {"debug", "info", "warning", "error", "critical"}, line
        entries.append(entry)
    events = [e["event"] for e in entries]
    for expected in ("start", "ready", "status", "stopping", "stopped"):
        assert expected in events, events
    ready = entries[events.index("ready")]
    assert ready["version"] == 1 and ready["workers"] == 2


def test_json_log_of_a_bad_config_is_one_json_line(bad_config: Path) -> None:
    """1. Start on the bad config with `--log-format json`. 2. Exit code 1. 3. One JSON line whose event is
    config_invalid and whose error is the path into the document."""
    result = run_supervisor("-c", str(bad_config), "-w", "1", "--bind", "127.0.0.1", "--log-format", "json")
    assert result.returncode == 1
    output = lines(result.stdout + result.stderr)
    assert len(output) == 1, output
    entry = orjson.loads(output[0])
    assert entry["event"] == "config_invalid"
    assert entry["error"] == BAD_TARGET
    assert entry["level"] == "error"

