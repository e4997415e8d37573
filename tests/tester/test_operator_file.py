"""The tester never changes the operator's config file unless told to, and then gives it back byte for byte.

The relay of tests/tester/relays.py watches the config like skiff does, so a reload is really applied.
"""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import threading
import time
from collections.abc import Callable
from pathlib import Path

import orjson

from tests.tester.conftest import ROOT, run_tester
from tests.tester.relays import Relay

RelayFactory = Callable[[str | None], Relay]
EXTRA_FIELDS = {"HardLimit": 500, "SoftLimit": 100, "ConnectTimeout": 2.5, "ProxyProtocol": "v1",
                "HealthCheck": {"Interval": 2, "Timeout": 0.5}}


def enrich(config: Path) -> bytes:
    """The operator's file: extra fields on every app, indented their way, mode 0640."""
    document = orjson.loads(config.read_bytes())
    for app in document["Apps"]:
        app.update(EXTRA_FIELDS)
    data = b"  " + orjson.dumps(document) + b"\n\n"
    config.write_bytes(data)
    config.chmod(0o640)
    return data


def test_reload_without_edit_config_leaves_the_file_alone(config: Path, relay: RelayFactory) -> None:
    """1. reload without --edit-config. 2. It does not run: one FAIL line says why and names the flag.
    3. The file is untouched: same bytes, mode, inode and mtime."""
    data = enrich(config)
    before = config.stat()
    relay(None)
    result = run_tester("reload", "-c", str(config), "--spawn-targets", "--duration", "1")
    assert result.returncode == 1, result.stdout + result.stderr
    assert "FAIL reload.setup: not run" in result.stdout and "--edit-config" in result.stdout
    after = config.stat()
    assert config.read_bytes() == data
    assert (after.st_ino, after.st_mode, after.st_mtime_ns) == (before.st_ino, before.st_mode, before.st_mtime_ns)


def test_edit_config_keeps_every_field_and_restores_bytes_and_mode(config: Path, relay: RelayFactory,
                                                                   tmp_path: Path) -> None:
    """1. reload --edit-config on a file with limits, checks and PROXY settings, mode 0640. 2. While it runs,
    every version of the file keeps those fields and the mode. 3. It passes, and afterwards the file has its
    original bytes and mode. 4. The report's timeline marks the rewrite and the applied reload, and its
    headline says when the reload was applied."""
    data = enrich(config)
    relay(None)
    seen: list[tuple[bytes, int]] = []
    done = threading.Event()

    def watch() -> None:
        while not done.is_set():
            try:
                seen.append((config.read_bytes(), config.stat().st_mode & 0o777))
            except FileNotFoundError:
                pass  # never: the file is replaced by rename
            time.sleep(0.05)  # sampling the file's versions; not synchronisation

    watcher = threading.Thread(target=watch, daemon=True)
    watcher.start()
    try:
        result = run_tester("reload", "-c", str(config), "--spawn-targets", "--duration", "2", "--edit-config",
                            "--concurrency", "8", "--timeout", "3", "--json", str(tmp_path / "report.json"))
    finally:
        done.set()
        watcher.join(5)
    assert result.returncode == 0, result.stdout + result.stderr
    edited = [content for content, _ in seen if content != data]
    assert edited, "the run edited the file"
    for content in edited:
        for app in orjson.loads(content)["Apps"]:
            assert {k: app[k] for k in EXTRA_FIELDS} == EXTRA_FIELDS
    assert {mode for _, mode in seen} == {0o640}
    assert config.read_bytes() == data
    assert config.stat().st_mode & 0o777 == 0o640
    document = orjson.loads((tmp_path / "report.json").read_bytes())
    assert [m["label"] for m in document["marks"]] == ["config rewritten", "reload applied"]
    assert document["timeline"] and "reload applied after" in document["headline"]
    assert document["spawned_targets"], "the targets the run served, kept after they stopped"


def test_ctrl_c_during_reload_restores_the_file(config: Path, relay: RelayFactory) -> None:
    """1. reload --edit-config --duration 60. 2. Once the file was edited, SIGINT (Ctrl-C). 3. The tester
    exits 130 with one line and no traceback; the file has its original bytes and mode."""
    data = enrich(config)
    relay(None)
    tester = subprocess.Popen(
        [sys.executable, "-m", "tester", "reload", "-c", str(config), "--spawn-targets", "--duration", "60",
         "--edit-config", "-q", "--concurrency", "4"],
        cwd=ROOT, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    try:
        deadline = time.monotonic() + 30
        while config.read_bytes() == data and time.monotonic() < deadline and tester.poll() is None:
            time.sleep(0.02)
        assert config.read_bytes() != data, "the tester edited the file"
        tester.send_signal(signal.SIGINT)
        out, err = tester.communicate(timeout=30)
    finally:
        if tester.poll() is None:
            tester.kill()
            tester.wait()
    assert tester.returncode == 130, out + err
    assert "Traceback" not in err and "interrupted" in err, err
    assert config.read_bytes() == data
    assert config.stat().st_mode & 0o777 == 0o640
    assert [p.name for p in config.parent.iterdir() if p.name.startswith(".")] == [], "no temp file left"
    assert os.access(config, os.R_OK)
