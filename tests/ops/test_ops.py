"""Operations: Prometheus metrics that match the traffic, /healthz and /status, sd_notify, the systemd unit."""

from __future__ import annotations

import os
import re
import shutil
import signal
import socket
import subprocess
import urllib.error
import urllib.request
from pathlib import Path

import orjson
import pytest

from tests.support import ROOT, Skiff, app, echo_roundtrip, free_ports, wait_for, write_config


def fetch(port: int, path: str) -> tuple[int, bytes]:
    try:
        with urllib.request.urlopen(f"http://127.0.0.1:{port}{path}", timeout=5) as response:
            return response.status, response.read()
    except urllib.error.HTTPError as error:
        return error.code, error.read()


def metric(text: str, name: str, **labels: str) -> float | None:
    wanted = ",".join(f'{k}="{v}"' for k, v in sorted(labels.items()))
    pattern = re.compile(rf"^{re.escape(name)}(?:\{{(.*)\}})? (\S+)$", re.M)
    for found, value in pattern.findall(text):
        if ",".join(sorted(found.split(","))) == wanted if found else not wanted:
            return float(value)
    return None


def scrape(port: int) -> str:
    status, body = fetch(port, "/metrics")
    assert status == 200
    return body.decode()


def test_metrics_match_the_traffic(start_echo, start_skiff) -> None:  # type: ignore[no-untyped-def]
    """1. alpha has a good target and a refused one; beta is idle. 2. 50 connections to alpha, 100 bytes each.
    3. /metrics says 50 connections, 5,000 bytes each way, failures of the refused target by reason, that
    target down, config v1. 4. A worker killed: the totals do not go back."""
    good, dead = free_ports(2)
    alpha, beta, metrics_port = free_ports(3)
    start_echo([good])
    skiff = start_skiff([app("alpha", [alpha], [f"127.0.0.1:{good}", f"127.0.0.1:{dead}"]),
                         app("beta", [beta], [f"127.0.0.1:{good}"])], "--metrics", f"127.0.0.1:{metrics_port}")
    for i in range(50):
        assert echo_roundtrip(alpha, bytes([65 + i % 26]) * 100) == bytes([65 + i % 26]) * 100

    def settled() -> bool:
        return metric(scrape(metrics_port), "skiff_connections_total", app="alpha") == 50

    wait_for(settled, 5, "workers to report 50 connections")
    text = scrape(metrics_port)
    assert metric(text, "skiff_received_bytes_total", app="alpha") == 5000
    assert metric(text, "skiff_sent_bytes_total", app="alpha") == 5000
    assert metric(text, "skiff_connections_total", app="beta") == 0
    assert metric(text, "skiff_connections_active", app="alpha") == 0
    assert metric(text, "skiff_connect_duration_seconds_count", app="alpha") == 50
    refused = metric(text, "skiff_target_connect_failures_total", app="alpha", target=f"127.0.0.1:{dead}",
                     reason="refused")
    assert refused is not None and refused >= 1
    assert metric(text, "skiff_target_up", app="alpha", target=f"127.0.0.1:{dead}") == 0
    assert metric(text, "skiff_target_up", app="alpha", target=f"127.0.0.1:{good}") == 1
    good_total = metric(text, "skiff_target_connections_total", app="alpha", target=f"127.0.0.1:{good}")
    assert good_total == 50
    assert metric(text, "skiff_config_version") == 1
    assert metric(text, "skiff_workers_ready") == 2
    os.kill(skiff.worker_pid(0), signal.SIGKILL)
    skiff.wait_log(r"worker 0 \(pid \d+\) was killed by SIGKILL; respawning")
    wait_for(lambda: metric(scrape(metrics_port), "skiff_worker_restarts_total") == 1, 5, "the restart to count")
    assert metric(scrape(metrics_port), "skiff_connections_total", app="alpha") == 50


def test_healthz_and_status_follow_the_workers(start_echo, start_skiff, tmp_path: Path) -> None:  # type: ignore[no-untyped-def]
    """1. Healthy: /healthz 200, /status lists both workers on v1 with their RSS, and an open connection.
    2. Worker 0 killed while boots fail (a failpoint file): /healthz 503 naming worker 0.
    3. The failpoint removed: worker 0 boots, /healthz 200 again."""
    [target] = free_ports(1)
    port, metrics_port = free_ports(2)
    start_echo([target])
    failpoint = tmp_path / "fail-boot"
    skiff = start_skiff([app("alpha", [port], [f"127.0.0.1:{target}"])], "--metrics", f"127.0.0.1:{metrics_port}",
                        env={"SKIFF_FAILPOINT": f"worker-boot:{failpoint}"})
    assert fetch(metrics_port, "/healthz") == (200, b"ok\n")
    held = socket.create_connection(("127.0.0.1", port))
    held.sendall(b"x")
    assert held.recv(1) == b"x"
    wait_for(lambda: orjson.loads(fetch(metrics_port, "/status")[1])["apps"]["alpha"]["active"] == 1, 5,
             "/status to count the open connection")
    status = orjson.loads(fetch(metrics_port, "/status")[1])
    assert [w["slot"] for w in status["workers"]] == [0, 1]
    assert all(w["version"] == 1 and w["state"] == "ready" and w["rss_bytes"] > 1e6 for w in status["workers"])
    assert status["healthy"] is True and status["last_reload"]["ok"] is True
    failpoint.touch()
    os.kill(skiff.worker_pid(0), signal.SIGKILL)
    skiff.wait_log(r"worker 0 \(pid \d+\) exited with code 3 before it was ready; retrying")
    status, body = fetch(metrics_port, "/healthz")
    assert status == 503 and b"worker 0" in body, (status, body)
    failpoint.unlink()
    wait_for(lambda: fetch(metrics_port, "/healthz")[0] == 200, 5, "/healthz to recover")
    held.close()


def test_failed_reload_shows_in_status_and_metrics(start_echo, start_skiff, config_path: Path) -> None:  # type: ignore[no-untyped-def]
    """1. A bad config on reload. 2. /status and /metrics say the last reload failed, with the error; still v1."""
    [target] = free_ports(1)
    port, metrics_port = free_ports(2)
    start_echo([target])
    skiff = start_skiff([app("alpha", [port], [f"127.0.0.1:{target}"])], "--metrics", f"127.0.0.1:{metrics_port}")
    write_config(config_path, b'{"Apps": [{"Name": "alpha", "Ports": [0], "Targets": ["x:1"]}]}')
    skiff.wait_log("reload failed")
    status = orjson.loads(fetch(metrics_port, "/status")[1])
    assert status["last_reload"]["ok"] is False
    assert "Apps[0].Ports[0]: 0 is outside 1-65535" in status["last_reload"]["error"]
    text = scrape(metrics_port)
    assert metric(text, "skiff_config_last_reload_success") == 0
    assert metric(text, "skiff_config_reloads_total", result="failure") == 1
    assert metric(text, "skiff_config_version") == 1


def test_sd_notify_protocol(start_echo, tmp_path: Path, config_path: Path) -> None:  # type: ignore[no-untyped-def]
    """1. A unix datagram socket stands in for systemd ($NOTIFY_SOCKET). 2. READY=1 once every worker serves.
    3. A reload: RELOADING=1 (with MONOTONIC_USEC), then READY=1. 4. SIGTERM: STOPPING=1."""
    [target] = free_ports(1)
    first, second = free_ports(2)
    start_echo([target])
    listener = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
    listener.bind(str(tmp_path / "notify.sock"))
    listener.settimeout(10)
    write_config(config_path, [app("alpha", [first], [f"127.0.0.1:{target}"])])
    skiff = Skiff(config_path, env={"NOTIFY_SOCKET": str(tmp_path / "notify.sock")}, wait_ready=False)
    try:
        ready = listener.recv(4096).decode()
        assert ready.startswith("READY=1\nSTATUS=serving config v1")
        assert echo_roundtrip(first) == b"ping"
        write_config(config_path, [app("alpha", [first, second], [f"127.0.0.1:{target}"])])
        reloading = listener.recv(4096).decode()
        assert reloading.startswith("RELOADING=1\nMONOTONIC_USEC=")
        assert listener.recv(4096).decode().startswith("READY=1\nSTATUS=serving config v2")
        skiff.signal(signal.SIGTERM)
        assert listener.recv(4096).decode() == "STOPPING=1"
        assert skiff.proc.wait(15) == 0
    finally:
        skiff.stop()
        listener.close()


@pytest.mark.skipif(shutil.which("systemd-analyze") is None, reason="systemd-analyze is not installed")
def test_systemd_unit_verifies(tmp_path: Path) -> None:
    """The shipped unit passes `systemd-analyze verify` (paths pointed at this checkout, which has .venv)."""
    unit = tmp_path / "skiff.service"
    unit.write_text((ROOT / "deploy" / "skiff.service").read_text().replace("/opt/skiff", str(ROOT)))
    done = subprocess.run(["systemd-analyze", "verify", str(unit)], capture_output=True, text=True, timeout=60)
    assert done.returncode == 0, done.stderr
    assert "Type=notify" in unit.read_text() and "ExecReload=/bin/kill -HUP $MAINPID" in unit.read_text()


def test_refusals_by_limit_are_counted(start_echo, start_skiff) -> None:  # type: ignore[no-untyped-def]
    """1. An app with HardLimit 2; two clients hold connections. 2. Three more are closed at once.
    3. /metrics counts 3 refused and 2 active."""
    [target] = free_ports(1)
    port, metrics_port = free_ports(2)
    start_echo([target])
    start_skiff([app("tight", [port], [f"127.0.0.1:{target}"], HardLimit=2)], "--metrics", f"127.0.0.1:{metrics_port}")
    held = []
    for _ in range(2):
        sock = socket.create_connection(("127.0.0.1", port), timeout=5)
        sock.sendall(b"x")
        assert sock.recv(1) == b"x"
        held.append(sock)
    for _ in range(3):
        with socket.create_connection(("127.0.0.1", port), timeout=5) as sock:
            sock.sendall(b"x")
            try:
                assert sock.recv(1) == b""
            except ConnectionResetError:
                pass
    wait_for(lambda: metric(scrape(metrics_port), "skiff_connections_refused_total", app="tight") == 3, 5,
             "three refusals")
    assert metric(scrape(metrics_port), "skiff_connections_active", app="tight") == 2
    for sock in held:
        sock.close()
