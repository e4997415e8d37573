"""A small synchronous client for etcd's v3 JSON gateway (http.client): range, put, delete, txn, leases, watch.

Used where blocking is fine: the etcd helper process (which never forks), `supervisor.py --check` and the
first read before the supervisor starts, and skiffctl. Keys and values are base64 on the wire; numbers are
strings. Every failure is an `EtcdError` (unreachable, or etcd said no) with one readable line.
"""

from __future__ import annotations

import base64
import http.client
import socket
from collections.abc import Iterator
from dataclasses import dataclass
from typing import Any

import orjson

from proxy.cluster import Document

TIMEOUT = 2.0


class EtcdError(Exception):
    """etcd could not be reached or refused the request."""


class Compacted(EtcdError):
    """A watch asked for history that compaction removed: re-read the whole prefix."""


@dataclass(frozen=True, slots=True)
class Listing:
    cluster_id: str
    revision: int
    documents: dict[str, Document]


@dataclass(frozen=True, slots=True)
class Event:
    key: str
    document: Document | None  # None: the key was deleted
    revision: int


def b64(data: str | bytes) -> str:
    return base64.b64encode(data.encode() if isinstance(data, str) else data).decode()


def unb64(text: str) -> bytes:
    return base64.b64decode(text)


def prefix_end(prefix: str) -> str:
    """The range_end that makes [prefix, end) every key starting with prefix."""
    raw = prefix.encode()
    return b64(raw[:-1] + bytes([raw[-1] + 1]))


def _keepalive(sock: socket.socket) -> None:
    # A watch can be silent for hours: let the kernel notice a peer that vanished without a FIN.
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_KEEPALIVE, 1)
    for option, value in (("TCP_KEEPIDLE", 5), ("TCP_KEEPINTVL", 2), ("TCP_KEEPCNT", 3)):
        if hasattr(socket, option):
            sock.setsockopt(socket.IPPROTO_TCP, getattr(socket, option), value)


class Endpoint:
    """One etcd member's gateway; a connection is opened per call (cheap on loopback, never half-used)."""

    def __init__(self, host: str, port: int, timeout: float = TIMEOUT) -> None:
        self.host, self.port, self.timeout = host, port, timeout

    def __str__(self) -> str:
        return f"[{self.host}]:{self.port}" if ":" in self.host else f"{self.host}:{self.port}"

    def call(self, path: str, body: dict[str, Any]) -> dict[str, Any]:
        conn = http.client.HTTPConnection(self.host, self.port, timeout=self.timeout)
        try:
            conn.request("POST", path, orjson.dumps(body), {"Content-Type": "application/json"})
            response = conn.getresponse()
            data = response.read()
        except (OSError, http.client.HTTPException) as exc:
            raise EtcdError(f"{self}: {exc.__class__.__name__}: {exc}") from None
        finally:
            conn.close()
        try:
            answer: dict[str, Any] = orjson.loads(data)
        except orjson.JSONDecodeError:
            raise EtcdError(f"{self}{path}: HTTP {response.status}: {data[:200]!r}") from None
        if response.status != 200 or "error" in answer:
            raise EtcdError(f"{self}{path}: {answer.get('message') or answer.get('error') or response.status}")
        return answer

    def cluster_id(self) -> str:
        return str(self.call("/v3/maintenance/status", {})["header"]["cluster_id"])

    def list_prefix(self, prefix: str) -> Listing:
        answer = self.call("/v3/kv/range", {"key": b64(prefix), "range_end": prefix_end(prefix)})
        header = answer["header"]
        documents = {unb64(kv["key"]).decode(errors="replace"):
                     Document(unb64(kv.get("value", "")), int(kv["mod_revision"])) for kv in answer.get("kvs", [])}
        return Listing(str(header["cluster_id"]), int(header["revision"]), documents)

    def get(self, key: str) -> Document | None:
        kvs = self.call("/v3/kv/range", {"key": b64(key)}).get("kvs", [])
        return Document(unb64(kvs[0].get("value", "")), int(kvs[0]["mod_revision"])) if kvs else None

    def put(self, key: str, value: bytes, lease: str | None = None) -> int:
        body: dict[str, Any] = {"key": b64(key), "value": b64(value)}
        if lease is not None:
            body["lease"] = lease
        return int(self.call("/v3/kv/put", body)["header"]["revision"])

    def delete(self, key: str) -> tuple[int, int]:
        """(revision, keys deleted)."""
        answer = self.call("/v3/kv/deleterange", {"key": b64(key)})
        return int(answer["header"]["revision"]), int(answer.get("deleted", 0))

    def put_all(self, ops: list[tuple[str, bytes]]) -> int:
        """Puts in one transaction (all or nothing); the revision it committed at."""
        body = {"success": [{"request_put": {"key": b64(k), "value": b64(v)}} for k, v in ops]}
        return int(self.call("/v3/kv/txn", body)["header"]["revision"])

    def compact(self, revision: int) -> None:
        self.call("/v3/kv/compaction", {"revision": str(revision), "physical": True})

    def grant(self, ttl: int) -> str:
        return str(self.call("/v3/lease/grant", {"TTL": str(ttl)})["ID"])

    def keepalive(self, lease: str) -> bool:
        """False when the lease is gone (expired or revoked): grant a new one."""
        answer = self.call("/v3/lease/keepalive", {"ID": lease})
        return int(answer.get("result", {}).get("TTL", 0)) > 0

    def revoke(self, lease: str) -> None:
        self.call("/v3/lease/revoke", {"ID": lease})

    def watch(self, prefix: str, start_revision: int) -> Iterator[tuple[int, list[Event]]]:
        """(header revision, events) per message from `start_revision` on, until the stream ends (EtcdError)
        or history is gone (Compacted). Blocks; the first message (created) comes with no events."""
        conn = http.client.HTTPConnection(self.host, self.port, timeout=self.timeout)
        try:
            body = {"create_request": {"key": b64(prefix), "range_end": prefix_end(prefix),
                                       "start_revision": str(start_revision)}}
            conn.request("POST", "/v3/watch", orjson.dumps(body), {"Content-Type": "application/json"})
            response = conn.getresponse()
            if response.status != 200:
                raise EtcdError(f"{self}/v3/watch: HTTP {response.status}")
            assert conn.sock is not None
            _keepalive(conn.sock)
            conn.sock.settimeout(None)  # silence is normal; keepalive notices a dead peer
            while True:
                line = response.readline()
                if not line:
                    raise EtcdError(f"{self}: the watch stream ended")
                if not line.strip():
                    continue
                message = orjson.loads(line)
                if "error" in message:
                    raise EtcdError(f"{self}: watch: {message['error'].get('message', message['error'])}")
                result = message.get("result", {})
                if int(result.get("compact_revision", 0)):
                    raise Compacted(f"history before revision {result['compact_revision']} was compacted")
                if result.get("canceled"):
                    raise EtcdError(f"{self}: the watch was cancelled: {result.get('cancel_reason', '')}")
                events = [Event(unb64(e["kv"]["key"]).decode(errors="replace"),
                                None if e.get("type") == "DELETE" else
                                Document(unb64(e["kv"].get("value", "")), int(e["kv"]["mod_revision"])),
                                int(e["kv"].get("mod_revision", 0)))
                          for e in result.get("events", [])]
                yield int(result.get("header", {}).get("revision", 0)), events
        except (OSError, http.client.HTTPException, orjson.JSONDecodeError) as exc:
            raise EtcdError(f"{self}: {exc.__class__.__name__}: {exc}") from None
        finally:
            conn.close()


class Cluster:
    """The endpoints of one URL, tried in order: a call that fails moves on to the next member."""

    def __init__(self, endpoints: tuple[tuple[str, int], ...], timeout: float = TIMEOUT) -> None:
        self.endpoints = [Endpoint(host, port, timeout) for host, port in endpoints]
        self.current = 0

    def call(self, what: str, *args: Any) -> Any:
        errors = []
        for i in range(len(self.endpoints)):
            endpoint = self.endpoints[(self.current + i) % len(self.endpoints)]
            try:
                result = getattr(endpoint, what)(*args)
            except Compacted:
                raise
            except EtcdError as exc:
                errors.append(str(exc))
                continue
            self.current = (self.current + i) % len(self.endpoints)
            return result
        raise EtcdError("no etcd endpoint answered: " + "; ".join(errors))
