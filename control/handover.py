"""The two-phase hand-over between two supervisors of one instance (`--takeover PID`): both sides of it.

The predecessor (`Handover`) keeps everything (instance lock, BPF link, sockmap entry, port map, sockets) until
its successor has committed; the successor (`Takeover`) opens its listeners and a standby view of the pinned
maps, boots its workers, and only then steers. They talk over one unix connection that the predecessor
watches in its selector: the connection's EOF is how it learns that the successor died, whatever killed it.

    successor                                   predecessor (listens on @skiff-takeover-<its pid> on SIGUSR2)
    SIGUSR2, connect (bounded retry), hello ──▶ accept; the peer's pid from SO_PEERCRED
                                        ◀── welcome (or busy: another successor is connected)
    open listeners + standby maps, boot workers
    every worker ready: commit ──────────────▶ stop writing the maps
                                        ◀── yielded
    program into the link, our socket into
    group 0, our port map; committed ────────▶ give up lock and handles (pins stay: they are the successor's)
    SIGTERM to the predecessor          ◀── released
    take the instance lock                      drain on SIGTERM, exit without unpinning

The commit point is "committed" followed by SIGTERM. Before it, any EOF leaves the predecessor in charge: if
it had yielded, it swaps its program back and points the sockmap and the port map at its own socket again.
After it, the predecessor only drains. A predecessor that dies mid-hand-over leaves the successor to commit
alone once its workers are ready (the pins stay when a supervisor dies or stops during a hand-over).
"""

from __future__ import annotations

import logging
import os
import selectors
import signal
import socket
import struct
import time
from collections.abc import Callable
from typing import Any

from bpf.errors import SteeringError
from control.steering import Listeners
from proxy import failpoints
from proxy.framing import FrameDecoder, FramingError, encode
from proxy.logs import log_event

log = logging.getLogger("supervisor")

CONNECT_ATTEMPTS = 250  # a successor retries its connect this many times, CONNECT_INTERVAL apart (5 s)
CONNECT_INTERVAL = 0.02
ANSWER_TIMEOUT = 5.0  # how long a successor waits for the predecessor's welcome; also every send's timeout
_PEERCRED = struct.Struct("3i")  # struct ucred: pid, uid, gid


def rendezvous(pid: int) -> bytes:
    """The abstract unix address a predecessor with this pid listens on (per network namespace)."""
    return f"\0skiff-takeover-{pid}".encode()


def _send(sock: socket.socket, kind: str) -> bool:
    try:
        sock.sendall(encode({"t": kind}))
    except OSError:
        return False  # the peer is gone: its EOF is handled where it is read
    return True


def _signal(pid: int, signum: int) -> None:
    try:
        os.kill(pid, signum)
    except ProcessLookupError:
        pass


def _receive(sock: socket.socket, decoder: FrameDecoder) -> list[dict[str, Any]] | None:
    """The messages that arrived, [] for none yet, None at EOF or on garbage (the peer is treated as gone)."""
    try:
        data = sock.recv(4096)
    except (BlockingIOError, TimeoutError):
        return []
    except OSError:
        return None
    if not data:
        return None
    try:
        return decoder.feed(data)
    except FramingError:
        return None


class Handover:
    """The predecessor's side: invited by SIGUSR2, watches one successor, yields, takes back, or releases."""

    def __init__(self, selector: selectors.BaseSelector, listeners: Listeners) -> None:
        self.selector = selector
        self.listeners = listeners
        self.server: socket.socket | None = None
        self.peer: socket.socket | None = None
        self.peer_pid = 0
        self.decoder = FrameDecoder()
        self.yielded = False
        self.done = False  # a successor committed: we only drain

    def invite(self) -> None:
        """SIGUSR2: listen for a successor; nothing is given up until it commits."""
        if self.done:
            log_event(log, logging.INFO, "handover", "SIGUSR2: already handed over; draining on SIGTERM")
            return
        if self.server is None:
            server = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
            try:
                server.bind(rendezvous(os.getpid()))
                server.listen(4)
            except OSError as exc:
                server.close()
                log_event(log, logging.ERROR, "handover_failed",
                          f"SIGUSR2: cannot listen for a successor: {exc}; still serving", error=str(exc))
                return
            server.setblocking(False)
            self.server = server
            self.selector.register(server, selectors.EVENT_READ, self.on_accept)
        log_event(log, logging.INFO, "handover",
                  "SIGUSR2: waiting for a successor; keeping the lock, steering and sockets until it commits")

    def on_accept(self) -> None:
        assert self.server is not None
        try:
            conn, _ = self.server.accept()
        except OSError:
            return
        pid, uid, _ = _PEERCRED.unpack(conn.getsockopt(socket.SOL_SOCKET, socket.SO_PEERCRED, _PEERCRED.size))
        if uid not in (0, os.geteuid()) or self.peer is not None or self.done:
            why = "busy" if uid in (0, os.geteuid()) else "not allowed"
            log_event(log, logging.WARNING, "handover", f"refused a successor (pid {pid}): {why}"
                      + (f" (pid {self.peer_pid} is taking over)" if self.peer is not None else ""), pid=pid)
            conn.settimeout(ANSWER_TIMEOUT)
            _send(conn, "busy")
            conn.close()
            return
        conn.settimeout(ANSWER_TIMEOUT)  # reads only happen when the selector says readable
        self.peer, self.peer_pid, self.decoder = conn, pid, FrameDecoder()
        self.listeners.handing_over = True
        self.selector.register(conn, selectors.EVENT_READ, self.on_peer)
        _send(conn, "welcome")
        log_event(log, logging.INFO, "handover",
                  f"successor (pid {pid}) connected; still in charge until it commits", pid=pid)

    def on_peer(self) -> None:
        assert self.peer is not None
        messages = _receive(self.peer, self.decoder)
        if messages is None:
            self.successor_gone()
            return
        for message in messages:
            kind = message.get("t")
            if kind == "commit" and not self.yielded:
                self.yielded = True
                self.listeners.yield_steering()
                _send(self.peer, "yielded")
                log_event(log, logging.INFO, "handover", f"successor (pid {self.peer_pid}) is ready; yielding "
                          "the maps to it", pid=self.peer_pid)
            elif kind == "committed" and self.yielded:
                self.done = True
                released = self.listeners.release()
                _send(self.peer, "released")
                log_event(log, logging.INFO, "handover", f"successor (pid {self.peer_pid}) committed; "
                          f"{released}; draining on SIGTERM", pid=self.peer_pid)
                self.close()
                return

    def successor_gone(self) -> None:
        """EOF before "committed": we stay in charge, taking steering back if we had yielded it."""
        pid, yielded = self.peer_pid, self.yielded
        self.drop_peer()
        if not yielded:
            log_event(log, logging.WARNING, "takeover_failed", f"successor (pid {pid}) went away before "
                      "committing; nothing was handed over, still serving", pid=pid)
            return
        try:
            what = self.listeners.reclaim()
        except SteeringError as exc:
            log_event(log, logging.ERROR, "steering_failed", f"successor (pid {pid}) went away while committing "
                      f"and taking steering back failed: {exc}", pid=pid, error=str(exc))
            return
        log_event(log, logging.WARNING, "takeover_failed",
                  f"successor (pid {pid}) went away while committing; {what}; still serving", pid=pid)

    def drop_peer(self) -> None:
        if self.peer is not None:
            self.selector.unregister(self.peer)
            self.peer.close()
        self.peer, self.peer_pid, self.yielded = None, 0, False
        self.listeners.handing_over = False

    def close(self) -> None:
        if self.peer is not None:
            self.selector.unregister(self.peer)
            self.peer.close()
            self.peer = None
        if self.server is not None:
            self.selector.unregister(self.server)
            self.server.close()
            self.server = None

    def forget_in_child(self) -> None:
        """A worker holds no hand-over descriptor (a copy would hide the successor's EOF); never unregister."""
        for sock in (self.server, self.peer):
            if sock is not None:
                sock.close()


class Takeover:
    """The successor's side: connect before anything is opened, commit once every worker is ready."""

    def __init__(self, pid: int, selector: selectors.BaseSelector, listeners: Listeners,
                 give_up: Callable[[str], None]) -> None:
        self.pid = pid
        self.selector = selector
        self.listeners = listeners
        self.give_up = give_up  # the commit failed before its point: stop (the predecessor stays in charge)
        self.peer: socket.socket | None = None
        self.decoder = FrameDecoder()
        # connected -> committing -> committed -> owner; alone: the predecessor went away before our commit;
        # legacy: it never answered (a skiff from before this protocol): one-phase, as that version expects.
        self.state = "connecting"

    @property
    def standby(self) -> bool:
        """Open the listeners in standby (the predecessor keeps steering until we commit)."""
        return self.state == "connected"

    def connect(self) -> str | None:
        """Before the loop runs: invite the predecessor and join it (bounded). None, or why it cannot be done."""
        log_event(log, logging.INFO, "takeover", f"taking over from the supervisor with pid {self.pid}", pid=self.pid)
        try:
            os.kill(self.pid, signal.SIGUSR2)
        except OSError as exc:
            return f"cannot signal it: {exc.strerror or exc}"
        sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        sock.settimeout(ANSWER_TIMEOUT)
        for _ in range(CONNECT_ATTEMPTS):
            try:
                sock.connect(rendezvous(self.pid))
                break
            except (ConnectionRefusedError, FileNotFoundError):
                time.sleep(CONNECT_INTERVAL)  # it listens once its loop has seen SIGUSR2
        else:
            # A supervisor from before this protocol gives up its lock on SIGUSR2 and never listens: take over
            # the one-phase way (our open waits for that lock, so a live two-phase predecessor is never raced).
            sock.close()
            self.state = "legacy"
            log_event(log, logging.WARNING, "takeover", f"pid {self.pid} did not answer the hand-over within "
                      f"{CONNECT_ATTEMPTS * CONNECT_INTERVAL:g} s (an older skiff?); taking over once it releases "
                      "the instance lock, without a way back", pid=self.pid)
            return None
        messages: list[dict[str, Any]] = []
        for _ in range(3):  # one small frame; each recv blocks for at most ANSWER_TIMEOUT
            received = _receive(sock, self.decoder)
            if received is None or received:
                messages = received or []
                break
        answer = messages[0].get("t") if messages else None
        if answer != "welcome":
            sock.close()
            return "another successor is taking over from it" if answer == "busy" else "it closed the hand-over"
        self.peer, self.state = sock, "connected"
        self.selector.register(sock, selectors.EVENT_READ, self.on_peer)
        return None

    def workers_ready(self) -> None:
        """Every worker serves: ask the predecessor to yield the maps (or commit at once if it is gone)."""
        if self.state == "connected" and self.peer is not None:
            self.state = "committing"
            _send(self.peer, "commit")
        elif self.state == "alone":
            self.commit()
        elif self.state == "legacy":
            self.state = "owner"
            log_event(log, logging.INFO, "takeover", f"serving: stopping the predecessor (pid {self.pid})",
                      pid=self.pid)
            _signal(self.pid, signal.SIGTERM)

    def on_peer(self) -> None:
        assert self.peer is not None
        messages = _receive(self.peer, self.decoder)
        if messages is None:
            self.predecessor_gone()
            return
        for message in messages:
            kind = message.get("t")
            if kind == "yielded" and self.state == "committing":
                self.commit()
            elif kind == "released" and self.state == "committed":
                self.take_lock()
                return

    def predecessor_gone(self) -> None:
        self.drop_peer()
        if self.state in ("connected", "committing"):
            log_event(log, logging.WARNING, "takeover", f"the predecessor (pid {self.pid}) went away before we "
                      "committed; taking over alone once our workers are ready", pid=self.pid)
            committing, self.state = self.state == "committing", "alone"
            if committing:
                self.commit()
        elif self.state == "committed":
            self.take_lock()

    def commit(self) -> None:
        try:
            what = self.listeners.commit()
        except SteeringError as exc:
            log_event(log, logging.ERROR, "takeover_failed", f"takeover: cannot steer: {exc}; the predecessor "
                      f"(pid {self.pid}) stays in charge", error=str(exc))
            self.give_up("takeover failed")
            return
        if failpoints.active("takeover-commit"):
            os.kill(os.getpid(), signal.SIGKILL)  # test-only: die with the maps pointing at us, uncommitted
        if self.peer is not None:
            _send(self.peer, "committed")
        _signal(self.pid, signal.SIGTERM)
        alone, self.state = self.peer is None, "committed"
        log_event(log, logging.INFO, "takeover", f"committed ({what}); stopping the predecessor (pid {self.pid})",
                  pid=self.pid)
        if alone:
            self.take_lock()

    def take_lock(self) -> None:
        self.drop_peer()
        self.state = "owner"
        try:
            self.listeners.take_lock()
        except SteeringError as exc:
            log_event(log, logging.ERROR, "steering_failed", f"takeover: serving, but {exc}; a clean stop will "
                      "leave the pins", error=str(exc))
            return
        log_event(log, logging.INFO, "takeover", "takeover complete: this supervisor owns the instance")

    def drop_peer(self) -> None:
        if self.peer is not None:
            self.selector.unregister(self.peer)
            self.peer.close()
            self.peer = None

    def forget_in_child(self) -> None:
        if self.peer is not None:
            self.peer.close()
