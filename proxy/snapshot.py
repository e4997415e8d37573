"""Snapshots: a validated config with the version it serves under and a hash of its content."""

from __future__ import annotations

import hashlib
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any

import orjson

from proxy.config import Config, parse_document


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

    def to_wire(self) -> dict[str, Any]:
        return {"version": self.version, "digest": self.digest, "config": self.config.to_document(),
                "cells": dict(self.cells)}

    @classmethod
    def from_wire(cls, message: dict[str, Any]) -> Snapshot:
        return cls(int(message["version"]), str(message["digest"]), parse_document(message["config"]),
                   dict(message.get("cells", {})))


def digest_of(config: Config) -> str:
    """A hash of the normalised content, so whitespace or key order alone never makes a new version."""
    canonical = orjson.dumps(config.to_document(), option=orjson.OPT_SORT_KEYS)
    return hashlib.sha256(canonical).hexdigest()[:16]


def first_snapshot(config: Config) -> Snapshot:
    return Snapshot(1, digest_of(config), config)


def next_snapshot(current: Snapshot, config: Config) -> Snapshot | None:
    """The snapshot that replaces `current`, or None when the content is unchanged."""
    digest = digest_of(config)
    if digest == current.digest:
        return None
    return Snapshot(current.version + 1, digest, config)
