"""Failures name their likely cause, and checks with nothing to judge do not pass."""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path

import orjson

from tests.tester.conftest import run_tester
from tests.tester.relays import Relay

RelayFactory = Callable[[str | None], Relay]


def checks(path: Path) -> dict[str, dict[str, object]]:
    return {c["name"]: c for c in orjson.loads(path.read_bytes())["checks"]}


def test_proxy_down_passes_nothing_and_says_refused(config: Path, tmp_path: Path) -> None:
    """1. No proxy listens. 2. smoke: every check fails; integrity and half_close say no connection completed
    instead of passing over zero; connections names the cause (the proxy refused); the diagnosis says so per
    app. 3. Failed checks come first in the report."""
    out = tmp_path / "report.json"
    result = run_tester("smoke", "-c", str(config), "--spawn-targets", "--connections", "3", "--json", str(out))
    assert result.returncode == 1, result.stdout + result.stderr
    found = checks(out)
    for name in ("smoke.integrity", "smoke.half_close"):
        assert found[name]["ok"] is False
        assert "not checked: none of 9 connections completed" in str(found[name]["message"])
    assert "likely: the proxy refused" in str(found["smoke.connections"]["message"])
    assert "app alpha: none of 6 connections completed: the proxy refused" in str(found["smoke.diagnosis"]["message"])
    document = orjson.loads(out.read_bytes())
    oks = [c["ok"] for c in document["checks"]]
    assert oks == sorted(oks), "failed checks first"
    assert "PASS smoke.integrity" not in result.stdout


def test_dead_app_says_no_target_reachable(config: Path, relay: RelayFactory, tmp_path: Path) -> None:
    """1. A relay runs, but no target does (no --spawn-targets, nothing else listens on them). 2. smoke: the
    failures count as connection failures (closed before any byte), not as half-close bugs; the diagnosis
    says no target is reachable and lists each target's fate."""
    relay(None)
    out = tmp_path / "report.json"
    result = run_tester("smoke", "-c", str(config), "--connections", "3", "--timeout", "3", "--json", str(out))
    assert result.returncode == 1, result.stdout + result.stderr
    found = checks(out)
    assert "closed" in str(found["smoke.connections"]["message"])
    assert "not checked" in str(found["smoke.half_close"]["message"])
    diagnosis = str(found["smoke.diagnosis"]["message"])
    assert "app beta: none of 3 connections completed" in diagnosis
    assert "no target reachable (" in diagnosis and "refused" in diagnosis


def test_a_busy_target_address_names_the_likely_culprit(config: Path) -> None:
    """A target address already in use (say, `make run`'s demo targets): exit 2, one line with a hint."""
    import socket

    target = orjson.loads(config.read_bytes())["Apps"][0]["Targets"][0]
    host, port = target.rsplit(":", 1)
    with socket.socket() as busy:
        busy.bind((host, int(port)))
        busy.listen()
        result = run_tester("smoke", "-c", str(config), "--spawn-targets", "--connections", "1")
    assert result.returncode == 2, result.stdout + result.stderr
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1 and f"cannot serve target {target}" in lines[0], result.stderr
    assert "make run" in lines[0] and "Traceback" not in result.stderr
