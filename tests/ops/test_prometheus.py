"""A real Prometheus (Debian's package) scrapes a real skiff; the shipped alert rules and Grafana dashboard.

Prometheus runs on a private loopback port with a private data directory, both gone when the test ends.
"""

from __future__ import annotations

import json
import re
import shutil
import subprocess
import tempfile
import time
import urllib.parse
import urllib.request
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from bpf.loader import COUNTERS
from proxy.exposition import ProcessInfo, process_families
from tests.support import ROOT, app, echo_roundtrip, free_ports, wait_for

RULES = ROOT / "deploy" / "prometheus" / "skiff-alerts.yml"
RULE_TESTS = ROOT / "deploy" / "prometheus" / "skiff-alerts.test.yml"
DASHBOARD = ROOT / "deploy" / "grafana" / "skiff.json"
NAME = re.compile(r"\bskiff_[a-z0-9_]+")


def needs(tool: str) -> str:
    path = shutil.which(tool)
    if path is None:
        pytest.skip(f"{tool} is not installed (scripts/install-system-deps.sh installs Debian's prometheus)")
    return path


def test_alert_rules_pass_promtool() -> None:
    """promtool checks the rules' syntax, then runs their unit tests: each alert fires on the series it is about
    (a target down for a minute, every target of an app, a failed reload that resolves once fixed, workers not
    ready, limit refusals, BPF drops) and stays silent otherwise."""
    promtool = needs("promtool")
    checked = subprocess.run([promtool, "check", "rules", str(RULES)], capture_output=True, text=True, timeout=60)
    assert checked.returncode == 0, checked.stdout + checked.stderr
    assert "SUCCESS: 8 rules found" in checked.stdout
    tested = subprocess.run([promtool, "test", "rules", str(RULE_TESTS)], capture_output=True, text=True,
                            timeout=60, cwd=RULE_TESTS.parent)
    assert tested.returncode == 0, tested.stdout + tested.stderr


class Prometheus:
    def __init__(self, scrape: int, rules: Path) -> None:
        self.dir = Path(tempfile.mkdtemp(prefix="skiff-prometheus-"))
        self.port = free_ports(1)[0]
        config = self.dir / "prometheus.yml"
        config.write_text(
            "global: {scrape_interval: 2s, evaluation_interval: 1s, scrape_timeout: 1s}\n"
            f"rule_files: [{json.dumps(str(rules))}]\n"
            f"scrape_configs:\n  - job_name: skiff\n    static_configs: [{{targets: ['127.0.0.1:{scrape}']}}]\n")
        with open(self.dir / "log", "wb") as log:
            self.proc = subprocess.Popen(
                [needs("prometheus"), f"--config.file={config}", f"--storage.tsdb.path={self.dir / 'data'}",
                 f"--web.listen-address=127.0.0.1:{self.port}", "--log.level=warn"],
                stdout=subprocess.DEVNULL, stderr=log)

    def api(self, path: str, **params: Any) -> Any:
        url = f"http://127.0.0.1:{self.port}/api/v1/{path}?{urllib.parse.urlencode(params)}"
        with urllib.request.urlopen(url, timeout=10) as response:
            body = json.loads(response.read())
        assert body["status"] == "success", body
        return body["data"]

    def query(self, expr: str, at: float | None = None) -> list[dict[str, Any]]:
        result: list[dict[str, Any]] = self.api("query", query=expr, **({} if at is None else {"time": at}))["result"]
        return result

    def answers(self, expr: str) -> bool:
        try:
            return bool(self.query(expr))
        except OSError:
            return False  # not listening yet
        finally:
            assert self.proc.poll() is None, (self.dir / "log").read_text()

    def stop(self) -> None:
        if self.proc.poll() is None:
            self.proc.terminate()
            try:
                self.proc.wait(20)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait()
        shutil.rmtree(self.dir, ignore_errors=True)


@pytest.fixture
def prometheus() -> Iterator[list[Prometheus]]:
    started: list[Prometheus] = []
    try:
        yield started
    finally:
        for p in started:
            p.stop()


def used_names() -> set[str]:
    """Every skiff metric name the dashboard and the alert rules query."""
    dashboard = json.loads(DASHBOARD.read_text())
    exprs = [t["expr"] for p in dashboard["panels"] for t in p.get("targets", [])]
    exprs += [a["expr"] for a in dashboard["annotations"]["list"]]
    exprs += [v["definition"] for v in dashboard["templating"]["list"] if "definition" in v]
    assert len(exprs) > 20
    return set(NAME.findall("\n".join(exprs))) | set(NAME.findall(RULES.read_text()))


def test_prometheus_scrapes_skiff(prometheus, start_echo, start_skiff) -> None:  # type: ignore[no-untyped-def]
    """1. skiff serves alpha (a good and a refused target) and beta; a real Prometheus scrapes it every 2 s
    (so each scrape gets a fresh render: skiff caches one for 1 s) with the shipped rules loaded. 2. About 20
    connections a second go to alpha for 12 s. 3. Prometheus has per-app series; its rate() of alpha's
    connections at a moment inside the run matches what the client completed in that window; every count
    arrives. 4. Every metric name the dashboard and the rules use is in the scrape (the BPF family only in bpf
    mode: checked against the renderer and the program's counters).
    5. The rules evaluate on the real series: SkiffTargetDown is pending for the refused target."""
    good, dead, alpha, beta, metrics = free_ports(5)
    start_echo([good])
    start_skiff([app("alpha", [alpha], [f"127.0.0.1:{good}", f"127.0.0.1:{dead}"]),
                 app("beta", [beta], [f"127.0.0.1:{good}"])], "--metrics", f"127.0.0.1:{metrics}")
    server = Prometheus(metrics, RULES)
    prometheus.append(server)
    wait_for(lambda: server.answers('up{job="skiff"} == 1'), 60, "Prometheus to scrape skiff", interval=0.2)

    done: list[float] = []
    began = time.time()
    while time.time() - began < 12.0:
        assert echo_roundtrip(alpha, b"ping") == b"ping"
        done.append(time.time())
        time.sleep(max(0.0, began + len(done) / 20 - time.time()))  # pacing the load, not synchronisation
    echo_roundtrip(beta, b"ping")
    wait_for(lambda: server.answers(f'skiff_connections_total{{app="alpha"}} == {len(done)}')
             and server.answers('skiff_connections_total{app="beta"} == 1'), 30, "Prometheus to see every connection")
    series = server.query('skiff_connections_total{job="skiff"}')
    assert {s["metric"]["app"]: float(s["value"][1]) for s in series} == {"alpha": len(done), "beta": 1}
    assert {s["metric"]["target"] for s in server.query('skiff_target_up{app="alpha"}')} == {
        f"127.0.0.1:{good}", f"127.0.0.1:{dead}"}

    at, window = began + 10.0, 8.0
    measured = float(server.query(f'rate(skiff_connections_total{{app="alpha"}}[{window:g}s])', at)[0]["value"][1])
    sent = sum(1 for t in done if at - window <= t <= at) / window
    assert abs(measured - sent) <= 0.25 * sent, (measured, sent)

    scraped = set(server.api("label/__name__/values"))
    bpf_only = {line.split()[2] for family in process_families(ProcessInfo(steering=dict.fromkeys(COUNTERS, 0)))
                for line in family.lines if line.startswith("# TYPE")} - scraped
    assert bpf_only == {"skiff_bpf_lookups_total"}
    missing = used_names() - scraped - bpf_only
    assert not missing, f"the dashboard or the rules use names skiff does not export: {sorted(missing)}"
    assert set(re.findall(r'outcome="(\w+)"', RULES.read_text())) <= set(COUNTERS)

    def pending() -> bool:
        alerts = server.api("alerts")["alerts"]
        return any(a["labels"]["alertname"] == "SkiffTargetDown" and a["labels"]["target"] == f"127.0.0.1:{dead}"
                   and a["state"] == "pending" for a in alerts)

    wait_for(pending, 15, "SkiffTargetDown to be pending for the refused target")
