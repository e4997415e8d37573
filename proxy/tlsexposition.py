"""The TLS metrics as Prometheus text (pure): handshakes and their failures by reason, handshake durations,
certificate expiry per hostname, ACME orders by result. Appended to /metrics beside proxy/exposition.py's."""

from __future__ import annotations

from collections.abc import Iterable, Mapping

from proxy.counters import FIRST_TLS, FIRST_TLS_BUCKET, HANDSHAKE_BUCKETS, TLS_BUCKETS, TLS_REASONS, Reading
from proxy.exposition import AppCells, escape

HANDSHAKES, FIRST_REASON = FIRST_TLS, FIRST_TLS + 1
HANDSHAKE_NS = FIRST_REASON + len(TLS_REASONS)
BOUNDS = [repr(b) for b in HANDSHAKE_BUCKETS] + ["+Inf"]


def tls_families(apps: Iterable[AppCells], tls_apps: frozenset[str], unrouted: int | None, reading: Reading,
                 expiry: Mapping[str, float], orders: Mapping[str, int]) -> bytes:
    """`unrouted` is the cell counting failures before an app was known (shown as app="")."""
    ok = ["# HELP skiff_tls_handshakes_total TLS handshakes completed (terminated apps)",
          "# TYPE skiff_tls_handshakes_total counter"]
    failures = ["# HELP skiff_tls_handshake_failures_total TLS connections closed before relaying, by reason",
                "# TYPE skiff_tls_handshake_failures_total counter"]
    duration = ["# HELP skiff_tls_handshake_duration_seconds From accept to a completed TLS handshake",
                "# TYPE skiff_tls_handshake_duration_seconds histogram"]
    width, records = reading.width, reading.records
    shown = [(a.name, a.cell) for a in apps if a.name in tls_apps]
    if unrouted is not None:
        shown.append(("", unrouted))
    for name, cell in shown:
        name = escape(name)
        r = records[cell * width:(cell + 1) * width]
        if name:
            ok.append(f'skiff_tls_handshakes_total{{app="{name}"}} {r[HANDSHAKES]}')
        for i, reason in enumerate(TLS_REASONS, start=FIRST_REASON):
            if r[i] or name:
                failures.append(f'skiff_tls_handshake_failures_total{{app="{name}",reason="{reason}"}} {r[i]}')
        if not name:
            continue
        running = 0
        for bound, n in zip(BOUNDS, r[FIRST_TLS_BUCKET:FIRST_TLS_BUCKET + TLS_BUCKETS], strict=True):
            running += n
            duration.append(f'skiff_tls_handshake_duration_seconds_bucket{{app="{name}",le="{bound}"}} {running}')
        duration.append(f'skiff_tls_handshake_duration_seconds_count{{app="{name}"}} {running}')
        duration.append(f'skiff_tls_handshake_duration_seconds_sum{{app="{name}"}} {r[HANDSHAKE_NS] / 1e9!r}')
    expiring = ["# HELP skiff_tls_certificate_expiry_timestamp_seconds When the certificate served for a "
                "hostname expires (Unix time)", "# TYPE skiff_tls_certificate_expiry_timestamp_seconds gauge"]
    expiring += [f'skiff_tls_certificate_expiry_timestamp_seconds{{hostname="{escape(h)}"}} {t!r}'
                 for h, t in sorted(expiry.items())]
    ordered = ["# HELP skiff_acme_orders_total ACME certificate orders by result",
               "# TYPE skiff_acme_orders_total counter"]
    ordered += [f'skiff_acme_orders_total{{result="{escape(k)}"}} {v}' for k, v in sorted(orders.items())]
    return ("\n".join(ok + failures + duration + expiring + ordered) + "\n").encode()
