"""Snapshots: a validated config with the version it serves under and a hash of its content.

The content includes the certificate files the config names (proxy/certfiles.py): their PEM text travels in the
snapshot and their hash is part of the digest, so replacing a file makes a new version on the next reload.
"""

from __future__ import annotations

import hashlib
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any

import orjson

from proxy.certfiles import CertPair, hash_pairs, read_pairs
from proxy.config import Config, parse_document
from proxy.errors import ConfigError


@dataclass(frozen=True, slots=True)
class Snapshot:
    """What every process serves. Versions only go up; the digest tells identical content apart."""

    version: int
    digest: str
    config: Config
    # App and (app, target) key -> counter cell in the shared table (proxy/counters.py); assigned by the
    # supervisor, not part of the content, so not part of the digest.
    cells: Mapping[str, int] = field(default_factory=dict)
    # The config source's own version of this content (the etcd revision; 0 for a file), recorded beside
    # skiff's version, never instead of it: a new or restored etcd cluster must not freeze a node.
    revision: int = 0
    certs: Mapping[str, CertPair] = field(default_factory=dict)  # app name -> its configured certificate

    def to_wire(self) -> dict[str, Any]:
        return {"version": self.version, "digest": self.digest, "config": self.config.to_document(),
                "cells": dict(self.cells), "certs": {k: [p.cert, p.key] for k, p in self.certs.items()}}

    @classmethod
    def from_wire(cls, message: dict[str, Any]) -> Snapshot:
        certs = {str(k): CertPair(str(c), str(k_)) for k, (c, k_) in message.get("certs", {}).items()}
        return cls(int(message["version"]), str(message["digest"]), parse_document(message["config"]),
                   dict(message.get("cells", {})), certs=certs)


def digest_of(config: Config, certs: Mapping[str, CertPair] | None = None) -> str:
    """A hash of the normalised content, so whitespace or key order alone never makes a new version; the
    certificate files' content is part of it (read now when not given; unreadable files hash as nothing)."""
    if certs is None:
        try:
            certs = read_pairs(config)
        except ConfigError:
            certs = {}
    canonical = orjson.dumps(config.to_document(), option=orjson.OPT_SORT_KEYS)
    if certs:
        canonical += hash_pairs(dict(certs)).encode()
    return hashlib.sha256(canonical).hexdigest()[:16]


def first_snapshot(config: Config) -> Snapshot:
    certs = read_pairs(config)
    return Snapshot(1, digest_of(config, certs), config, certs=certs)


def next_snapshot(current: Snapshot, config: Config) -> Snapshot | None:
    """The snapshot that replaces `current`, or None when the content is unchanged. ConfigError when a
    certificate file named by the config cannot be used."""
    certs = read_pairs(config)
    digest = digest_of(config, certs)
    if digest == current.digest:
        return None
    return Snapshot(current.version + 1, digest, config, certs=certs)
