"""The proxy testing program against the real skiff on the shipped topology (config.json)."""

from __future__ import annotations

import subprocess
from pathlib import Path

import orjson
import pytest

from tests.support import PYTHON, ROOT, Skiff, app, free_ports, write_config


def shipped_topology(path: Path, **extra: object) -> None:
    """The shipped config.json's apps and targets, moved to free ports: the shipped ports are the demo's
    (`make run`) and other checkouts' tests on this machine; skiff now refuses ports another skiff serves."""
    document = orjson.loads((ROOT / "config.json").read_bytes())
    needed = sum(len(e["Ports"]) + len(e["Targets"]) for e in document["Apps"])
    ports = iter(free_ports(needed))  # all at once, so no two are the same
    for entry in document["Apps"]:
        entry["Ports"] = [next(ports) for _ in entry["Ports"]]
        entry["Targets"] = [f"127.0.0.1:{next(ports)}" if t.startswith("127.") else t for t in entry["Targets"]]
        entry.update(extra)
    path.write_bytes(orjson.dumps(document, option=orjson.OPT_INDENT_2))


@pytest.fixture
def shipped(tmp_path: Path):  # type: ignore[no-untyped-def]
    """skiff on the shipped topology (the reload scenario edits its file, with --edit-config)."""
    config = tmp_path / "config.json"
    shipped_topology(config)
    skiff = Skiff(config, workers=2)
    yield skiff
    assert skiff.stop() == 0


def run_tester(scenario: str, config: Path, tmp_path: Path, *args: str) -> dict[str, object]:
    report = tmp_path / f"{scenario}.json"
    done = subprocess.run(
        [PYTHON, "-m", "tester", scenario, "-c", str(config), "--spawn-targets", "--wait-ready", "10", "--quiet",
         "--json", str(report), *args],
        cwd=ROOT, capture_output=True, text=True, timeout=120,
    )
    assert done.returncode == 0, f"tester {scenario} failed:\n{done.stdout}\n{done.stderr}"
    result: dict[str, object] = orjson.loads(report.read_bytes())
    return result


@pytest.mark.parametrize("scenario", ["smoke", "balance", "reload"])
def test_tester_passes_against_skiff(shipped: Skiff, tmp_path: Path, scenario: str) -> None:
    """1. skiff serves the shipped apps (six-thousand keeps its unresolvable target). 2. The tester starts
    the loopback targets itself and runs the scenario. 3. Every check passes."""
    extra = {"balance": ["--connections", "120"], "reload": ["--duration", "3", "--edit-config"]}.get(scenario, [])
    result = run_tester(scenario, shipped.config, tmp_path, *extra)
    assert result["ok"] is True
    assert "Traceback" not in shipped.log


def test_tester_failover_passes_against_skiff_with_retry_on_reset(tmp_path: Path) -> None:
    """1. skiff serves the shipped apps with RetryOnReset on each: the failover scenario closes a target's
    listening socket, which resets the connections still in its accept queue, and only the opt-in replays
    those (by default such a client loses its connection, as with HAProxy and Envoy). 2. The tester runs the
    failover scenario. 3. Every check passes."""
    config = tmp_path / "config.json"
    shipped_topology(config, RetryOnReset=True)
    skiff = Skiff(config, workers=2)
    try:
        result = run_tester("failover", config, tmp_path)
        assert result["ok"] is True
        assert "Traceback" not in skiff.log
    finally:
        assert skiff.stop() == 0


def test_tester_diagnoses_a_dead_app_and_a_stopped_proxy(tmp_path: Path) -> None:
    """1. skiff serves app "dead" whose only target does not run, with --metrics. 2. smoke (no spawned
    targets): connection failures, not half-close bugs; the diagnosis says no target reachable and that skiff
    marks the target down. 3. skiff stopped: smoke fails with "the proxy refused", and integrity does not
    pass over zero connections."""
    port, target, metrics = free_ports(3)
    config = tmp_path / "config.json"
    write_config(config, [app("dead", [port], [f"127.0.0.1:{target}"])])
    skiff = Skiff(config, "--metrics", f"127.0.0.1:{metrics}", workers=1)
    report = tmp_path / "dead.json"
    argv = [PYTHON, "-m", "tester", "smoke", "-c", str(config), "--connections", "4", "--quiet", "--timeout", "3",
            "--metrics", f"127.0.0.1:{metrics}", "--json", str(report)]
    try:
        done = subprocess.run(argv, cwd=ROOT, capture_output=True, text=True, timeout=120)
    finally:
        assert skiff.stop() == 0
    assert done.returncode == 1, done.stdout + done.stderr
    checks = {c["name"]: c for c in orjson.loads(report.read_bytes())["checks"]}
    assert "closed" in checks["smoke.connections"]["message"], checks
    assert "not checked" in checks["smoke.half_close"]["message"], checks
    diagnosis = checks["smoke.diagnosis"]["message"]
    assert f"no target reachable (127.0.0.1:{target} refused)" in diagnosis, diagnosis
    assert f"skiff marks down: 127.0.0.1:{target}" in diagnosis, diagnosis

    done = subprocess.run(argv, cwd=ROOT, capture_output=True, text=True, timeout=120)
    assert done.returncode == 1, done.stdout + done.stderr
    checks = {c["name"]: c for c in orjson.loads(report.read_bytes())["checks"]}
    assert "likely: the proxy refused" in checks["smoke.connections"]["message"], checks
    assert checks["smoke.integrity"]["ok"] is False and "not checked" in checks["smoke.integrity"]["message"]
