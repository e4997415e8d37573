"""Isolation: an app flooded at its HardLimit by clients that hold connections does not hurt another app.

The figure is a ratio within one run (B's p99 while A is flooded over B's p99 unloaded), so the machine's speed
cancels out; one retry absorbs a burst from whatever else shares the machine.
"""

from __future__ import annotations

import socket
import subprocess
import sys
import time
from collections.abc import Callable
from typing import Any

from tests.support import ROOT, app, free_ports

SAMPLES = 600
WARMUP = 100
HARD_LIMIT = 50

# Holds HARD_LIMIT + 50 connections to A, then keeps knocking (a new connection every ~2 ms, refused at once),
# for at most 60 s whatever happens to the test.
FLOOD = r"""
import socket, sys, time
port, hold = int(sys.argv[1]), int(sys.argv[2])
held = []
for _ in range(hold):
    s = socket.create_connection(("127.0.0.1", port), timeout=5)
    s.sendall(b"x")
    held.append(s)
print("holding", flush=True)
deadline = time.monotonic() + 60
while time.monotonic() < deadline:
    try:
        s = socket.create_connection(("127.0.0.1", port), timeout=2)
        s.sendall(b"k")
        s.recv(1)
        s.close()
    except OSError:
        pass
    time.sleep(0.002)
"""


def p99_roundtrip(port: int) -> tuple[float, int]:
    """B's latency: a new connection, 64 bytes there and back, close; p99 in ms over SAMPLES after WARMUP."""
    times, failures = [], 0
    payload = b"b" * 64
    for i in range(WARMUP + SAMPLES):
        started = time.perf_counter()
        try:
            with socket.create_connection(("127.0.0.1", port), timeout=5) as sock:
                sock.sendall(payload)
                got = b""
                while len(got) < len(payload):
                    chunk = sock.recv(64)
                    if not chunk:
                        break
                    got += chunk
            if got != payload:
                failures += 1
        except OSError:
            failures += 1
        if i >= WARMUP:
            times.append((time.perf_counter() - started) * 1000)
    times.sort()
    return times[int(len(times) * 0.99) - 1], failures


def test_flooded_app_does_not_hurt_another(start_echo: Callable[..., Any], start_skiff: Callable[..., Any],
                                           capsys: Any) -> None:
    """1. Apps A (HardLimit 50) and B, each with its own echo target, two workers. 2. B's p99 unloaded. 3. A is
    flooded: 100 clients hold connections (50 served, 50 refused) and a knocker keeps opening more. 4. B's p99
    again: no failure, and within 2x of unloaded (one retry of both phases)."""
    a_port, b_port, a_target, b_target = free_ports(4)
    start_echo([a_target])
    start_echo([b_target])
    skiff = start_skiff([app("a", [a_port], [f"127.0.0.1:{a_target}"], HardLimit=HARD_LIMIT),
                         app("b", [b_port], [f"127.0.0.1:{b_target}"])])
    figures = []
    for attempt in range(2):
        unloaded, failed_unloaded = p99_roundtrip(b_port)
        flood = subprocess.Popen([sys.executable, "-c", FLOOD, str(a_port), str(HARD_LIMIT + 50)], cwd=ROOT,
                                 stdout=subprocess.PIPE, text=True)
        try:
            assert flood.stdout is not None and flood.stdout.readline().strip() == "holding"
            loaded, failed_loaded = p99_roundtrip(b_port)
        finally:
            flood.kill()
            flood.wait(5)
        figures.append((unloaded, loaded))
        with capsys.disabled():
            print(f"\nisolation attempt {attempt + 1}: B p99 unloaded {unloaded:.2f} ms, "
                  f"with A flooded {loaded:.2f} ms (x{loaded / unloaded:.2f})")
        assert failed_unloaded == 0 and failed_loaded == 0
        if loaded <= 2 * unloaded:
            break
    else:
        raise AssertionError(f"B's p99 more than doubled while A was flooded: {figures}")
    skiff.wait_log(r"app a: refused \d+ connections? \(at HardLimit \(50 connections\)\)")
