"""The status page in a real browser (Debian's chromium through selenium and chromium-driver), and its stream.

The browser is the system's: an explicit driver path, no driver download at run time. Set SKIFF_SCREENSHOT to a
path to keep the screenshot the README shows (docs/status-page.png).
"""

from __future__ import annotations

import os
import shutil
import socket
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import orjson
import pytest

from control.events import MAX_STREAMS
from control.http import CONNECTION_LIFETIME, respond_to
from tests.support import Skiff, app, echo_roundtrip, free_ports

CHROMEDRIVER = Path("/usr/bin/chromedriver")


@pytest.fixture
def browser() -> Iterator[Any]:
    if not CHROMEDRIVER.exists() or shutil.which("chromium") is None:
        pytest.skip("chromium and chromium-driver are not installed (scripts/install-system-deps.sh installs them)")
    from selenium import webdriver
    from selenium.webdriver.chrome.service import Service

    options = webdriver.ChromeOptions()
    for argument in ("--headless=new", "--no-sandbox", "--disable-gpu", "--disable-dev-shm-usage",
                     "--window-size=1400,900"):
        options.add_argument(argument)
    driver = webdriver.Chrome(options=options, service=Service(str(CHROMEDRIVER)))
    try:
        yield driver
    finally:
        driver.quit()


class Events:
    """A raw /events client: reads server-sent events off a socket."""

    def __init__(self, port: int) -> None:
        self.sock = socket.create_connection(("127.0.0.1", port), timeout=10)
        self.sock.sendall(b"GET /events HTTP/1.0\r\n\r\n")
        self.buffer = b""
        self.head = self.read_until(b"\r\n\r\n")

    def read_until(self, marker: bytes) -> bytes:
        while marker not in self.buffer:
            chunk = self.sock.recv(1 << 16)
            if not chunk:
                raise AssertionError(f"the stream closed; had {self.buffer[:200]!r}")
            self.buffer += chunk
        found, self.buffer = self.buffer.split(marker, 1)
        return found

    def next_event(self) -> tuple[str, dict[str, Any]]:
        while True:
            block = self.read_until(b"\n\n").decode()
            fields = dict(line.split(": ", 1) for line in block.split("\n") if ": " in line)
            if "event" in fields:
                return fields["event"], orjson.loads(fields["data"])

    def close(self) -> None:
        self.sock.close()


def state_of(driver: Any, selector: str) -> str:
    from selenium.common.exceptions import WebDriverException
    from selenium.webdriver.common.by import By

    try:
        return str(driver.find_element(By.CSS_SELECTOR, selector + " .state").text)
    except WebDriverException:
        return ""


def test_page_shows_rows_and_a_target_going_down_live(browser: Any, start_echo, start_skiff, tmp_path) -> None:  # type: ignore[no-untyped-def]
    """1. alpha (health-checked) has two targets, beta (passive only) shares the second; gamma..lambda add rows.
    2. The page lists every app; alpha's targets unfold, both UP; the filter box hides what does not match.
    3. The second target's echo process is stopped: alpha's row for it turns DOWN with the health check's reason
    and beta's (after a client fails on it) with the passive reason, without a reload of the page.
    4. A raw /events stream opened first still gets deltas after the 10 s HTTP connection lifetime."""
    from selenium.webdriver.common.by import By
    from selenium.webdriver.support.ui import WebDriverWait

    first, second, other_a, other_b, metrics, *ports = free_ports(13)
    others = [other_a, other_b]
    start_echo([first])
    victim = start_echo([second])
    check = {"Interval": 0.25, "Timeout": 0.2, "Rise": 1, "Fall": 2}
    apps = [app("alpha", [ports[0]], [f"127.0.0.1:{first}", f"127.0.0.1:{second}"], HealthCheck=check,
                HardLimit=500, MaxConns=200),
            app("beta", [ports[1]], [f"127.0.0.1:{second}"])]
    names = ["gamma", "delta", "epsilon", "zeta", "eta", "theta"]
    start_echo(others)
    apps += [app(n, [p], [f"127.0.0.1:{others[i % 2]}"]) for i, (n, p) in enumerate(zip(names, ports[2:], strict=True))]
    skiff: Skiff = start_skiff(apps, "--metrics", f"127.0.0.1:{metrics}")
    stream = Events(metrics)
    opened = time.time()
    try:
        assert b"text/event-stream" in stream.head
        kind, snapshot = stream.next_event()
        assert kind == "snapshot" and [a["name"] for a in snapshot["apps"]][:2] == ["alpha", "beta"]
        for i in range(20):
            assert echo_roundtrip(ports[i % 4], b"x" * 3000) == b"x" * 3000

        browser.get(f"http://127.0.0.1:{metrics}/")
        wait = WebDriverWait(browser, 15, poll_frequency=0.1)
        wait.until(lambda d: len(d.find_elements(By.CSS_SELECTOR, "tr.app")) == 8)
        assert "connect" not in browser.find_element(By.ID, "live").text  # live, not "connecting"
        browser.execute_script("window.notReloaded = true")
        browser.find_element(By.CSS_SELECTOR, 'tr.app[data-name="alpha"]').click()
        browser.find_element(By.CSS_SELECTOR, 'tr.app[data-name="beta"]').click()
        alpha_second = f'tr.target[data-app="alpha"][data-target="127.0.0.1:{second}"]'
        beta_second = f'tr.target[data-app="beta"][data-target="127.0.0.1:{second}"]'
        wait.until(lambda d: state_of(d, alpha_second) == "UP" and state_of(d, beta_second) == "UP")
        wait.until(lambda d: "ok" in d.find_element(By.CSS_SELECTOR, alpha_second).text)  # its last check
        alpha_row = 'tr.app[data-name="alpha"]'
        wait.until(lambda d: "14.6 KiB" in d.find_element(By.CSS_SELECTOR, alpha_row).text)  # 5 x 3,000 bytes

        browser.find_element(By.ID, "filter").send_keys("bet")
        wait.until(lambda d: not d.find_element(By.CSS_SELECTOR, 'tr.app[data-name="alpha"]').is_displayed())
        assert browser.find_element(By.CSS_SELECTOR, 'tr.app[data-name="beta"]').is_displayed()
        browser.find_element(By.ID, "filter").clear()
        browser.execute_script("document.getElementById('filter').dispatchEvent(new Event('input'))")
        wait.until(lambda d: d.find_element(By.CSS_SELECTOR, 'tr.app[data-name="alpha"]').is_displayed())

        victim.stop()
        wait.until(lambda d: state_of(d, alpha_second) == "DOWN")
        assert "health check failed: refused" in browser.find_element(By.CSS_SELECTOR, alpha_second).text
        assert "1/2 UP" in browser.find_element(By.CSS_SELECTOR, 'tr.app[data-name="alpha"]').text
        with socket.create_connection(("127.0.0.1", ports[1]), timeout=5) as client:
            client.recv(1)  # beta's only target refuses: skiff closes the client and marks the target down
        wait.until(lambda d: state_of(d, beta_second) == "DOWN")
        assert "connects failed (refused)" in browser.find_element(By.CSS_SELECTOR, beta_second).text
        assert browser.execute_script("return window.notReloaded") is True
        shot = tmp_path / "status-page.png"
        assert browser.save_screenshot(str(shot)) and shot.stat().st_size > 10_000
        if os.environ.get("SKIFF_SCREENSHOT"):
            shutil.copy(shot, os.environ["SKIFF_SCREENSHOT"])

        late = []  # deltas made after the lifetime would have closed an ordinary HTTP connection
        for _ in range(100):  # one delta a second: the stream's socket timeout bounds each read
            kind, delta = stream.next_event()
            if kind == "delta" and delta["t"] > opened + CONNECTION_LIFETIME + 1:
                late.append(delta)
                break
        assert late, "no delta after the HTTP connection lifetime"
    finally:
        stream.close()
    assert skiff.proc.poll() is None


def test_streams_have_their_own_cap_and_head_is_answered(start_echo, start_skiff) -> None:  # type: ignore[no-untyped-def]
    """1. MAX_STREAMS viewers hold /events open; one more is refused 503 while /healthz still answers.
    2. HEAD /healthz, /metrics and / answer 200 with the GET's Content-Length and no body.
    3. /status carries RFC 3339 times beside the epoch floats and counts the refused viewer."""
    target, port, metrics = free_ports(3)
    start_echo([target])
    start_skiff([app("alpha", [port], [f"127.0.0.1:{target}"])], "--metrics", f"127.0.0.1:{metrics}")
    streams = [Events(metrics) for _ in range(MAX_STREAMS)]
    try:
        assert all(s.next_event()[0] == "snapshot" for s in streams)
        with socket.create_connection(("127.0.0.1", metrics), timeout=5) as extra:
            extra.sendall(b"GET /events HTTP/1.0\r\n\r\n")
            assert extra.recv(100).startswith(b"HTTP/1.0 503")
        for path in ("/healthz", "/metrics", "/"):
            with socket.create_connection(("127.0.0.1", metrics), timeout=5) as sock:
                sock.sendall(f"HEAD {path} HTTP/1.0\r\n\r\n".encode())
                response = b""
                while chunk := sock.recv(65536):
                    response += chunk
            head, _, body = response.partition(b"\r\n\r\n")
            assert head.startswith(b"HTTP/1.0 200") and body == b"", (path, response[:300])
            assert int(head.split(b"Content-Length: ")[1].split(b"\r\n")[0]) > 0
        with socket.create_connection(("127.0.0.1", metrics), timeout=5) as sock:
            sock.sendall(b"GET /status HTTP/1.0\r\n\r\n")
            response = b""
            while chunk := sock.recv(65536):
                response += chunk
        status = orjson.loads(response.partition(b"\r\n\r\n")[2])
        assert status["last_reload"]["at_rfc3339"].endswith("Z") and status["time"].startswith("20")
        assert status["status_page"] == {"viewers": MAX_STREAMS, "rejected": 1, "dropped": 0}
    finally:
        for s in streams:
            s.close()


def test_head_gets_the_head_of_the_get_and_other_methods_405() -> None:
    def handler(path: str) -> tuple[int, str, bytes]:
        return (200, "text/plain", b"ok\n") if path == "/healthz" else (404, "text/plain", b"no\n")

    get = respond_to(b"GET /healthz HTTP/1.0\r\n\r\n", handler)
    head = respond_to(b"HEAD /healthz?x=1 HTTP/1.1\r\nHost: a\r\n\r\n", handler)
    assert get == head + b"ok\n" and b"Content-Length: 3\r\n" in head and head.endswith(b"\r\n\r\n")
    assert respond_to(b"HEAD /nope HTTP/1.0\r\n\r\n", handler).startswith(b"HTTP/1.0 404")
    assert respond_to(b"POST /healthz HTTP/1.0\r\n\r\n", handler).startswith(b"HTTP/1.0 405")
