"""The ACME helper process: orders certificates with TLS-ALPN-01, one order at a time, blocking (certbot's `acme`
library is synchronous; the supervisor's loop must never block, and it must not run threads since it forks).

Forked by the supervisor (control/acme.py), capabilities dropped, every inherited descriptor but its channel
closed. Messages (framed, proxy/framing.py), from the supervisor: `order` {app, names}, `loaded` {name} (every
worker serves the challenge certificate now); EOF: exit. To the supervisor: `challenge` {name, cert, key} (serve
this for ALPN acme-tls/1), `challenge_done` {name}, `issued` {app, cert, key}, `failed` {app, error}.

The account key and every issued certificate are kept under StateDir, mode 0600.
"""

from __future__ import annotations

import collections
import datetime
import hashlib
import logging
import os
import socket
from pathlib import Path
from typing import Any, cast

from acme import challenges, client, errors, messages
from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import NameOID
from josepy.jwa import ES256
from josepy.jwk import JWK, JWKEC

from control.acme import stored_paths
from proxy.framing import FrameDecoder, encode
from proxy.tlsconfig import Acme

log = logging.getLogger("acme")

ACME_IDENTIFIER = x509.ObjectIdentifier("1.3.6.1.5.5.7.1.31")  # RFC 8737 §3, critical
LOADED_WAIT = 30.0  # seconds the workers have to load a challenge certificate
ORDER_DEADLINE = 90.0


@challenges.ChallengeResponse.register
class TLSALPN01Response(challenges.KeyAuthorizationChallengeResponse):
    """The response to tls-alpn-01 (recent `acme` releases dropped the class; RFC 8737)."""

    typ = "tls-alpn-01"


@challenges.Challenge.register
class TLSALPN01(challenges.KeyAuthorizationChallenge):
    response_cls = TLSALPN01Response
    typ = response_cls.typ

    def validation(self, account_key: JWK, **unused: Any) -> str:
        return str(self.key_authorization(account_key))


def challenge_certificate(name: str, key_authorization: str) -> tuple[str, str]:
    """The self-signed certificate a TLS-ALPN-01 validation must see: the name as its only SAN and the
    SHA-256 of the key authorization in the critical acmeIdentifier extension (an ASN.1 OCTET STRING)."""
    key = ec.generate_private_key(ec.SECP256R1())
    digest = hashlib.sha256(key_authorization.encode()).digest()
    now = datetime.datetime.now(datetime.UTC)
    subject = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, name)])
    cert = (
        x509.CertificateBuilder().subject_name(subject).issuer_name(subject).public_key(key.public_key())
        .serial_number(x509.random_serial_number()).not_valid_before(now - datetime.timedelta(minutes=5))
        .not_valid_after(now + datetime.timedelta(days=1))
        .add_extension(x509.SubjectAlternativeName([x509.DNSName(name)]), critical=False)
        .add_extension(x509.UnrecognizedExtension(ACME_IDENTIFIER, b"\x04\x20" + digest), critical=True)
        .sign(key, hashes.SHA256())
    )
    return _pem_cert(cert), _pem_key(key)


def _pem_cert(cert: x509.Certificate) -> str:
    return cert.public_bytes(serialization.Encoding.PEM).decode()


def _pem_key(key: ec.EllipticCurvePrivateKey) -> str:
    return key.private_bytes(serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8,
                             serialization.NoEncryption()).decode()


def write_private(path: Path, data: str) -> None:
    """Atomically, mode 0600 from the start."""
    path.parent.mkdir(mode=0o700, parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.name}.tmp")
    fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    with os.fdopen(fd, "w") as f:
        f.write(data)
        f.flush()
        os.fsync(f.fileno())
    os.replace(tmp, path)


class Channel:
    """The helper's end: blocking reads with a timeout; orders that arrive mid-order wait their turn."""

    def __init__(self, sock: socket.socket) -> None:
        self.sock = sock
        self.decoder = FrameDecoder()
        self.queued: collections.deque[dict[str, Any]] = collections.deque()

    def send(self, message: dict[str, Any]) -> None:
        self.sock.sendall(encode(message))

    def receive(self, timeout: float | None) -> dict[str, Any] | None:
        """The next message, or None at EOF; TimeoutError after `timeout` seconds."""
        while not self.queued:
            self.sock.settimeout(timeout)
            data = self.sock.recv(1 << 16)
            if not data:
                return None
            self.queued.extend(self.decoder.feed(data))
        return self.queued.popleft()

    def wait_loaded(self, name: str) -> None:
        deadline = datetime.datetime.now(datetime.UTC) + datetime.timedelta(seconds=LOADED_WAIT)
        kept: list[dict[str, Any]] = []
        try:
            while True:
                left = (deadline - datetime.datetime.now(datetime.UTC)).total_seconds()
                if left <= 0:
                    raise TimeoutError(f"the workers did not load the challenge for {name} in {LOADED_WAIT:g} s")
                message = self.receive(left)
                if message is None:
                    raise EOFError("the supervisor is gone")
                if message.get("t") == "loaded" and message.get("name") == name:
                    return
                kept.append(message)
        finally:
            self.queued.extendleft(reversed(kept))


class Orderer:
    def __init__(self, settings: Acme, state_dir: Path, channel: Channel) -> None:
        self.settings, self.state_dir, self.channel = settings, state_dir, channel
        self.acme: client.ClientV2 | None = None

    def account_key(self) -> JWKEC:
        path = self.state_dir / "account.key"
        if path.exists():
            key = serialization.load_pem_private_key(path.read_bytes(), password=None)
        else:
            key = ec.generate_private_key(ec.SECP256R1())
            write_private(path, _pem_key(key))
        assert isinstance(key, ec.EllipticCurvePrivateKey)
        return JWKEC(key=key)

    def connect(self) -> client.ClientV2:
        if self.acme is not None:
            return self.acme
        # requests takes a CA bundle's path where the annotation says bool
        verify = cast(bool, self.settings.ca_file or True)
        net = client.ClientNetwork(self.account_key(), alg=ES256, verify_ssl=verify, user_agent="skiff")
        directory = client.ClientV2.get_directory(self.settings.directory, net)
        acme = client.ClientV2(directory, net)
        registration = messages.NewRegistration.from_data(email=self.settings.email,
                                                          terms_of_service_agreed=True)
        try:
            acme.new_account(registration)
        except errors.ConflictError as exc:  # the key already has an account: use it
            net.account = messages.RegistrationResource(body=messages.Registration(), uri=exc.location)
        self.acme = acme
        return acme

    def order(self, app: str, names: list[str]) -> None:
        acme = self.connect()
        key = ec.generate_private_key(ec.SECP256R1())
        csr = (x509.CertificateSigningRequestBuilder()
               .subject_name(x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, names[0])]))
               .add_extension(x509.SubjectAlternativeName([x509.DNSName(n) for n in names]), critical=False)
               .sign(key, hashes.SHA256()))
        order = acme.new_order(csr.public_bytes(serialization.Encoding.PEM))
        shown: list[str] = []
        try:
            for authz in order.authorizations:
                if authz.body.status == messages.STATUS_VALID:
                    continue
                name = authz.body.identifier.value
                challenge = next((c for c in authz.body.challenges if isinstance(c.chall, TLSALPN01)), None)
                if challenge is None:
                    raise RuntimeError(f"the ACME server offers no tls-alpn-01 challenge for {name}")
                response, validation = challenge.response_and_validation(acme.net.key)
                cert, challenge_key = challenge_certificate(name, validation)
                self.channel.send({"t": "challenge", "name": name, "cert": cert, "key": challenge_key})
                shown.append(name)
                self.channel.wait_loaded(name)
                acme.answer_challenge(challenge, response)
            deadline = datetime.datetime.now() + datetime.timedelta(seconds=ORDER_DEADLINE)
            order = acme.poll_and_finalize(order, deadline)
        finally:
            for name in shown:
                self.channel.send({"t": "challenge_done", "name": name})
        cert_path, key_path = stored_paths(self.state_dir, app)
        write_private(key_path, _pem_key(key))
        write_private(cert_path, order.fullchain_pem)
        self.channel.send({"t": "issued", "app": app, "cert": order.fullchain_pem, "key": _pem_key(key)})


def run_helper(sock: socket.socket, settings: Acme, state_dir: Path) -> int:
    channel = Channel(sock)
    orderer = Orderer(settings, state_dir, channel)
    while True:
        message = channel.receive(None)
        if message is None:
            return 0
        if message.get("t") != "order":
            continue
        app = str(message["app"])
        try:
            orderer.order(app, [str(n) for n in message["names"]])
        except EOFError:
            return 0
        except Exception as exc:  # any failure of this order: reported, retried later by the supervisor
            orderer.acme = None if isinstance(exc, OSError | errors.Error) else orderer.acme
            detail = " ".join(str(exc).split())[:300] or type(exc).__name__
            log.debug("order for %s failed", app, exc_info=True)
            channel.send({"t": "failed", "app": app, "error": f"{type(exc).__name__}: {detail}"})
