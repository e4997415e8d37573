"""`systemctl restart skiff` without refusing a connection: the listening sockets wait in systemd's
descriptor store (played here by tests/fake_systemd.py) while the old supervisor stops and the new one
starts; a real stop takes them out of the store."""

from __future__ import annotations

import socket
import threading
import time
from pathlib import Path

from tests.fake_systemd import FakeSystemd
from tests.support import ROOT, Echo, app, can_connect, free_ports, wait_for, write_config

DIAL_INTERVAL = 0.01
DIAL_TIMEOUT = 30.0  # a client that waits this long counts as failed; the restart pause is far shorter


class Dialer:
    """A client that dials every 10 ms (send, half-close, read the echo) and records each attempt."""

    def __init__(self, port: int) -> None:
        self.port = port
        self.ok = 0
        self.failures: list[str] = []
        self.slowest = 0.0
        self.done = threading.Event()
        self.thread = threading.Thread(target=self.run, daemon=True)
        self.thread.start()

    def run(self) -> None:
        for _ in range(100_000):  # bounded: ~17 min at 10 ms
            if self.done.is_set():
                return
            started = time.monotonic()
            try:
                with socket.create_connection(("127.0.0.1", self.port), timeout=DIAL_TIMEOUT) as sock:
                    sock.sendall(b"hello")
                    sock.shutdown(socket.SHUT_WR)
                    reply = b"".join(iter(lambda s=sock: s.recv(4096), b""))
                if reply != b"hello":
                    self.failures.append(f"echo {reply!r}")
                else:
                    self.ok += 1
            except OSError as exc:
                self.failures.append(repr(exc))
            self.slowest = max(self.slowest, time.monotonic() - started)
            time.sleep(DIAL_INTERVAL)  # the client's pace, not synchronisation

    def stop(self) -> None:
        self.done.set()
        self.thread.join(DIAL_TIMEOUT + 5)


def test_restart_through_the_descriptor_store_refuses_no_connection(tmp_path: Path) -> None:
    """1. Start skiff (2 workers, reuseport) under the fake systemd: it stores one socket per port per
    worker (port-PORT-SLOT); a reload that swaps a port stores the new port's sockets and removes the old
    port's. 2. A client dials every 10 ms. 3. Restart: SIGTERM during a "restart" job, wait
    for the exit, start again with LISTEN_FDS: the new supervisor adopts the four sockets and is ready. 4.
    The client kept dialling throughout: no attempt failed; the slowest one is the pause a new client sees.
    5. A real stop (a "stop" job): the sockets leave the store and the ports refuse."""
    port, other, third, target = free_ports(4)
    config = tmp_path / "config.json"
    write_config(config, [app("a", [port, other], [f"127.0.0.1:{target}"])])
    echo = Echo([target])
    manager = FakeSystemd(tmp_path)
    argv = [str(ROOT / "supervisor.py"), "-c", str(config), "-w", "2", "--bind", "127.0.0.1", "--grace", "5",
            "--fd-store"]
    dialer: Dialer | None = None
    try:
        manager.start(argv)
        assert manager.names() == sorted(f"port-{p}-{s}" for p in (port, other) for s in (0, 1))
        write_config(config, [app("a", [port, third], [f"127.0.0.1:{target}"])])
        wanted = sorted(f"port-{p}-{s}" for p in (port, third) for s in (0, 1))
        wait_for(lambda: manager.names() == wanted, 30, f"the store to hold {wanted}")
        first_pid = manager.proc.pid if manager.proc else 0
        dialer = Dialer(port)
        wait_for(lambda: dialer is not None and dialer.ok >= 20, 30, "20 dials before the restart")
        before = dialer.ok
        code, _ = manager.restart()
        assert code == 0, manager.log
        assert manager.proc is not None and manager.proc.pid != first_pid
        assert "adopting 4 listening sockets kept in systemd's descriptor store" in manager.log
        assert manager.names() == wanted, "the same four sockets, not new ones"
        wait_for(lambda: dialer is not None and dialer.ok >= before + 20, 30, "20 dials after the restart")
        dialer.stop()
        assert dialer.failures == [], dialer.failures[:5]
        print(f"restart: {dialer.ok} dials, none failed; slowest {dialer.slowest * 1000:.0f} ms")
        assert manager.stop() == 0, manager.log
        assert manager.names() == []
        assert not can_connect(port) and not can_connect(third)
        assert "Traceback" not in manager.log
    finally:
        if dialer is not None:
            dialer.stop()
        manager.close()
        echo.stop()
