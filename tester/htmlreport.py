"""A self-contained HTML report: run metadata and the scenario's headline figure, failed checks first, a
timeline (throughput, failures and latency per second, with markers for reloads and stopped targets), the
tables of the text report, and an SVG latency histogram per port.

Everything is inline (CSS and hand-drawn SVG), so the file can be mailed or archived as one artefact.
"""

from __future__ import annotations

import html
import math
from pathlib import Path

from tester.report import Document
from tester.stats import PERCENTILES

WIDTH, HEIGHT, PAD = 560, 180, 34
STYLE = """body{font:14px system-ui,sans-serif;margin:2em;color:#222}
table{border-collapse:collapse;margin:1em 0}td,th{border:1px solid #ccc;padding:3px 8px;text-align:right}
td:first-child,th:first-child{text-align:left}.fail{color:#b00;font-weight:bold}.pass{color:#070}
svg{background:#fafafa;border:1px solid #ddd;margin:4px}.bad{background:#fee}
.headline{font-size:18px;font-weight:bold}"""
SERIES = (("mbit", "Mbit/s", "#4a7ebb"), ("failed", "failed connections", "#b00"),
          ("rtt_max_ms", "max rtt ms", "#e08a00"))


def render(document: Document) -> str:
    e = html.escape
    verdict = "PASS" if document["ok"] else "FAIL"
    parts = [
        "<!doctype html><html><head><meta charset='utf-8'>",
        f"<title>skiff tester {e(document['scenario'])}</title><style>{STYLE}</style></head><body>",
        f"<h1>skiff tester: {e(document['scenario'])} <span class='{verdict.lower()}'>{verdict}</span></h1>",
        f"<p class='headline'>{e(document['headline'])}</p>",
        f"<p>{e(document['started'])} &middot; <code>{e(document['command'])}</code> &middot; "
        f"{e(document['proxy_version'])}<br>config {e(document['config'])}, proxy host "
        f"{e(document['proxy_host'])}, seed {document['seed']}, {document['elapsed_s']} s</p><h2>Checks</h2><ul>",
    ]
    for check in document["checks"]:
        cls = "pass" if check["ok"] else "fail"
        parts.append(
            f"<li><span class='{cls}'>{'PASS' if check['ok'] else 'FAIL'}</span> "
            f"<b>{e(check['name'])}</b>: {e(check['message'])}</li>"
        )
    parts.append("</ul><h2>Timeline</h2>")
    parts.append(timeline_svg(document["timeline"], document["marks"]))
    parts.append(
        "<h2>Connections</h2><table><tr><th>app</th><th>port</th><th>ok</th><th>failed</th>"
        "<th>reasons</th><th>bytes out</th><th>bytes in</th><th>targets</th></tr>"
    )
    for port in document["ports"]:
        reasons = ", ".join(f"{r} {n}" for r, n in port["reasons"].items()) or "-"
        targets = "<br>".join(f"{e(t)} {n}" for t, n in port["targets"].items()) or "-"
        cls = " class='bad'" if port["failed"] else ""
        parts.append(
            f"<tr{cls}><td>{e(port['app'])}</td><td>{port['port']}</td><td>{port['ok']}</td>"
            f"<td>{port['failed']}</td><td>{e(reasons)}</td><td>{port['bytes_sent']}</td>"
            f"<td>{port['bytes_received']}</td><td>{targets}</td></tr>"
        )
    parts.append("</table><h2>Latency (ms)</h2><table><tr><th>app</th><th>port</th>")
    parts += [f"<th>{kind} p{p:g}</th>" for kind in ("connect", "rtt") for p in PERCENTILES]
    parts.append("</tr>")
    for port in document["ports"]:
        cells = [port[k].get(f"p{p:g}", "-") for k in ("connect_ms", "rtt_ms") for p in PERCENTILES]
        parts.append(
            f"<tr><td>{e(port['app'])}</td><td>{port['port']}</td>"
            + "".join(f"<td>{c}</td>" for c in cells)
            + "</tr>"
        )
    parts.append("</table><h2>Round-trip latency histograms</h2>")
    for port in document["ports"]:
        parts.append(histogram_svg(f"{port['app']}:{port['port']}", port["rtt_buckets_ms"]))
    parts.append("</body></html>\n")
    return "".join(parts)


def histogram_svg(title: str, buckets: list[list[float]]) -> str:
    """Bars of connection counts over log-spaced latency bins (ms), drawn as plain SVG rectangles."""
    e = html.escape
    head = (
        f"<svg xmlns='http://www.w3.org/2000/svg' width='{WIDTH}' height='{HEIGHT}' "
        f"viewBox='0 0 {WIDTH} {HEIGHT}' role='img'><title>{e(title)}</title>"
        f"<text x='{PAD}' y='14' font-size='12'>{e(title)} round trip (ms, log scale)</text>"
    )
    if not buckets:
        return head + f"<text x='{PAD}' y='{HEIGHT // 2}' font-size='12'>no samples</text></svg>"
    # Re-bin HdrHistogram's fine buckets into 10 bins per decade so the bars stay readable.
    bins: dict[int, int] = {}
    for edge, count in buckets:
        key = math.floor(math.log10(max(edge, 0.001)) * 10)
        bins[key] = bins.get(key, 0) + int(count)
    low, high = min(bins), max(bins) + 1
    plot_w, plot_h = WIDTH - 2 * PAD, HEIGHT - 2 * PAD
    bar_w = plot_w / (high - low)
    tallest = max(bins.values())
    shapes = []
    for key, count in sorted(bins.items()):
        h = plot_h * count / tallest
        x = PAD + (key - low) * bar_w
        shapes.append(
            f"<rect x='{x:.1f}' y='{PAD + plot_h - h:.1f}' width='{max(bar_w - 1, 1):.1f}' "
            f"height='{h:.1f}' fill='#4a7ebb'><title>{10 ** (key / 10):.3g}-"
            f"{10 ** ((key + 1) / 10):.3g} ms: {count}</title></rect>"
        )
    axis_y = PAD + plot_h
    shapes.append(f"<line x1='{PAD}' y1='{axis_y}' x2='{WIDTH - PAD}' y2='{axis_y}' stroke='#333'/>")
    for key in range(low, high + 1):
        if key % 10 == 0 or key in (low, high):
            x = PAD + (key - low) * bar_w
            shapes.append(
                f"<text x='{x:.1f}' y='{axis_y + 14}' font-size='10' text-anchor='middle'>"
                f"{10 ** (key / 10):.3g}</text>"
            )
    shapes.append(f"<text x='4' y='{PAD + 8}' font-size='10'>{tallest}</text>")
    return head + "".join(shapes) + "</svg>"


def timeline_svg(rows: list[dict[str, float]], marks: list[dict[str, object]]) -> str:
    """One strip per series over the run's seconds; dashed vertical lines at each mark, labelled."""
    if not rows:
        return "<p>no connection ended during the run</p>"
    e = html.escape
    strip, width = 70, WIDTH + 200
    height = PAD + len(SERIES) * (strip + 10) + 20
    span = max(len(rows), 1)
    plot_w = width - 2 * PAD

    def x(t: float) -> float:
        return PAD + plot_w * t / span

    shapes = [f"<svg xmlns='http://www.w3.org/2000/svg' width='{width}' height='{height}' role='img'>"
              "<title>timeline</title>"]
    for i, (key, label, colour) in enumerate(SERIES):
        top = PAD + i * (strip + 10)
        peak = max(float(r[key]) for r in rows) or 1.0
        points = " ".join(f"{x(r['t'] + 0.5):.1f},{top + strip - strip * float(r[key]) / peak:.1f}" for r in rows)
        shapes.append(f"<text x='{PAD}' y='{top - 2}' font-size='11'>{e(label)} (peak {peak:g})</text>"
                      f"<line x1='{PAD}' y1='{top + strip}' x2='{width - PAD}' y2='{top + strip}' stroke='#999'/>"
                      f"<polyline fill='none' stroke='{colour}' stroke-width='1.5' points='{points}'/>")
    bottom = PAD + len(SERIES) * (strip + 10)
    for mark in marks:
        t = float(str(mark["t"]))
        shapes.append(f"<line class='mark' x1='{x(t):.1f}' y1='{PAD - 12}' x2='{x(t):.1f}' y2='{bottom}' "
                      f"stroke='#555' stroke-dasharray='4 3'/><text x='{x(t) + 3:.1f}' y='{PAD - 14}' "
                      f"font-size='10'>{e(str(mark['label']))} ({t:g} s)</text>")
    shapes.append(f"<text x='{PAD}' y='{bottom + 14}' font-size='10'>0 s</text><text x='{width - PAD}' "
                  f"y='{bottom + 14}' font-size='10' text-anchor='end'>{span} s</text></svg>")
    return "".join(shapes)


def write_html(document: Document, path: Path) -> None:
    path.write_text(render(document), encoding="utf-8")
