"""What a reload tells the outside: every SIGHUP completes for systemd, and a failure clears when the file is fixed."""

from __future__ import annotations

import signal
import socket
from pathlib import Path

import orjson

from tests.ops.test_ops import fetch, metric, scrape
from tests.support import Skiff, app, echo_roundtrip, free_ports, wait_for, write_config

BROKEN = b'{"Apps": [{"Name": "alpha", "Ports": [0], "Targets": ["x:1"]}]}'


def test_every_sighup_is_answered_with_reloading_then_ready(start_echo, tmp_path: Path,  # type: ignore[no-untyped-def]
                                                            config_path: Path) -> None:
    """1. A unix datagram socket stands in for systemd ($NOTIFY_SOCKET); READY=1 at start.
    2. SIGHUP with the file unchanged: RELOADING=1, then READY=1 (systemd's reload job completes).
    3. A broken file (no file watch, so only the SIGHUP reads it): RELOADING=1, then READY=1 saying the last
    reload failed. 4. The serving bytes back, SIGHUP: RELOADING=1, READY=1 without the failure."""
    [target] = free_ports(1)
    [port] = free_ports(1)
    start_echo([target])
    listener = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
    listener.bind(str(tmp_path / "notify.sock"))
    listener.settimeout(10)
    write_config(config_path, [app("alpha", [port], [f"127.0.0.1:{target}"])])
    serving = config_path.read_bytes()
    skiff = Skiff(config_path, "--no-watch", env={"NOTIFY_SOCKET": str(tmp_path / "notify.sock")},
                  wait_ready=False)
    try:
        assert listener.recv(4096).decode().startswith("READY=1\nSTATUS=serving config v1")

        def reload_round() -> str:
            skiff.signal(signal.SIGHUP)
            assert listener.recv(4096).decode().startswith("RELOADING=1\nMONOTONIC_USEC=")
            return listener.recv(4096).decode()

        ready = reload_round()
        assert ready.startswith("READY=1\nSTATUS=serving config v1") and "failed" not in ready, ready
        write_config(config_path, BROKEN)
        ready = reload_round()
        assert ready.startswith("READY=1\nSTATUS=serving config v1") and "last reload failed" in ready, ready
        write_config(config_path, serving)
        ready = reload_round()
        assert ready.startswith("READY=1\nSTATUS=serving config v1") and "failed" not in ready, ready
        assert echo_roundtrip(port) == b"ping"
        assert skiff.log.count("reload failed") == 1, skiff.log
    finally:
        skiff.stop()
        listener.close()


def test_a_failed_reload_clears_when_the_file_is_back(start_echo, start_skiff,  # type: ignore[no-untyped-def]
                                                      config_path: Path) -> None:
    """1. A good config serves; /metrics says the last reload succeeded. 2. A broken file: the metric goes to 0
    and /status says why. 3. The file is put back to the serving bytes (no new version): the metric is 1
    again and /status's last_reload is ok, so an alert on it resolves; the failure stays counted."""
    [target] = free_ports(1)
    port, metrics_port = free_ports(2)
    start_echo([target])
    skiff = start_skiff([app("alpha", [port], [f"127.0.0.1:{target}"])], "--metrics", f"127.0.0.1:{metrics_port}")
    serving = config_path.read_bytes()
    assert metric(scrape(metrics_port), "skiff_config_last_reload_success") == 1
    write_config(config_path, BROKEN)
    skiff.wait_log("reload failed")
    # /metrics is rendered at most once a second: wait for a render made after the failure.
    wait_for(lambda: metric(scrape(metrics_port), "skiff_config_last_reload_success") == 0, 5,
             "the failed reload to show in /metrics")
    assert orjson.loads(fetch(metrics_port, "/status")[1])["last_reload"]["ok"] is False
    write_config(config_path, serving)
    wait_for(lambda: metric(scrape(metrics_port), "skiff_config_last_reload_success") == 1, 10,
             "the last reload to count as ok again")
    status = orjson.loads(fetch(metrics_port, "/status")[1])
    assert status["last_reload"]["ok"] is True and status["last_reload"]["error"] is None, status["last_reload"]
    assert status["version"] == 1
    text = scrape(metrics_port)
    assert metric(text, "skiff_config_reloads_total", result="failure") == 1
    assert metric(text, "skiff_config_version") == 1
    assert echo_roundtrip(port) == b"ping"
