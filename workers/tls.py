"""TLS ports in a worker: accept, read the ClientHello without consuming it, route by SNI, then relay.

A TLS port's listening socket is served here, not by uvloop's server: each accepted socket is watched with
`add_reader` and read with MSG_PEEK until `proxy.clienthello.read_hello` has the whole hello. A partial hello
does not spin the loop: SO_RCVLOWAT makes the socket readable only once the bytes the reader asked for are
there (or the peer closed), and a timer bounds the whole wait. Then, by the app the server name belongs to:

- passthrough: the socket goes to the plain relay (`ClientSide`) untouched; the target reads the same hello;
- terminate: `loop.connect_accepted_socket(..., ssl=ctx)` runs the handshake on the same bytes (uvloop cannot
  be handed bytes already read, hence the peek) and the relay's client side is the TLS transport;
- the ACME challenge (ALPN `acme-tls/1`): the handshake is answered with the name's challenge certificate and
  the connection closed (control/acme_helper.py asked for it).

Every failure closes that connection and is counted by reason (proxy.counters.TLS_REASONS).
"""

from __future__ import annotations

import asyncio
import errno
import logging
import os
import socket
import ssl
import time
from collections.abc import Callable, Mapping
from typing import TYPE_CHECKING, Any

from proxy.certfiles import CertPair
from proxy.clienthello import MAX_PEEK, read_hello, wildcard_of
from proxy.config import Config
from proxy.counters import AppStats
from workers.listeners import DRAIN_LIMIT
from workers.relay import ClientSide, RelayOwner

if TYPE_CHECKING:
    from workers.listeners import Listener
    from workers.routes import AppRoute

log = logging.getLogger("worker")

ACME_ALPN = b"acme-tls/1"
ACCEPTS_PER_WAKE = 64  # bounds one wake-up of a busy listener; the rest are accepted on the next
SO_RCVLOWAT = socket.SO_RCVLOWAT


def context_for(pair: CertPair, alpn: list[str] | None = None) -> ssl.SSLContext:
    """A server context for one certificate: TLS 1.2 and 1.3, loaded from memory (a memfd, never the disk)."""
    context = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
    context.minimum_version = ssl.TLSVersion.TLSv1_2
    # No session tickets: each worker's context has its own ticket key, so a ticket would rarely resume on the
    # worker the next connection lands on, and issuing two per TLS 1.3 handshake costs CPU on every handshake.
    context.options |= ssl.OP_NO_COMPRESSION | ssl.OP_CIPHER_SERVER_PREFERENCE | ssl.OP_NO_TICKET
    context.num_tickets = 0
    if alpn:
        context.set_alpn_protocols(alpn)
    fd = os.memfd_create("skiff-cert", os.MFD_CLOEXEC)
    try:
        os.write(fd, (pair.cert + "\n" + pair.key).encode())
        context.load_cert_chain(f"/proc/self/fd/{fd}")
    finally:
        os.close(fd)
    return context


class TlsRoutes:
    """A snapshot's TLS routing: server name -> app route, app -> its context (when it has a certificate)."""

    def __init__(self, config: Config, by_name: Mapping[str, AppRoute], certs: Mapping[str, CertPair],
                 previous: TlsRoutes | None) -> None:
        self.ports = config.tls_ports
        self.routes: dict[str, AppRoute] = {}
        self.pairs = dict(certs)
        self.contexts: dict[str, ssl.SSLContext] = {}
        self.peek_timeout = 0.0
        old = previous.contexts if previous is not None else {}
        for app in config.apps:
            if not app.hostnames:
                continue
            route = by_name[app.name]
            for name in app.hostnames:
                self.routes[name] = route
            self.peek_timeout = max(self.peek_timeout, app.handshake_timeout)
        for name, pair in self.pairs.items():
            if previous is not None and previous.pairs.get(name) == pair:
                if name in old:
                    self.contexts[name] = old[name]
                continue
            try:
                self.contexts[name] = context_for(pair)
            except (ssl.SSLError, OSError, ValueError) as exc:
                # Checked by the supervisor already; should OpenSSL still refuse it, that app's handshakes fail
                # (counted as no_certificate) and the worker serves every other app.
                log.error("cannot load the certificate of app %s: %s", name, exc,
                          extra={"event": "certificate_failed", "app": name})
        self.challenges: dict[str, ssl.SSLContext] = {}  # hostname -> its ACME challenge context

    def route(self, server_name: str | None) -> AppRoute | None:
        if server_name is None:
            return None
        route = self.routes.get(server_name)
        if route is None:
            wildcard = wildcard_of(server_name)
            route = self.routes.get(wildcard) if wildcard is not None else None
        return route


class TlsServer:
    """A TLS port's accept loop on the listening socket itself (the worker's descriptor, not a duplicate)."""

    def __init__(self, acceptor: TlsAcceptor, sock: socket.socket) -> None:
        self.acceptor = acceptor
        self.sock = sock
        self.fd = sock.fileno()
        acceptor.loop.add_reader(self.fd, self.on_readable)

    def on_readable(self) -> None:
        accept_some(self.acceptor, self.sock, ACCEPTS_PER_WAKE)

    def close(self) -> None:
        if self.fd >= 0:
            self.acceptor.loop.remove_reader(self.fd)
            self.fd = -1


def accept_some(acceptor: TlsAcceptor, sock: socket.socket, limit: int) -> None:
    for _ in range(limit):
        try:
            conn, _ = sock.accept()
        except (BlockingIOError, InterruptedError):
            return
        except OSError as exc:
            if exc.errno in (errno.EMFILE, errno.ENFILE, errno.ENOBUFS, errno.ENOMEM):
                acceptor.exhausted()
            return
        acceptor.adopt(conn)


class Hello:
    """One accepted connection while its ClientHello arrives."""

    __slots__ = ("acceptor", "conn", "fd", "lowat", "seen", "started", "timer", "watching")

    def __init__(self, acceptor: TlsAcceptor, conn: socket.socket) -> None:
        self.acceptor = acceptor
        self.conn = conn
        self.fd = conn.fileno()
        self.seen = -1  # bytes peeked last time: no progress on a readable socket means the peer closed
        self.lowat = 1
        self.started = time.monotonic()
        self.watching = False
        self.timer: asyncio.TimerHandle | None = None

    def watch(self) -> None:
        """Wait for more of the hello (the first look, at accept, usually finds all of it)."""
        if not self.watching:
            self.watching = True
            acceptor = self.acceptor
            acceptor.hellos.add(self)
            acceptor.loop.add_reader(self.fd, self.on_readable)
            self.timer = acceptor.loop.call_later(acceptor.routes.peek_timeout or 10.0, self.expire)

    def on_readable(self) -> None:
        try:
            data = self.conn.recv(MAX_PEEK, socket.MSG_PEEK)
        except (BlockingIOError, InterruptedError):
            self.watch()
            return
        except OSError:
            self.fail(None, "protocol")  # reset by the peer mid-hello
            return
        if not data:
            self.fail(None, "not_tls")  # closed before saying anything
            return
        hello = read_hello(data)
        if hello.error is not None:
            self.fail(None, hello.error)
            return
        if not hello.done:
            if len(data) == self.seen:
                self.fail(None, "protocol")  # readable without progress: the peer closed mid-hello
                return
            self.seen = len(data)
            if self.wait_for(hello.wanted):
                self.watch()
            return
        self.stop_watching()
        self.acceptor.routed(self.conn, hello.server_name, hello.alpn, self.started)

    def wait_for(self, total: int) -> bool:
        """Readable again only when `total` bytes are queued (or the peer closed): no wake-up per segment."""
        if total != self.lowat:
            try:
                self.conn.setsockopt(socket.SOL_SOCKET, SO_RCVLOWAT, total)
                self.lowat = total
            except OSError:
                self.fail(None, "protocol")
                return False
        return True

    def stop_watching(self) -> None:
        if self.watching:
            self.watching = False
            self.acceptor.loop.remove_reader(self.fd)
            self.acceptor.hellos.discard(self)
        if self.timer is not None:
            self.timer.cancel()
            self.timer = None
        if self.lowat != 1:
            try:
                # Back to the default before uvloop reads: it must see every byte as it comes.
                self.conn.setsockopt(socket.SOL_SOCKET, SO_RCVLOWAT, 1)
            except OSError:
                pass

    def expire(self) -> None:
        self.timer = None
        self.fail(None, "timeout")

    def fail(self, route: AppRoute | None, reason: str) -> None:
        self.stop_watching()
        self.acceptor.failed(route, reason)
        self.conn.close()


class TlsAcceptor:
    """The worker's TLS ports: their servers, the connections whose hello is still arriving, and handshakes."""

    def __init__(self, owner: RelayOwner, stats_for: Callable[[AppRoute | None], AppStats],
                 exhausted: Callable[[], None]) -> None:
        self.owner = owner
        self.loop = owner.loop
        self.stats_for = stats_for
        self.exhausted = exhausted
        self.routes = TlsRoutes(Config(()), {}, {}, None)
        self.hellos: set[Hello] = set()
        self.handshakes: set[asyncio.Task[Any]] = set()

    def apply(self, config: Config, by_name: Mapping[str, AppRoute], certs: Mapping[str, CertPair]) -> None:
        challenges = self.routes.challenges
        self.routes = TlsRoutes(config, by_name, certs, self.routes)
        self.routes.challenges = challenges

    def add_challenge(self, name: str, pair: CertPair) -> bool:
        try:
            self.routes.challenges[name] = context_for(pair, [ACME_ALPN.decode()])
        except (ssl.SSLError, OSError, ValueError) as exc:
            log.error("cannot load the ACME challenge certificate for %s: %s", name, exc,
                      extra={"event": "certificate_failed"})
            return False
        return True

    def serve(self, listener: Listener) -> None:
        listener.server = TlsServer(self, listener.sock)

    def drain(self, listener: Listener) -> None:
        """Stop serving the port, take what the kernel queued (each is read and routed as usual), then close."""
        if listener.server is not None:
            listener.server.close()
            listener.server = None
        accept_some(self, listener.sock, DRAIN_LIMIT)
        listener.sock.close()

    def adopt(self, conn: socket.socket) -> None:
        conn.setblocking(False)  # (uvloop's transport sets TCP_NODELAY itself)
        Hello(self, conn).on_readable()

    def failed(self, route: AppRoute | None, reason: str) -> None:
        self.stats_for(route).tls_failed(reason)

    def routed(self, conn: socket.socket, server_name: str | None, alpn: tuple[bytes, ...], started: float) -> None:
        routes = self.routes
        if ACME_ALPN in alpn and server_name is not None:
            challenge = routes.challenges.get(server_name)
            if challenge is None:
                self.reject(conn, None, "no_certificate")
                return
            self.handshake(conn, None, challenge, 10.0, started)
            return
        route = routes.route(server_name)
        if route is None:
            self.reject(conn, None, "unknown_sni")
            return
        app = route.app
        if not app.terminates:
            self.passthrough(conn, route)
            return
        context = routes.contexts.get(app.name)
        if context is None:
            self.reject(conn, route, "no_certificate")
            return
        remaining = max(app.handshake_timeout - (time.monotonic() - started), 0.001)
        self.handshake(conn, route, context, remaining, started)

    def reject(self, conn: socket.socket, route: AppRoute | None, reason: str) -> None:
        self.failed(route, reason)
        conn.close()

    def handshake(self, conn: socket.socket, route: AppRoute | None, context: ssl.SSLContext, timeout: float,
                  started: float) -> None:
        task = self.loop.create_task(self.start_tls(conn, route, context, timeout, started))
        self.handshakes.add(task)
        task.add_done_callback(self.handshakes.discard)

    async def start_tls(self, conn: socket.socket, route: AppRoute | None, context: ssl.SSLContext,
                        timeout: float, started: float) -> None:
        if route is None:  # the ACME challenge: the handshake is the whole answer
            try:
                transport, _ = await self.loop.connect_accepted_socket(
                    asyncio.Protocol, conn, ssl=context, ssl_handshake_timeout=timeout)
            except (OSError, ssl.SSLError, asyncio.CancelledError):
                return
            transport.close()
            return
        try:
            await self.loop.connect_accepted_socket(lambda: TlsClientSide(self.owner, route), conn, ssl=context,
                                                    ssl_handshake_timeout=timeout)
        except ConnectionAbortedError:
            self.failed(route, "timeout")  # uvloop's handshake timer
            return
        except (OSError, ssl.SSLError, EOFError):
            self.failed(route, "protocol")
            return
        self.stats_for(route).observe_handshake(time.monotonic() - started)

    def passthrough(self, conn: socket.socket, route: AppRoute) -> None:
        """The plain relay on the untouched socket (the hello is still queued in it, for the target)."""
        task = self.loop.create_task(self.loop.connect_accepted_socket(lambda: ClientSide(self.owner, route), conn))
        self.handshakes.add(task)
        task.add_done_callback(self._passed)

    def _passed(self, task: asyncio.Task[Any]) -> None:
        self.handshakes.discard(task)
        if not task.cancelled():
            task.exception()  # the client left before its transport existed: nothing was counted yet

    def stop(self) -> None:
        """The worker is stopping: hellos still arriving are closed (their handshakes finish on their own)."""
        for hello in list(self.hellos):
            hello.stop_watching()
            hello.conn.close()


class TlsClientSide(ClientSide):
    """The relay's client side when it is a TLS transport: TLS has no half-close, so either end's EOF ends
    the connection (after what is buffered is flushed and close_notify is sent)."""

    __slots__ = ()

    def eof_received(self) -> bool:
        self.client_eof_received()
        return False  # the TLS layer then shuts down: connection_lost follows

    def upstream_eof_received(self) -> None:
        self.upstream_eof = True
        self.stop_replay()
        if not self.done:
            self.finish()
