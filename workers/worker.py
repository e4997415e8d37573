"""The worker process: serves its slot's listeners, applies snapshots from the supervisor, drains on stop.

Its one wait point is the uvloop event loop: client sockets, upstream sockets, the supervisor channel and
SIGTERM all arrive there. Snapshots are applied between events, so a connection sees one routing table.
"""

from __future__ import annotations

import asyncio
import logging
import os
import random
import signal
import socket
import time
from dataclasses import dataclass, replace
from typing import Any

import setproctitle
import uvloop

from proxy import failpoints, proxyproto
from proxy.balancer import TargetState
from proxy.certfiles import CertPair
from proxy.counters import TLS_KEY, AppStats, CounterTable
from proxy.logs import log_event
from proxy.snapshot import Snapshot
from workers.barrier import CallbackErrors, client_side_class
from workers.channel import SupervisorChannel
from workers.connector import Connector
from workers.fdguard import AcceptGuard
from workers.health import HealthChecker
from workers.listeners import Listener, drain, serve
from workers.policy import Policy
from workers.privileges import PrivilegeError, drop_all_capabilities
from workers.relay import ClientSide
from workers.resolver import Resolver
from workers.routes import AppRoute, RoutingTable, build_table
from workers.tls import TlsAcceptor, TlsServer

log = logging.getLogger("worker")

EXIT_OK = 0
EXIT_BOOT_FAILED = 3
EXIT_CRASHED = 5

BYTES_FLUSH_INTERVAL = 1.0  # the idle sweep runs at least this often: open connections' bytes reach the table
NOTHING_COUNTED = (0, 0)


@dataclass(frozen=True, slots=True)
class WorkerOptions:
    grace: float
    steered: bool = False  # bpf mode: one listener for every port; the accepted socket names the port
    counters: CounterTable | None = None  # shared by every worker: limits, health verdicts and metrics


class Worker:
    def __init__(
        self, slot: int, channel: socket.socket, sockets: dict[int, socket.socket], snapshot: Snapshot,
        options: WorkerOptions,
    ) -> None:
        self.slot = slot
        self.options = options
        self.snapshot = snapshot
        self.table: RoutingTable = build_table(snapshot.version, snapshot.config, None)
        self.listeners = {port: Listener(port, sock) for port, sock in sockets.items()}
        self.relays: set[ClientSide] = set()
        self.flushed: dict[ClientSide, tuple[int, int]] = {}  # bytes of open connections already counted
        self.adopting: set[asyncio.Task[object]] = set()  # queued connections taken over from a draining listener
        self.loop = asyncio.get_running_loop()
        self.guard = AcceptGuard(slot, self.pause_accepting, self.resume_accepting)
        self.policy = Policy(slot, options.counters, self.guard.exhausted)
        self.policy.bind(self.table, snapshot.cells)
        resolver = Resolver()
        self.health = HealthChecker(slot, options.counters, resolver) if options.counters is not None else None
        self.resuming: set[asyncio.Task[None]] = set()
        self.connector = Connector(slot, resolver, random.Random(), self.policy)
        self.incoming: dict[int, socket.socket] = {}  # listening sockets for ports the next snapshot adds
        self.retired: dict[int, AppRoute] = {}  # routes of removed ports, for connections already on their way
        self.control: asyncio.Queue[dict[str, Any]] = asyncio.Queue()
        self.stopped = asyncio.Event()
        self.stopping = False
        self.sigterms = 0
        self.exit_code = EXIT_OK
        self.channel = SupervisorChannel(self.loop, channel, slot, self.control.put_nowait, self.begin_stop)
        self.callback_errors = CallbackErrors(slot)
        self.tls_stats = AppStats()  # TLS failures before an app is known (bound to the TLS_KEY cell)
        self.tls = TlsAcceptor(self, self.tls_stats_for, self.guard.exhausted)
        self.apply_tls(snapshot)

    # --- connections ---------------------------------------------------------------------------------
    async def serve(self, listener: Listener) -> None:
        """Start serving a port: a TLS port reads each hello first (workers/tls.py)."""
        if listener.port in self.tls.routes.ports:
            self.tls.serve(listener)
        else:
            await serve(listener, self.factory_for(listener.port))

    def apply_tls(self, snapshot: Snapshot) -> None:
        self.tls.apply(snapshot.config, self.table.apps, snapshot.certs)
        cell = snapshot.cells.get(TLS_KEY)
        if self.options.counters is not None and cell is not None:
            self.tls_stats = self.options.counters.app_stats(self.slot, cell)

    def tls_stats_for(self, route: AppRoute | None) -> AppStats:
        return route.stats if route is not None else self.tls_stats

    def factory_for(self, port: int) -> Any:
        if failpoints.configured("relay-callback"):  # tests only: the plain factories below cost nothing extra
            if self.options.steered:
                return lambda: client_side_class()(self, None)
            return lambda: client_side_class()(self, self.route_for(port))
        if self.options.steered:
            return lambda: ClientSide(self, None)  # accepted() finds the route from the socket's local port
        # Looked up at accept time, so a reload's new table applies to the next connection.
        return lambda: ClientSide(self, self.route_for(port))

    def route_for(self, port: int) -> AppRoute | None:
        # A port the last reload removed is still served by its old route until its queue is drained (and,
        # in bpf mode, until the supervisor has taken it out of the port map).
        return self.table.by_port.get(port) or self.retired.get(port)

    def drain(self, listener: Listener, factory: Any) -> None:
        if listener.port in self.tls.routes.ports or isinstance(listener.server, TlsServer):
            self.tls.drain(listener)
            return
        for task in drain(listener, factory):
            self.adopting.add(task)
            task.add_done_callback(self._adopted)

    def _adopted(self, task: asyncio.Task[object]) -> None:
        self.adopting.discard(task)
        self.check_stopped()

    def check_stopped(self) -> None:
        if self.stopping and not self.relays and not self.adopting:
            self.stopped.set()

    def accepted(self, relay: ClientSide) -> None:
        client: Any = relay.client  # the accepted transport
        if self.options.steered and relay.route is None:
            sockname = client.get_extra_info("sockname")
            relay.route = self.route_for(sockname[1]) if sockname else None
        route = relay.route
        if route is None or not self.policy.admit(route):
            # Not ours any more (a port removed between accept and now), or at HardLimit.
            relay.connect_failed()
            return
        route.stats.total += 1
        relay.idle_since = time.monotonic()
        self.relays.add(relay)
        self.guard.check(2 * len(self.relays))
        if route.app.proxy_protocol is not None:
            relay.header = proxyproto.encode(route.app.proxy_protocol, client.get_extra_info("peername"),
                                             client.get_extra_info("sockname"))
        self.connector.start(relay)

    def retry(self, relay: ClientSide, target: TargetState | None, exc: BaseException) -> None:
        """The target reset the connection before answering and the app allows a replay (RetryOnReset):
        count it as a failed connect, try the next."""
        route = relay.route
        assert route is not None
        if target is not None:
            self.connector.failed(route.app.name, target, exc)
        route.stats.failovers += 1
        relay.connect_task = self.loop.create_task(self.connector.connect(relay))

    def finished(self, relay: ClientSide) -> None:
        if relay in self.relays:
            self.relays.discard(relay)
            assert relay.route is not None
            stats = relay.route.stats
            counted_in, counted_out = self.flushed.pop(relay, NOTHING_COUNTED) if self.flushed else NOTHING_COUNTED
            stats.bytes_in += relay.bytes_in - counted_in
            stats.bytes_out += relay.bytes_out - counted_out
            self.policy.release(relay.route)
            self.guard.relieved(2 * len(self.relays))
        if relay.target is not None:
            relay.target.release()
        self.check_stopped()

    def pause_accepting(self) -> None:
        """Out of file descriptors soon: stop uvloop's servers; the listening sockets keep queueing."""
        for listener in self.listeners.values():
            if listener.server is not None:
                listener.server.close()
                listener.server = None

    def resume_accepting(self) -> None:
        if self.stopping:
            return
        for listener in self.listeners.values():
            if listener.server is None:
                task = self.loop.create_task(self.serve(listener))
                self.resuming.add(task)
                task.add_done_callback(self._resumed)

    def _resumed(self, task: asyncio.Task[None]) -> None:
        self.resuming.discard(task)
        if not task.cancelled() and isinstance(task.exception(), OSError):
            self.guard.exhausted()  # e.g. EMFILE duplicating the socket: try again shortly

    def sweep_idle(self) -> None:
        """Close connections idle past their app's IdleTimeout; count the bytes the others moved since the last
        sweep (so the metrics of a long connection stay current without a write per read)."""
        now = time.monotonic()
        expired = []
        flushed = self.flushed
        for relay in self.relays:
            moved = relay.bytes_in + relay.bytes_out
            if moved != relay.seen:
                relay.seen = moved
                relay.idle_since = now
                if relay.route is not None:
                    counted_in, counted_out = flushed.get(relay, NOTHING_COUNTED)
                    stats = relay.route.stats
                    stats.bytes_in += relay.bytes_in - counted_in
                    stats.bytes_out += relay.bytes_out - counted_out
                    flushed[relay] = (relay.bytes_in, relay.bytes_out)
            elif relay.route is not None and now - relay.idle_since >= relay.route.app.idle_timeout:
                expired.append(relay)
        for relay in expired:
            relay.finish()
        self.loop.call_later(self.sweep_interval(), self.sweep_idle)

    def sweep_interval(self) -> float:
        shortest = min((a.app.idle_timeout for a in self.table.apps.values()), default=60.0)
        return min(max(shortest / 4, 0.05), BYTES_FLUSH_INTERVAL)

    # --- the supervisor channel ----------------------------------------------------------------------
    def send(self, message: dict[str, Any]) -> None:
        self.channel.send(message)

    async def handle_control(self) -> None:
        """Apply the supervisor's messages in order. A failure here leaves routes half-applied: log it once and
        exit to be respawned on the current snapshot, before acknowledging anything."""
        try:
            while True:
                message = await self.control.get()
                kind = message.get("t")
                if kind == "sockets":
                    for port in message["ports"]:
                        self.incoming[port] = socket.socket(fileno=self.channel.fds.popleft())
                elif kind == "snapshot":
                    await self.apply_snapshot(message)
                elif kind == "drain":
                    self.begin_stop()
                elif kind in ("certs", "challenge", "challenge_done"):
                    self.on_certificates(message)
        except Exception:
            log.exception("worker %d: the control path failed; exiting to be respawned", self.slot,
                          extra={"event": "worker_crashed", "worker": self.slot})
            self.exit_code = EXIT_CRASHED
            self.stopped.set()

    def on_certificates(self, message: dict[str, Any]) -> None:
        """ACME (control/acme.py): an issued certificate joins the snapshot's; a challenge certificate is served
        for ALPN acme-tls/1 from now on, which the supervisor learns before the challenge is answered."""
        kind = message["t"]
        if kind == "certs":
            issued = {str(k): CertPair(str(c), str(key)) for k, (c, key) in message["certs"].items()}
            self.snapshot = replace(self.snapshot, certs={**self.snapshot.certs, **issued})
            self.apply_tls(self.snapshot)
        elif kind == "challenge":
            if self.tls.add_challenge(str(message["name"]), CertPair(str(message["cert"]), str(message["key"]))):
                self.send({"t": "challenge_loaded", "name": message["name"]})  # else the order times out
        else:
            self.tls.routes.challenges.pop(str(message["name"]), None)

    async def apply_snapshot(self, message: dict[str, Any]) -> None:
        started = time.perf_counter()
        if failpoints.active("worker-apply"):
            raise RuntimeError("failpoint worker-apply: applying a snapshot fails on purpose")
        sockets, self.incoming = self.incoming, {}
        snapshot = Snapshot.from_wire(message["snapshot"])
        if snapshot.version <= self.snapshot.version:
            for sock in sockets.values():
                sock.close()
            self.send({"t": "ack", "version": self.snapshot.version})
            return
        old_table = self.table
        self.table = build_table(snapshot.version, snapshot.config, old_table)
        self.policy.bind(self.table, snapshot.cells)
        self.apply_tls(snapshot)
        if self.health is not None and not self.stopping:
            self.health.apply(self.table, snapshot.cells)
        # Routes of removed ports stay known (until a port comes back): in bpf mode a port leaves the kernel's
        # map only after every worker acknowledged, and back-to-back reloads may overlap that.
        self.retired.update((p, r) for p, r in old_table.by_port.items() if p not in self.table.by_port)
        for port in self.table.by_port:
            self.retired.pop(port, None)
        self.snapshot = snapshot
        removed = [] if self.options.steered else [
            self.listeners.pop(p) for p in list(self.listeners)
            if p not in self.table.by_port and p not in self.tls.routes.ports]
        if not self.stopping:
            for port, sock in sockets.items():
                listener = self.listeners[port] = Listener(port, sock)
                await self.serve(listener)
        else:
            for sock in sockets.values():
                sock.close()
        for listener in removed:
            # Connections queued on a removed port were made under the old config: serve them by it.
            self.drain(listener, self.factory_for(listener.port))
        self.guard.recount(2 * len(self.relays))
        setproctitle.setproctitle(f"skiff: worker {self.slot} (config v{snapshot.version})")
        self.send({"t": "ack", "version": snapshot.version, "ms": round((time.perf_counter() - started) * 1000, 2)})

    # --- lifecycle -----------------------------------------------------------------------------------
    async def run(self) -> int:
        self.loop.set_exception_handler(self.callback_errors.handle)
        self.channel.start()
        self.loop.add_signal_handler(signal.SIGTERM, self.on_sigterm)
        for listener in self.listeners.values():
            await self.serve(listener)
        control = self.loop.create_task(self.handle_control())
        self.guard.recount(0)
        if self.health is not None:
            self.health.apply(self.table, self.snapshot.cells)
        self.loop.call_later(self.sweep_interval(), self.sweep_idle)
        self.send({"t": "ready", "version": self.snapshot.version, "pid": os.getpid()})
        await self.stopped.wait()
        control.cancel()
        return self.exit_code

    def on_sigterm(self) -> None:
        """The first SIGTERM drains; only a repeated signal forces (channel EOF, a failed send and the
        supervisor's drain message all drain, however many of them come)."""
        self.sigterms += 1
        if self.sigterms > 1:
            log_event(log, logging.WARNING, "forced_stop", "SIGTERM again: closing all connections now",
                      worker=self.slot)
            self.force_stop()
            return
        self.begin_stop()

    def begin_stop(self) -> None:
        """Stop accepting (serving what is already queued), then wait for connections up to the grace period."""
        if self.stopping:
            return
        self.stopping = True
        if self.health is not None:
            self.health.stop()
        for listener in self.listeners.values():
            self.drain(listener, self.factory_for(listener.port))
        self.listeners.clear()
        self.tls.stop()
        self.loop.call_later(self.options.grace, self.force_stop)
        self.check_stopped()

    def force_stop(self) -> None:
        for relay in list(self.relays):
            relay.finish(reset=True)
        self.stopped.set()


def worker_main(
    slot: int, channel: socket.socket, sockets: dict[int, socket.socket], snapshot: Snapshot, options: WorkerOptions
) -> int:
    """The child's first acts after fork: plain signal handling, no capabilities, a title, then the event loop."""
    signal.set_wakeup_fd(-1)
    for signum in (signal.SIGHUP, signal.SIGUSR1, signal.SIGUSR2, signal.SIGINT):
        signal.signal(signum, signal.SIG_IGN)  # The supervisor decides; Ctrl-C reaches it too.
    for signum in (signal.SIGTERM, signal.SIGCHLD, signal.SIGQUIT):
        signal.signal(signum, signal.SIG_DFL)
    try:
        drop_all_capabilities()  # untrusted bytes arrive next: nothing privileged may be left to misuse
    except PrivilegeError as exc:
        log_event(log, logging.ERROR, "worker_boot_failed", f"worker {slot} cannot drop its capabilities: {exc}",
                  worker=slot, error=str(exc))
        return EXIT_BOOT_FAILED
    setproctitle.setproctitle(f"skiff: worker {slot} (config v{snapshot.version})")
    if failpoints.active("worker-boot"):
        log_event(log, logging.ERROR, "worker_boot_failed", "failpoint worker-boot: failing on purpose", worker=slot)
        return EXIT_BOOT_FAILED

    async def main() -> int:
        worker = Worker(slot, channel, sockets, snapshot, options)
        return await worker.run()

    try:
        return uvloop.run(main())
    except Exception as exc:  # A bug: say where, and let the supervisor respawn us.
        log.exception("worker %d crashed: %s", slot, exc, extra={"event": "worker_crashed", "worker": slot})
        return EXIT_CRASHED
