"""systemd's file-descriptor store: the listening sockets outlive a `systemctl restart`.

Under systemd (Type=notify, FileDescriptorStoreMax=), every listening socket the supervisor opens is also
handed to systemd (sd_notify `FDSTORE=1` + `FDNAME=`, the descriptor passed with SCM_RIGHTS): reuseport
sockets as `port-PORT-SLOT`, bpf group listeners as `group-SLOT`. A port a reload removes is taken out
(`FDSTOREREMOVE=1`). On the next start systemd passes them back (`LISTEN_FDS` from fd 3, `LISTEN_FDNAMES`,
`LISTEN_PID`): the supervisor adopts them instead of binding, so a socket is never closed across the restart
and what clients send meanwhile waits in its accept queue.

Restart or stop? systemd 252 does not say (no `$FDSTORE`, no `FileDescriptorStorePreserve=`); the stop of a
`systemctl restart` runs as the unit's restart job, so on SIGTERM the supervisor asks `systemctl list-jobs
UNIT`: a `restart` job keeps the pinned BPF state (the link keeps steering into the stored group socket) and
the stored sockets; anything else is a real stop: the sockets leave the store and the pins are removed.
"""

from __future__ import annotations

import array
import logging
import os
import re
import socket
import subprocess
from collections.abc import Iterator
from pathlib import Path

from proxy.logs import log_event

log = logging.getLogger("supervisor")

SD_LISTEN_FDS_START = 3
SYSTEMCTL_TIMEOUT = 2.0
_NAME = re.compile(r"^(?:port-(\d+)-(\d+)|group-(\d+))$")


def take_listen_fds(environ: dict[str, str] | None = None) -> dict[str, socket.socket]:
    """The sockets systemd passed to this process, by FDNAME; the LISTEN_* variables are removed (the workers
    must not inherit them). Descriptors that are not listening TCP sockets with a name of ours are closed."""
    env = os.environ if environ is None else environ
    pid, count, names = env.pop("LISTEN_PID", ""), env.pop("LISTEN_FDS", ""), env.pop("LISTEN_FDNAMES", "")
    if not pid.isdigit() or int(pid) != os.getpid() or not count.isdigit():
        return {}
    labels = names.split(":") if names else []
    taken: dict[str, socket.socket] = {}
    for i in range(int(count)):
        fd = SD_LISTEN_FDS_START + i
        os.set_inheritable(fd, False)
        name = labels[i] if i < len(labels) else ""
        try:
            sock = socket.socket(fileno=fd)
        except OSError:
            os.close(fd)
            continue
        listening = sock.type == socket.SOCK_STREAM and sock.getsockopt(socket.SOL_SOCKET, socket.SO_ACCEPTCONN)
        if not listening or not _NAME.match(name) or name in taken:
            log_event(log, logging.WARNING, "fdstore_skipped",
                      f"systemd passed descriptor {fd} named {name!r}: not a listener of ours; closing it")
            sock.close()
            continue
        sock.setblocking(False)
        taken[name] = sock
    return taken


class FdStore:
    """Our side of the store: what we handed to systemd (name -> our socket), kept equal to what we listen on."""

    def __init__(self, address: str | None, inherited: dict[str, socket.socket]) -> None:
        self.address: str | None = None
        self.sock: socket.socket | None = None
        self.inherited = inherited  # adopted by the listeners (they pop what they use); the rest is closed
        self.stored: dict[str, int] = {}  # name -> id() of the socket object stored under it
        if address:
            self.address = "\0" + address[1:] if address.startswith("@") else address
            self.sock = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM | socket.SOCK_CLOEXEC)
        # What systemd passed is in its store already.
        self.stored = {name: id(sock) for name, sock in inherited.items()}

    @classmethod
    def from_environment(cls, enabled: bool) -> FdStore:
        """Sockets systemd passed are adopted whatever `enabled` says; we store only when asked (--fd-store:
        the unit sets FileDescriptorStoreMax=, else systemd would refuse every descriptor)."""
        # NOTIFY_SOCKET is read, not removed: the Notifier removes it once it has it too.
        inherited = take_listen_fds()
        if inherited:
            log_event(log, logging.INFO, "fdstore_adopted",
                      f"adopting {len(inherited)} listening sockets kept in systemd's descriptor store")
        return cls(os.environ.get("NOTIFY_SOCKET") if enabled else None, inherited)

    @property
    def active(self) -> bool:
        return self.sock is not None

    def sync(self, wanted: dict[str, socket.socket]) -> None:
        """Store new and replaced sockets, then remove names we no longer listen on (added before removed).
        Inherited sockets nobody adopted are closed here (their names leave the store)."""
        for name, sock in list(self.inherited.items()):
            if wanted.get(name) is not sock:
                sock.close()
        self.inherited.clear()
        if self.sock is None:
            return
        for name, sock in wanted.items():
            if self.stored.get(name) != id(sock):
                if name in self.stored:
                    self._send(f"FDSTOREREMOVE=1\nFDNAME={name}")
                if self._send(f"FDSTORE=1\nFDNAME={name}", sock.fileno()):
                    self.stored[name] = id(sock)
        for name in [n for n in self.stored if n not in wanted]:
            self._send(f"FDSTOREREMOVE=1\nFDNAME={name}")
            del self.stored[name]

    def release_all(self) -> None:
        """A real stop: nothing should wait in a stored socket for a start that is not coming."""
        for name in list(self.stored):
            self._send(f"FDSTOREREMOVE=1\nFDNAME={name}")
        self.stored.clear()

    def _send(self, text: str, fd: int | None = None) -> bool:
        if self.sock is None or self.address is None:
            return False
        ancillary = [] if fd is None else [(socket.SOL_SOCKET, socket.SCM_RIGHTS, array.array("i", [fd]))]
        try:
            self.sock.sendmsg([text.encode()], ancillary, 0, self.address)
        except OSError as exc:
            log_event(log, logging.WARNING, "fdstore_failed",
                      f"systemd's descriptor store did not take {text.splitlines()[-1]}: {exc}; a restart will "
                      "open that socket anew", error=str(exc))
            return False
        return True

    def close(self) -> None:
        if self.sock is not None:
            self.sock.close()
            self.sock = None


def names_for(listeners: object) -> dict[str, socket.socket]:
    """name -> socket for every listening socket the supervisor holds now (either kind of listeners)."""
    table = getattr(listeners, "table", None)
    if table is not None:
        return {f"port-{port}-{slot}": sock for port, socks in table.by_port.items() for slot, sock in enumerate(socks)}
    return {f"group-{slot}": sock for slot, sock in enumerate(getattr(listeners, "sockets", []))}


def own_unit() -> str:
    """The systemd unit this process runs in, from its cgroup (…/skiff.service), else $SKIFF_UNIT or skiff."""
    try:
        for line in Path("/proc/self/cgroup").read_text().splitlines():
            leaf = line.rpartition("/")[2]
            if leaf.endswith(".service"):
                return leaf
    except OSError:
        pass
    return os.environ.get("SKIFF_UNIT", "skiff.service")


def stop_is_restart(unit: str) -> bool:
    """True when systemd runs a restart job for unit (the stop half of `systemctl restart`)."""
    try:
        done = subprocess.run(["systemctl", "list-jobs", "--no-legend", "--plain", unit], capture_output=True,
                              text=True, timeout=SYSTEMCTL_TIMEOUT, check=False)
    except (OSError, subprocess.TimeoutExpired) as exc:
        log_event(log, logging.WARNING, "fdstore_restart_unknown",
                  f"cannot ask systemd whether this stop is a restart ({exc}); treating it as a stop")
        return False
    return any(fields[1:3] == [unit, "restart"] for fields in _rows(done.stdout))


def _rows(text: str) -> Iterator[list[str]]:
    for line in text.splitlines():
        fields = line.split()
        if len(fields) >= 4:
            yield fields


def keep_for_restart(store: FdStore, listeners: object) -> None:
    """On SIGTERM: a restart keeps the stored sockets and the pins (the listeners do not unpin); a real stop
    takes the sockets out of the store (the listeners unpin as usual). Nothing to decide outside systemd."""
    if not store.active:
        return
    unit = own_unit()
    if stop_is_restart(unit):
        if hasattr(listeners, "handing_over"):
            listeners.handing_over = True  # BPF: the pins stay; the link steers into the stored group socket
        log_event(log, logging.INFO, "restart_kept",
                  f"{unit} is restarting: {len(store.stored)} listening sockets stay in systemd's descriptor "
                  "store (clients queue there until the next start accepts) and the BPF pins stay")
        return
    store.release_all()
