"""A target across a slow link, made of real kernel parts: two network namespaces joined by a veth pair.

The proxy side ("near") and the target side ("far") each get a namespace; `tc qdisc tbf` on the near end of
the veth limits what flows towards the target (netem is not available here), and an `iptables -m statistic
--mode nth` rule in the far namespace drops every other SYN to the target's port, so each connect loses its
first SYN and takes about a second. Deleting the namespaces removes the veth, the qdisc and the rule with them,
so cleanup cannot leave anything behind on the host.
"""

from __future__ import annotations

import ctypes
import os
import socket
import subprocess
import threading
import uuid
from types import TracebackType

CLONE_NEWNET = 0x40000000
NEAR_ADDRESS = "10.213.0.1"
FAR_ADDRESS = "10.213.0.2"

_libc = ctypes.CDLL(None, use_errno=True)


def _setns(name: str) -> None:
    fd = os.open(f"/run/netns/{name}", os.O_RDONLY | os.O_CLOEXEC)
    try:
        if _libc.setns(fd, CLONE_NEWNET) != 0:
            err = ctypes.get_errno()
            raise OSError(err, f"setns {name}: {os.strerror(err)}")
    finally:
        os.close(fd)


def _run(*argv: str) -> None:
    subprocess.run(argv, check=True, timeout=15, capture_output=True)


class SlowLink:
    def __init__(self, rate: str = "20mbit", target_port: int = 9000, lose_first_syn: bool = True) -> None:
        tag = uuid.uuid4().hex[:6]
        self.near = f"skiff-near-{tag}"
        self.far = f"skiff-far-{tag}"
        self.rate = rate
        self.target_port = target_port
        self.lose_first_syn = lose_first_syn

    def __enter__(self) -> SlowLink:
        try:
            _run("ip", "netns", "add", self.near)
            _run("ip", "netns", "add", self.far)
            near_if, far_if = f"v{self.near[-6:]}n", f"v{self.far[-6:]}f"
            _run("ip", "link", "add", near_if, "netns", self.near, "type", "veth", "peer", "name", far_if,
                 "netns", self.far)
            _run("ip", "-n", self.near, "addr", "add", f"{NEAR_ADDRESS}/24", "dev", near_if)
            _run("ip", "-n", self.far, "addr", "add", f"{FAR_ADDRESS}/24", "dev", far_if)
            for ns, dev in ((self.near, "lo"), (self.near, near_if), (self.far, "lo"), (self.far, far_if)):
                _run("ip", "-n", ns, "link", "set", dev, "up")
            _run("tc", "-n", self.near, "qdisc", "add", "dev", near_if, "root", "tbf", "rate", self.rate,
                 "burst", "32kbit", "latency", "400ms")
            if self.lose_first_syn:
                _run("ip", "netns", "exec", self.far, "iptables", "-A", "INPUT", "-p", "tcp", "--syn", "--dport",
                     str(self.target_port), "-m", "statistic", "--mode", "nth", "--every", "2", "--packet", "0",
                     "-j", "DROP")
        except BaseException:
            self.close()
            raise
        return self

    def __exit__(self, kind: type[BaseException] | None, exc: BaseException | None,
                 tb: TracebackType | None) -> None:
        self.close()

    def close(self) -> None:
        for ns in (self.near, self.far):
            subprocess.run(["ip", "netns", "del", ns], check=False, timeout=15, capture_output=True)

    def enter_near(self) -> None:
        """preexec_fn for a process that must run on the proxy's side (the child is single-threaded)."""
        _setns(self.near)

    def socket_in(self, ns: str) -> socket.socket:
        """A TCP socket of namespace ns, made on a thread that entered it (this thread stays where it is)."""
        made: list[socket.socket] = []
        failed: list[BaseException] = []

        def make() -> None:
            try:
                _setns(ns)
                made.append(socket.socket())
            except BaseException as exc:
                failed.append(exc)

        thread = threading.Thread(target=make)
        thread.start()
        thread.join(10)
        if failed:
            raise failed[0]
        return made[0]


class Sink:
    """The target: accepts on the far side and reads everything, as fast as the link lets it arrive."""

    def __init__(self, link: SlowLink) -> None:
        self.listener = link.socket_in(link.far)
        self.listener.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        self.listener.bind((FAR_ADDRESS, link.target_port))
        self.listener.listen(16)
        self.listener.settimeout(0.2)
        self.received = 0
        self.stopping = threading.Event()
        self.thread = threading.Thread(target=self._serve, daemon=True)
        self.thread.start()

    def _serve(self) -> None:
        conn = None
        while conn is None and not self.stopping.is_set():  # one connection: the uploading client's
            try:
                conn, _ = self.listener.accept()
            except TimeoutError:
                continue
        if conn is None:
            return
        with conn:
            conn.settimeout(0.2)
            while not self.stopping.is_set():
                try:
                    data = conn.recv(1 << 16)
                except TimeoutError:
                    continue
                except OSError:
                    return
                if not data:
                    return
                self.received += len(data)

    def stop(self) -> None:
        self.stopping.set()
        self.thread.join(10)
        self.listener.close()
