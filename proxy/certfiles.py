"""Certificates configured as files (an app's `Certificate` and `Key`): read, checked, hashed into the digest.

The supervisor reads them when it loads a config and sends the PEM bytes to the workers inside the snapshot, so
a worker never reads the disk and a replaced file is a new snapshot (its hash is part of the digest): a reload
(inotify on the config, SIGHUP) picks it up. A file that cannot be read or does not hold a certificate and its
matching private key is an operator's mistake, named by its field.
"""

from __future__ import annotations

import hashlib
from dataclasses import dataclass

from cryptography import x509
from cryptography.hazmat.primitives import serialization

from proxy.config import Config
from proxy.errors import ConfigError


@dataclass(frozen=True, slots=True)
class CertPair:
    """A certificate chain and its private key, PEM text."""

    cert: str
    key: str

    def not_after(self) -> float:
        return x509.load_pem_x509_certificate(self.cert.encode()).not_valid_after_utc.timestamp()


def read_pairs(config: Config) -> dict[str, CertPair]:
    """App name -> its configured certificate, for every app that names one; ConfigError names the field."""
    pairs: dict[str, CertPair] = {}
    for i, app in enumerate(config.apps):
        if app.certificate is None or app.key is None:
            continue
        cert = _read(f"Apps[{i}].Certificate", app.certificate)
        key = _read(f"Apps[{i}].Key", app.key)
        check_pair(f"Apps[{i}]", cert, key)
        pairs[app.name] = CertPair(cert, key)
    return pairs


def _read(path: str, file: str) -> str:
    try:
        with open(file, "rb") as f:
            data = f.read(1 << 20)
    except OSError as exc:
        raise ConfigError(path, f"cannot read {file}: {exc.strerror or exc}") from None
    try:
        return data.decode("ascii")
    except UnicodeDecodeError:
        raise ConfigError(path, f"{file} is not PEM text") from None


def check_pair(path: str, cert: str, key: str) -> None:
    try:
        chain = x509.load_pem_x509_certificates(cert.encode())
    except ValueError as exc:
        raise ConfigError(f"{path}.Certificate", f"no PEM certificate: {exc}") from None
    try:
        private = serialization.load_pem_private_key(key.encode(), password=None)
    except (ValueError, TypeError) as exc:
        raise ConfigError(f"{path}.Key", f"no unencrypted PEM private key: {exc}") from None
    public = serialization.PublicFormat.SubjectPublicKeyInfo
    der = serialization.Encoding.DER
    if chain[0].public_key().public_bytes(der, public) != private.public_key().public_bytes(der, public):
        raise ConfigError(f"{path}.Key", "does not match the Certificate's public key")


def hash_pairs(pairs: dict[str, CertPair]) -> str:
    digest = hashlib.sha256()
    for name in sorted(pairs):
        for text in (name, pairs[name].cert, pairs[name].key):
            digest.update(text.encode())
            digest.update(b"\0")
    return digest.hexdigest()
