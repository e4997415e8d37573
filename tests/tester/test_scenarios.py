"""Both directions: every scenario passes through a correct relay, and each broken relay fails by name.

The tester runs as a real subprocess (`python -m tester`) against relays on real loopback sockets; its exit
status and its JSON report are what these tests read.
"""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path

import orjson
import pytest

from tests.tester.conftest import free_ports, run_tester
from tests.tester.relays import Relay

RelayFactory = Callable[[str | None], Relay]
QUICK = ["--spawn-targets", "--concurrency", "8", "--timeout", "3"]


def report(path: Path) -> dict[str, object]:
    document: dict[str, object] = orjson.loads(path.read_bytes())
    return document


def failed_checks(path: Path) -> set[str]:
    checks = report(path)["checks"]
    assert isinstance(checks, list)
    return {c["name"] for c in checks if not c["ok"]}


@pytest.mark.parametrize(
    ("scenario", "extra"),
    [
        ("smoke", ["--connections", "12", "--max-size", "256k"]),
        ("balance", ["--connections", "90"]),
        ("failover", ["--connections", "20"]),
        ("reload", ["--duration", "2", "--edit-config"]),
        ("soak", ["--duration", "2"]),
        ("throughput", ["--connections", "2", "--bytes", "4M"]),
    ],
)
def test_every_scenario_passes_through_a_correct_relay(
    scenario: str, extra: list[str], config: Path, relay: RelayFactory, tmp_path: Path
) -> None:
    relay(None)
    out = tmp_path / "report.json"
    original = config.read_bytes()
    result = run_tester(scenario, "-c", str(config), *QUICK, *extra, "--json", str(out))
    assert result.returncode == 0, result.stdout + result.stderr
    document = report(out)
    assert document["ok"] is True
    assert f"PASS {scenario}." in result.stdout
    assert config.read_bytes() == original, "the tester puts the config back as it found it"


@pytest.mark.parametrize(
    ("fault", "scenario", "check", "words"),
    [
        ("corrupt", "smoke", "smoke.integrity", "got corrupted echoes (mismatch"),
        ("cross_app", "smoke", "smoke.routing", "a target of beta"),
        ("drop_after_eof", "smoke", "smoke.half_close", "lost the echo after half-close"),
        ("no_failover", "failover", "failover.no_failures", "failed"),
        ("sticky", "balance", "balance.coverage", "got 0 of"),
    ],
)
def test_each_broken_relay_fails_the_check_that_names_its_fault(
    fault: str, scenario: str, check: str, words: str, config: Path, relay: RelayFactory, tmp_path: Path
) -> None:
    relay(fault)
    out = tmp_path / "report.json"
    result = run_tester(scenario, "-c", str(config), *QUICK, "--connections", "20", "--json", str(out))
    assert result.returncode == 1, result.stdout + result.stderr
    assert check in failed_checks(out)
    line = next(line for line in result.stdout.splitlines() if line.startswith(f"FAIL {check}:"))
    assert words in line


def test_wait_ready_gives_up_when_nothing_listens(config: Path) -> None:
    result = run_tester("smoke", "-c", str(config), "--wait-ready", "0.3")
    assert result.returncode == 1
    assert "FAIL ready: nothing listened on 127.0.0.1:" in result.stdout


def test_wait_ready_waits_for_a_late_proxy(config: Path, relay: RelayFactory, tmp_path: Path) -> None:
    """1. Start the tester first. 2. Start the relay 0.5 s later. 3. The run still passes."""
    import subprocess
    import sys

    from tests.tester.conftest import ROOT

    tester = subprocess.Popen(
        [
            sys.executable,
            "-m",
            "tester",
            "smoke",
            "-c",
            str(config),
            "--spawn-targets",
            "-q",
            "--connections",
            "3",
            "--wait-ready",
            "10",
        ],
        cwd=ROOT,
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
    )
    try:
        with pytest.raises(subprocess.TimeoutExpired):
            tester.wait(0.5)
        relay(None)
        output, _ = tester.communicate(timeout=30)
    finally:
        if tester.poll() is None:
            tester.kill()
    assert tester.returncode == 0, output


def test_without_spawned_targets_attribution_is_unknown(
    config: Path, relay: RelayFactory, tmp_path: Path
) -> None:
    """The tester's own echo targets stand in for targets that already run (here: started by the test)."""
    import asyncio
    import threading

    from tester.config import read_config
    from tester.echo import start_echo
    from tester.targets import TargetPool

    addresses = TargetPool.local_targets(read_config(config))
    ready = threading.Event()
    loop = asyncio.new_event_loop()

    async def serve() -> None:
        await start_echo(addresses)
        ready.set()
        await asyncio.Event().wait()

    def run_loop() -> None:
        task = loop.create_task(serve())
        loop.run_forever()
        task.cancel()
        loop.run_until_complete(asyncio.gather(task, return_exceptions=True))

    thread = threading.Thread(target=run_loop, daemon=True)
    thread.start()
    ready.wait(5)
    try:
        relay(None)
        out = tmp_path / "report.json"
        result = run_tester("smoke", "-c", str(config), "--connections", "4", "--json", str(out))
    finally:
        loop.call_soon_threadsafe(loop.stop)
    assert result.returncode == 0, result.stdout
    ports = report(out)["ports"]
    assert isinstance(ports, list)
    assert all(p["targets"] == {"unknown": 4} for p in ports)
    assert "not checked: targets not spawned" in result.stdout


def test_bad_config_exits_2(tmp_path: Path) -> None:
    path = tmp_path / "config.json"
    path.write_text('{"Apps": [{"Name": "a", "Ports": [1], "Targets": ["nocolon"]}]}')
    result = run_tester("smoke", "-c", str(path))
    assert result.returncode == 2
    assert "Apps[0].Targets[0]" in result.stderr


def test_html_report_is_self_contained(config: Path, relay: RelayFactory, tmp_path: Path) -> None:
    relay(None)
    page = tmp_path / "report.html"
    result = run_tester("smoke", "-c", str(config), *QUICK, "--connections", "5", "--html", str(page))
    assert result.returncode == 0, result.stdout
    text = page.read_text()
    assert text.count("<svg") == 4, "a timeline and a histogram per port"
    assert "<rect" in text and "<polyline" in text
    assert "python -m tester smoke" in text and "skiff 0.1.0" in text, "run metadata"
    assert "connections completed" in text, "the headline figure"
    assert "src=" not in text and "href=" not in text, "no external assets"


def test_unused_ports_helper_gives_distinct_ports() -> None:
    ports = free_ports(5)
    assert len(set(ports)) == 5
