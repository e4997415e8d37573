"""The etcd helper process: the only place that talks to etcd while skiff serves.

Forked by the supervisor (which must never run threads: it forks workers), it never forks itself, so it may
block and use a thread. The watch thread lists the prefix at one revision, then watches from the next; a
compaction or a changed cluster ID re-lists; a member that fails is replaced by the next endpoint, with
backoff. The main thread coalesces events (COALESCE seconds after the first of a burst) into one `state`
message for the supervisor, keeps this node's lease alive and puts its report under `PREFIX/nodes/NODE_ID`.

Messages to the supervisor: `state` (every config document at one revision), `source` (up/down). From it:
`report` (this node's record), `relist` (SIGHUP), EOF (the supervisor is gone: revoke the lease, exit).
"""

from __future__ import annotations

import logging
import os
import queue
import random
import selectors
import socket
import threading
import time
from typing import Any

import orjson

from control.sources.etcdapi import Cluster, Compacted, EtcdError, Event, Listing, b64
from proxy.cluster import Document, EtcdUrl
from proxy.framing import FrameDecoder, FramingError, encode
from proxy.logs import log_event

log = logging.getLogger("etcd")

COALESCE = 0.1  # a burst of changes becomes one snapshot this long after its first event
LEASE_TTL = 10
LEASE_EVERY = 3.0  # keepalive period (well inside the TTL)
BACKOFF_FIRST = 0.2
BACKOFF_MAX = 5.0


class Watcher(threading.Thread):
    """List, then watch; hands what it learns to the main thread through `inbox` (and a byte on `wake`)."""

    def __init__(self, url: EtcdUrl, inbox: queue.Queue[tuple[Any, ...]], wake: socket.socket) -> None:
        super().__init__(name="etcd-watch", daemon=True)
        self.url, self.inbox, self.wake = url, inbox, wake
        self.cluster = Cluster(url.endpoints)
        self.stopped = threading.Event()
        self.relist = threading.Event()
        self.cluster_id: str | None = None
        self.revision = 0

    def post(self, *message: Any) -> None:
        self.inbox.put(message)
        try:
            self.wake.send(b"\0")
        except OSError:
            pass  # full: the main thread has wake-ups pending anyway

    def run(self) -> None:
        failures = 0
        while not self.stopped.is_set():
            endpoint = self.cluster.endpoints[self.cluster.current]
            try:
                cluster_id = endpoint.cluster_id()
                if cluster_id != self.cluster_id or self.relist.is_set():
                    self.list_all(endpoint.list_prefix(self.url.prefix + "/"))
                first = True
                for revision, events in endpoint.watch(self.url.prefix + "/", self.revision + 1):
                    if first:  # the watch is created: we are connected (again)
                        self.post("up", str(endpoint), self.revision)
                        first, failures = False, 0
                    if events:
                        self.revision = max(self.revision, revision)
                        self.post("events", revision, events, time.monotonic())
                    if self.relist.is_set() or self.stopped.is_set():
                        break
            except Compacted as exc:
                log_event(log, logging.WARNING, "etcd_compacted", f"{exc}; re-listing {self.url.prefix}/")
                self.relist.set()
                continue
            except EtcdError as exc:
                failures += 1
                count = len(self.cluster.endpoints)
                self.cluster.current = (self.cluster.current + 1) % count
                if failures % count:  # the next member may answer: move on at once
                    if failures == 1:
                        log_event(log, logging.WARNING, "etcd_failover",
                                  f"lost {endpoint} ({exc}); moving to {self.cluster.endpoints[self.cluster.current]}")
                    continue
                self.post("down", str(exc))  # every member failed in a row: back off
                delay = min(BACKOFF_FIRST * 2 ** (failures // count - 1), BACKOFF_MAX)
                self.stopped.wait(delay * random.uniform(0.8, 1.2))

    def list_all(self, listing: Listing) -> None:
        if self.cluster_id is not None and listing.cluster_id != self.cluster_id:
            log_event(log, logging.WARNING, "etcd_cluster_changed",
                      f"the cluster ID changed ({self.cluster_id} -> {listing.cluster_id}); re-listing")
        self.relist.clear()
        self.cluster_id, self.revision = listing.cluster_id, listing.revision
        self.post("reset", listing, time.monotonic())


class Helper:
    def __init__(self, url: EtcdUrl, channel: socket.socket, node_id: str) -> None:
        self.url, self.channel, self.node_id = url, channel, node_id
        self.wake_r, self.wake_w = socket.socketpair()
        self.wake_r.setblocking(False)
        self.wake_w.setblocking(False)
        self.inbox: queue.Queue[tuple[Any, ...]] = queue.Queue()
        self.watcher = Watcher(url, self.inbox, self.wake_w)
        self.leases = Cluster(url.endpoints)
        self.documents: dict[str, Document] = {}
        self.cluster_id = ""
        self.revision = 0
        self.due: float | None = None
        self.first_event: float | None = None
        self.up: bool | None = None
        self.lease: str | None = None
        self.lease_due = 0.0
        self.report: dict[str, Any] = {}
        self.reported: bytes = b""
        self.decoder = FrameDecoder()

    def run(self) -> int:
        selector = selectors.DefaultSelector()
        selector.register(self.channel, selectors.EVENT_READ, "channel")
        selector.register(self.wake_r, selectors.EVENT_READ, "wake")
        self.watcher.start()
        try:
            while True:
                timeout = max(0.0, min(t for t in (self.due, self.lease_due) if t is not None) - time.monotonic())
                for key, _ in selector.select(timeout):
                    if key.data == "channel" and not self.on_channel():
                        return 0
                    if key.data == "wake":
                        self.drain()
                now = time.monotonic()
                if self.due is not None and self.due <= now:
                    self.send_state()
                if self.lease_due <= now:
                    self.keep_lease()
        finally:
            self.watcher.stopped.set()
            if self.lease is not None:
                try:
                    self.leases.call("revoke", self.lease)
                except EtcdError:
                    pass  # it expires by itself within its TTL

    def on_channel(self) -> bool:
        try:
            data = self.channel.recv(1 << 16)
        except OSError:
            data = b""
        if not data:
            return False
        try:
            messages = self.decoder.feed(data)
        except FramingError:
            return False
        for message in messages:
            if message.get("t") == "report":
                self.report = {k: v for k, v in message.items() if k != "t"}
                self.put_report()
            elif message.get("t") == "relist":
                self.list_now()
        return True

    def list_now(self) -> None:
        """SIGHUP: read the whole prefix again; the supervisor hears back even when nothing changed."""
        try:
            listing = self.leases.call("list_prefix", self.url.prefix + "/")
        except EtcdError as exc:
            log_event(log, logging.WARNING, "etcd_relist_failed", f"re-list failed: {exc}")
            return
        log_event(log, logging.INFO, "etcd_relisted", f"SIGHUP: re-listed {self.url.prefix}/ at revision "
                  f"{listing.revision} ({len(listing.documents)} keys)", revision=listing.revision)
        self.take(("reset", listing, time.monotonic()))
        self.due = time.monotonic()

    def drain(self) -> None:
        try:
            while self.wake_r.recv(4096):
                pass
        except BlockingIOError:
            pass
        while True:
            try:
                message = self.inbox.get_nowait()
            except queue.Empty:
                return
            self.take(message)

    def take(self, message: tuple[Any, ...]) -> None:
        kind = message[0]
        if kind == "reset":
            listing: Listing = message[1]
            if listing.cluster_id == self.cluster_id and listing.revision < self.revision:
                return  # older than what a SIGHUP's re-list already gave us
            self.cluster_id, self.revision = listing.cluster_id, listing.revision
            self.documents = {k: d for k, d in listing.documents.items() if self.is_config(k)}
            self.mark_dirty(message[2])
            self.set_up(True, f"listed {self.url.prefix}/ at revision {listing.revision}")
        elif kind == "events":
            events: list[Event] = message[2]
            # After a re-list, events it already covers are skipped (applying them again could go back in time).
            relevant = [e for e in events if self.is_config(e.key) and e.revision > self.revision]
            for event in relevant:
                if event.document is None:
                    self.documents.pop(event.key, None)
                else:
                    self.documents[event.key] = event.document
            if relevant:
                self.revision = max(self.revision, message[1])
                self.mark_dirty(message[3])
        elif kind == "up":
            self.set_up(True, f"watching {self.url.prefix}/ on {message[1]} from revision {message[2] + 1}")
        elif kind == "down":
            self.set_up(False, message[1])

    def is_config(self, key: str) -> bool:
        return key.startswith(self.url.apps_key()) or key == self.url.settings_key

    def mark_dirty(self, at: float) -> None:
        if self.first_event is None:
            self.first_event = at
            self.due = at + COALESCE

    def set_up(self, up: bool, detail: str) -> None:
        if up == self.up:
            return
        self.up = up
        if up:
            log_event(log, logging.INFO, "etcd_up", detail)
        else:
            log_event(log, logging.WARNING, "etcd_down",
                      f"etcd unreachable ({detail}); serving the last good config, retrying with backoff")
        self.send({"t": "source", "up": up, "detail": detail})

    def send_state(self) -> None:
        self.send({"t": "state", "cluster_id": self.cluster_id, "revision": self.revision,
                   "first_event": self.first_event or time.monotonic(),
                   "documents": {k: [b64(d.value), d.mod_revision] for k, d in self.documents.items()}})
        self.due = self.first_event = None

    def send(self, message: dict[str, Any]) -> None:
        self.channel.setblocking(True)  # the supervisor reads its channel in its loop; a frame is small
        self.channel.sendall(encode(message))

    def keep_lease(self) -> None:
        self.lease_due = time.monotonic() + LEASE_EVERY
        try:
            if self.lease is not None and not self.leases.call("keepalive", self.lease):
                self.lease = None
            if self.lease is None:
                self.lease = self.leases.call("grant", LEASE_TTL)
                self.reported = b""
                self.put_report()
        except EtcdError:
            self.lease_due = time.monotonic() + 1.0

    def put_report(self) -> None:
        if self.lease is None or not self.report:
            return
        value = orjson.dumps({"node": self.node_id, "pid": os.getppid(), **self.report}, option=orjson.OPT_SORT_KEYS)
        if value == self.reported:
            return
        try:
            self.leases.call("put", self.url.nodes_key(self.node_id), value, self.lease)
            self.reported = value
        except EtcdError:
            pass  # the next lease round puts it again


def helper_main(url: EtcdUrl, channel: socket.socket, node_id: str) -> int:
    return Helper(url, channel, node_id).run()
