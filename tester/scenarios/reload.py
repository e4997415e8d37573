"""reload: rewrite the config under load; stable ports must not notice, changed ports must change.

The tester does not start the proxy, so the only file the proxy reloads is the operator's own: the scenario
edits it only with `--edit-config`, and then changes nothing but the Ports and Targets of the apps it touches
(limits, checks, PROXY settings and the file's mode stay), and puts the original bytes back (with its mode and
owner) when it ends, fails or is interrupted (Ctrl-C). Without the flag it runs nothing and says why.

Like sozu's keepalive-bench: persistent connections keep echoing messages across the reload while short
connections keep opening, all on ports that stay.

1. Start load on every stable port: half the workers hold keepalive connections (message after message), half
   open short connections.
2. After a warm-up, atomically replace the config (write, then rename over the same path) with one that adds a
   port to the first app, removes the last port of an app that has two or more, and with --spawn-targets adds
   a new spawned target to the first app and removes a spawned target from an app that has two or more.
3. Probe until the added port echoes and the removed port refuses (each within --reload-deadline).
4. Keep the load running (the rest of --duration, at least 1 s), stop it, put the original file back.
5. Checks: reload.stable (no failed or broken connection on a stable port), reload.port_added,
   reload.port_removed, reload.target_added (the new target served after the reload), reload.target_removed
   (no connection started a grace second after the change was observed reached the removed target).
"""

from __future__ import annotations

import asyncio
import time
from dataclasses import replace

from tester import client
from tester.client import Failure
from tester.config import App, edit_document, write_atomically
from tester.run import Run, free_port
from tester.scenarios.common import check_failures
from tester.stats import Outcome

GRACE = 1.0


async def run_reload(run: Run) -> None:
    path = run.options.config
    if not run.options.edit_config:
        run.check("reload.setup", False,
                  f"not run: the tester does not start the proxy, so reloading means editing {path}, the file "
                  "the proxy serves; pass --edit-config to allow it (only Ports and Targets change, every other "
                  "field and the file's mode stay, and the original is restored byte for byte)")
        return
    original = path.read_bytes()
    original_stat = path.stat()
    apps = run.apps
    first = apps[0]
    new_port = free_port(run.options.proxy_host)
    removed = next(((a, a.ports[-1]) for a in reversed(apps) if len(a.ports) >= 2), None)
    stable = [
        (a, p) for a, p in run.app_ports() if removed is None or (a.name, p) != (removed[0].name, removed[1])
    ]
    new_target = removed_target = None
    if run.pool is not None:
        new_target = f"127.0.0.1:{free_port('127.0.0.1')}"
        await run.pool.start([new_target])
        removed_target = next(
            (run.spawned_targets(a)[-1] for a in apps if len(run.spawned_targets(a)) >= 2), None
        )

    new_apps = []
    for app in apps:
        ports = tuple(
            p for p in app.ports if removed is None or (app.name, p) != (removed[0].name, removed[1])
        )
        targets = tuple(t for t in app.targets if t != removed_target)
        if app is first:
            ports += (new_port,)
            targets += (new_target,) if new_target else ()
        new_apps.append(replace(app, ports=ports, targets=targets))
    run.apps = new_apps
    # Attribution judges a connection by every target its app had before or after the reload: a keepalive
    # connection opened before it may rightly still be on the removed target (target_removed checks the rest).
    by_name = {
        new.name: replace(new, targets=tuple(dict.fromkeys(old.targets + new.targets)))
        for old, new in zip(apps, new_apps, strict=True)
    }

    duration = run.options.duration or 4.0
    stop = asyncio.Event()
    late_on_removed: list[Outcome] = []
    applied_at: float | None = None
    run.progress.begin("reload", None)

    async def short_worker(i: int) -> None:
        while not stop.is_set():
            app, port = stable[i % len(stable)]
            i += 1
            begun = time.monotonic()
            outcome = await run.echo_once(by_name[app.name], port, run.random_size(16, 16 * 1024))
            if applied_at is not None and begun > applied_at + GRACE and outcome.target == removed_target:
                late_on_removed.append(outcome)

    async def keepalive_worker(i: int) -> None:
        while not stop.is_set():
            app, port = stable[i % len(stable)]
            i += 1
            await keepalive(run, by_name[app.name], port, stop)

    workers = max(2, run.options.concurrency // 2)
    tasks = [asyncio.ensure_future(short_worker(i)) for i in range(workers)]
    tasks += [asyncio.ensure_future(keepalive_worker(i)) for i in range(workers)]
    added_ok = removed_ok = False
    try:
        await asyncio.sleep(min(1.0, duration / 4))
        write_atomically(path, edit_document(original, new_apps), like=original_stat)
        written = time.monotonic()
        run.mark("config rewritten")
        run.progress.note("config rewritten")
        added_ok, removed_ok = await asyncio.gather(
            probe_added(run, new_apps[0], new_port, written + run.options.reload_deadline),
            probe_removed(run, removed[1] if removed else None, written + run.options.reload_deadline),
        )
        applied_at = time.monotonic()
        run.mark("reload applied")
        run.progress.note(f"applied after {applied_at - written:.2f} s")
        await asyncio.sleep(max(1.0 + GRACE, duration - (applied_at - written)))
    finally:
        # The operator's bytes go back first: nothing after this point (a second Ctrl-C) can skip it.
        write_atomically(path, original, like=original_stat)
        stop.set()
        await asyncio.gather(*tasks, return_exceptions=True)

    deadline = run.options.reload_deadline
    run.extra["reload"] = {
        "added_port": new_port,
        "removed_port": removed[1] if removed else None,
        "added_target": new_target,
        "removed_target": removed_target,
        "applied_after_s": round(applied_at - written, 3),
    }
    stable_keys = {(a.name, p) for a, p in stable}
    check_failures(run, "reload", only=stable_keys, suffixes=("connections", "integrity", "half_close"))
    run.checks[-3:] = [replace(c, name=c.name.replace("reload.", "reload.stable_")) for c in run.checks[-3:]]
    check_failures(run, "reload", suffixes=("routing",))
    run.check(
        "reload.port_added",
        added_ok,
        f"port {new_port} of {first.name} echoed after the reload"
        if added_ok
        else f"port {new_port}, added to {first.name}, did not echo within {deadline:g} s",
    )
    if removed is not None:
        run.check(
            "reload.port_removed",
            removed_ok,
            f"port {removed[1]} refused after the reload"
            if removed_ok
            else f"port {removed[1]}, removed from {removed[0].name}, still accepted {deadline:g} s later",
        )
    if new_target is not None and run.pool is not None:
        served = run.recorder.app_targets(first.name)[new_target]
        run.check(
            "reload.target_added",
            served > 0,
            f"new target {new_target} of {first.name} served {served} connections",
        )
    if removed_target is not None:
        run.check(
            "reload.target_removed",
            not late_on_removed,
            f"{len(late_on_removed)} connections started {GRACE:g} s after the reload still reached "
            f"removed target {removed_target}"
            if late_on_removed
            else f"removed target {removed_target} got no new connections",
        )


async def keepalive(run: Run, app: App, port: int, stop: asyncio.Event) -> None:
    """One persistent connection echoing messages until `stop`, then closing with a half-close."""
    outcome = Outcome(app.name, port)
    token = b""
    try:
        stream, outcome.connect_us = await client.connect(run.options.proxy_host, port, run.options.timeout)
        try:
            while not stop.is_set():
                message_token, message = run.payload(run.random_size(16, 4096))
                token = token or message_token
                received, rtt = await client.echo(stream, message, run.options.timeout, half_close=False)
                outcome.rtt_us = outcome.rtt_us or rtt
                outcome.sent += len(message)
                outcome.received += received
            await client.echo(stream, b"", run.options.timeout)
        finally:
            await client.close(stream[1])
    except Failure as failure:
        outcome.reason, outcome.detail = failure.reason, f"keepalive broke: {failure.detail}"
    if token:
        run.attribute(app, token, outcome)
    run.record(outcome)


async def probe_added(run: Run, app: App, port: int, deadline: float) -> bool:
    """Echo through the added port until it works or the deadline passes."""
    while time.monotonic() < deadline:
        outcome = await run.echo_once(app, port, 64, record=False)
        if outcome.reason is None:
            run.record(outcome)
            return True
        # Polling: from outside, a port that starts listening is the only sign that a reload happened.
        await asyncio.sleep(0.05)
    return False


async def probe_removed(run: Run, port: int | None, deadline: float) -> bool:
    """Connect to the removed port until it refuses or the deadline passes."""
    if port is None:
        return True
    while time.monotonic() < deadline:
        try:
            stream, _ = await client.connect(run.options.proxy_host, port, run.options.timeout)
        except Failure as failure:
            if failure.reason == "refused":
                return True
        else:
            await client.close(stream[1])
        await asyncio.sleep(0.05)
    return False
