"""Memory per connection is bounded however slow the target: the slow-link upload of issue 13, for real."""

from __future__ import annotations

import time
from pathlib import Path

import psutil

from tests.integration.slowlink import FAR_ADDRESS, Sink, SlowLink
from tests.support import Skiff, app, write_config

UPLOAD_SECONDS = 8.0
RSS_GROWTH_LIMIT = 64 << 20


def test_upload_to_a_slow_target_after_a_lost_syn_keeps_the_worker_bounded(tmp_path: Path) -> None:
    """1. The target sits in its own namespace behind a 20 Mbit/s veth (tc tbf), and its first SYN is lost
       (iptables statistic nth): the connect takes about a second, during which the client's early bytes pass
       their limit and the client is paused.
    2. skiff -w 1 on the other side; one client uploads as fast as it can for 8 s.
    3. The worker's RSS grows by at most 64 MiB (the upload stops early if it passes that), and the target
       received bytes: the connection worked, it was only slow."""
    with SlowLink(rate="20mbit", target_port=9000) as link:
        sink = Sink(link)
        try:
            config = tmp_path / "skiff.json"
            write_config(config, [app("slow", [5001], [f"{FAR_ADDRESS}:9000"], ConnectTimeout=5)])
            skiff = Skiff(config, workers=1, preexec_fn=link.enter_near, wait_ready=False)
            try:
                skiff.wait_log(r"ready: config v", timeout=15)
                worker = psutil.Process(skiff.worker_pid(0))
                before = worker.memory_info().rss
                peak = before
                client = link.socket_in(link.near)
                with client:
                    client.settimeout(5)
                    client.connect(("127.0.0.1", 5001))
                    client.settimeout(0.1)
                    chunk = b"u" * (1 << 20)
                    sent = 0
                    deadline = time.monotonic() + UPLOAD_SECONDS
                    while time.monotonic() < deadline and peak - before <= RSS_GROWTH_LIMIT:
                        try:
                            sent += client.send(chunk)
                        except TimeoutError:
                            pass
                        peak = max(peak, worker.memory_info().rss)
                growth = peak - before
                print(f"worker RSS {before / 2**20:.1f} MiB -> peak {peak / 2**20:.1f} MiB "
                      f"(+{growth / 2**20:.1f} MiB); client sent {sent / 2**20:.1f} MiB, "
                      f"target got {sink.received / 2**20:.1f} MiB")
                assert growth <= RSS_GROWTH_LIMIT, f"the worker grew by {growth / 2**20:.0f} MiB"
                assert sink.received > 0
            finally:
                assert skiff.stop() == 0
                assert "Traceback" not in skiff.log, skiff.log
        finally:
            sink.stop()
