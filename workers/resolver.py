"""Asynchronous name resolution with a TTL cache: never a lookup per connection.

IP literals never reach the resolver. A fresh cache entry answers at once; a stale one still answers while a
single background lookup refreshes it; a failure is cached for a short while so a dead name costs one lookup.
"""

from __future__ import annotations

import asyncio
import socket
import time
from dataclasses import dataclass

POSITIVE_TTL = 30.0
NEGATIVE_TTL = 5.0


class ResolveError(Exception):
    pass


@dataclass(slots=True)
class _Entry:
    addresses: list[str]
    error: str | None
    expires: float
    refreshing: asyncio.Future[None] | None = None


class Resolver:
    def __init__(self, positive_ttl: float = POSITIVE_TTL, negative_ttl: float = NEGATIVE_TTL) -> None:
        self._positive_ttl = positive_ttl
        self._negative_ttl = negative_ttl
        self._cache: dict[str, _Entry] = {}
        self._inflight: dict[str, asyncio.Future[_Entry]] = {}

    async def resolve(self, host: str) -> str:
        """One address for `host` (the first the system resolver gives), or ResolveError."""
        return (await self.resolve_all(host))[0]

    async def resolve_all(self, host: str) -> list[str]:
        """Every address of `host`, in the system resolver's order (never empty), or ResolveError."""
        entry = self._cache.get(host)
        now = time.monotonic()
        if entry is None:
            entry = await self._lookup(host)
        elif entry.expires <= now and entry.refreshing is None:
            if entry.error is not None:
                entry = await self._lookup(host)
            else:
                # Serve the stale answer now; refresh in the background.
                entry.refreshing = asyncio.ensure_future(self._refresh(host))
        if entry.error is not None:
            raise ResolveError(entry.error)
        return entry.addresses

    async def _refresh(self, host: str) -> None:
        await self._lookup(host)

    async def _lookup(self, host: str) -> _Entry:
        """One lookup per name at a time: concurrent callers share it."""
        inflight = self._inflight.get(host)
        if inflight is not None:
            return await asyncio.shield(inflight)
        future = asyncio.ensure_future(self._query(host))
        self._inflight[host] = future
        try:
            return await asyncio.shield(future)
        finally:
            if future.done():
                self._inflight.pop(host, None)
            else:
                future.add_done_callback(lambda _: self._inflight.pop(host, None))

    async def _query(self, host: str) -> _Entry:
        # RFC 6761: names under .invalid never resolve; answer locally instead of asking a server.
        if host.rstrip(".").lower().endswith(".invalid"):
            entry = _Entry([], f"{host}: name does not resolve (.invalid)", time.monotonic() + self._negative_ttl)
            self._cache[host] = entry
            return entry
        loop = asyncio.get_running_loop()
        try:
            infos = await loop.getaddrinfo(host, None, type=socket.SOCK_STREAM, proto=socket.IPPROTO_TCP)
            addresses = list(dict.fromkeys(str(info[4][0]) for info in infos))  # once each, in order
            entry = _Entry(addresses, None if addresses else f"{host}: no addresses", 0.0)
        except OSError as exc:
            entry = _Entry([], f"{host}: {exc.strerror or exc}", 0.0)
        entry.expires = time.monotonic() + (self._negative_ttl if entry.error else self._positive_ttl)
        previous = self._cache.get(host)
        if previous is not None and previous.error is None and entry.error is not None:
            # A failed refresh keeps the last good answer for one more short period.
            previous.expires = time.monotonic() + self._negative_ttl
            previous.refreshing = None
            return previous
        self._cache[host] = entry
        return entry
