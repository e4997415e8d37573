"""The supervisor's view of TLS certificates: which one serves each hostname and when it expires, and the ACME
orders' results (for /metrics). Configured certificates travel in the snapshot (proxy/certfiles.py); issued ones
come from the ACME helper (control/acme.py) and are pushed to every worker."""

from __future__ import annotations

from collections import Counter
from collections.abc import Mapping
from typing import TYPE_CHECKING

from proxy.certfiles import CertPair
from proxy.config import Config

if TYPE_CHECKING:
    from proxy.snapshot import Snapshot


class CertKeeper:
    def __init__(self) -> None:
        self.orders: Counter[str] = Counter()  # result -> ACME orders
        self.issued: dict[str, CertPair] = {}  # app name -> the certificate ACME issued for it
        self._not_after: dict[CertPair, float] = {}

    def merged(self, snapshot: Snapshot) -> dict[str, CertPair]:
        """The certificates workers serve with `snapshot`: the configured ones, and the issued ones of apps that
        have no configured certificate."""
        configured = {a.name for a in snapshot.config.apps if a.certificate is not None}
        merged = {name: pair for name, pair in snapshot.certs.items() if name in configured}
        merged.update((name, pair) for name, pair in self.issued.items() if name not in configured)
        return merged

    def expiry(self, config: Config, configured: Mapping[str, CertPair]) -> dict[str, float]:
        """Hostname -> when the certificate served for it expires, for every terminated hostname that has one."""
        shown: dict[str, float] = {}
        for app in config.apps:
            pair = configured.get(app.name) or self.issued.get(app.name)
            if not app.terminates or pair is None:
                continue
            when = self._not_after.get(pair)
            if when is None:
                when = self._not_after[pair] = pair.not_after()
            for name in app.hostnames:
                shown[name] = when
        live = set(configured.values()) | set(self.issued.values())
        for pair in [p for p in self._not_after if p not in live]:
            del self._not_after[pair]
        return shown
