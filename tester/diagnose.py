"""Why connections failed, in the operator's words: proxy refused, closed before any byte, target unreachable.

After a scenario, every app none of whose connections completed is looked at from outside: the tester dials
its targets itself (loopback only; it never sends traffic elsewhere) and, when given skiff's `--metrics`
address, reads `skiff_target_up` from `/metrics`. The result is one check per run, `{scenario}.diagnosis`.
"""

from __future__ import annotations

import asyncio
import re

from tester import client
from tester.client import Failure
from tester.config import App, is_local, split_host_port
from tester.run import Run
from tester.stats import PortStats, plural

# What a failure reason on the proxy's port says about where the fault is.
CAUSES = {
    "refused": "the proxy refused (nothing listens on the port: is skiff running with this config?)",
    "connect_timeout": "the proxy did not accept in time",
    "closed": "the proxy accepted, then closed before any byte (no target reachable?)",
    "reset": "the connection was reset",
    "timeout": "no answer in time",
}
_UP = re.compile(r'^skiff_target_up\{app="((?:[^"\\]|\\.)*)",target="((?:[^"\\]|\\.)*)"\} (\d+)$', re.M)


def likely_cause(stats: PortStats) -> str:
    """The cause its most frequent connection-level reason points at."""
    ranked = sorted(CAUSES, key=lambda r: -stats.failed[r])
    top = ranked[0]
    return CAUSES[top] if stats.failed[top] else "see the failure reasons"


async def target_problem(target: str, timeout: float) -> str | None:
    """None when the target accepts a connection from here; else why not. Non-loopback targets are not dialled."""
    host, port = split_host_port(target)
    if not is_local(host):
        return None
    try:
        stream, _ = await client.connect(host, port, timeout)
    except Failure as failure:
        return failure.reason
    await client.close(stream[1])
    return None


async def read_target_up(address: str, timeout: float) -> dict[tuple[str, str], bool] | str:
    """skiff_target_up per (app, target) from skiff's /metrics, or why it could not be read."""
    host, _, port = address.rpartition(":")
    try:
        stream, _ = await client.connect(host.strip("[]"), int(port), timeout)
    except (Failure, ValueError) as exc:
        return f"cannot reach {address}: {exc}"
    reader, writer = stream
    try:
        writer.write(f"GET /metrics HTTP/1.1\r\nHost: {address}\r\nConnection: close\r\n\r\n".encode())
        body = await asyncio.wait_for(reader.read(), timeout)
    except (OSError, TimeoutError) as exc:
        return f"cannot read {address}/metrics: {exc}"
    finally:
        await client.close(writer)
    text = body.decode(errors="replace")
    return {(m[1], m[2]): m[3] != "0" for m in _UP.finditer(text)}


async def diagnose(run: Run) -> None:
    """One check naming, for each app without a completed connection, the likely cause."""
    scenario = run.options.scenario
    dead = [app for app in run.apps
            if app.ports and any((app.name, p) in run.recorder.ports for p in app.ports)
            and run.completed({(app.name, p) for p in app.ports}) == 0
            and sum(run.recorder.ports[(app.name, p)].failed_total for p in app.ports
                    if (app.name, p) in run.recorder.ports)]
    if not dead:
        return
    up: dict[tuple[str, str], bool] | str | None = None
    if run.options.metrics:
        up = await read_target_up(run.options.metrics, run.options.timeout)
    findings = [await _app_finding(run, app, up) for app in dead]
    run.check(f"{scenario}.diagnosis", False, "; ".join(findings))


async def _app_finding(run: Run, app: App, up: dict[tuple[str, str], bool] | str | None) -> str:
    ports = [run.recorder.ports[(app.name, p)] for p in app.ports if (app.name, p) in run.recorder.ports]
    failed = sum(s.failed_total for s in ports)
    causes = sorted({likely_cause(s) for s in ports})
    problems = await asyncio.gather(*(target_problem(t, run.options.timeout) for t in app.targets))
    unreachable = [f"{t} {p}" for t, p in zip(app.targets, problems, strict=True) if p is not None]
    parts = [f"app {app.name}: none of {plural(failed, 'connection')} completed: {', '.join(causes)}"]
    if app.targets and len(unreachable) == len(app.targets):
        parts.append(f"no target reachable ({', '.join(unreachable)})")
    elif unreachable:
        parts.append(f"unreachable from here: {', '.join(unreachable)}")
    if isinstance(up, str):
        parts.append(f"skiff's /metrics: {up}")
    elif up is not None:
        down = [t for t in app.targets if up.get((app.name, t)) is False]
        if down:
            parts.append(f"skiff marks down: {', '.join(down)}")
    return "; ".join(parts)
