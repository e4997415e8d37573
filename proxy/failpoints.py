"""Test-only fault injection: named points in the code that fail on purpose when the environment asks.

`SKIFF_FAILPOINT` holds a comma-separated list of points, each `NAME` (always active) or `NAME:PATH` (active
while PATH exists, so a test can switch a fault on and off from outside the process). Known points:

    worker-boot       a worker exits before it is ready (EXIT_BOOT_FAILED)
    worker-apply      applying a snapshot raises in the worker (the control path fails)
    relay-callback    a relay's client data callback raises (one connection's callback fails)
    connect-raise     a connect attempt raises RuntimeError (a bug in the connect path)
    connect-deadline-race   the connect deadline fires after the upstream was adopted, before the connect task
                      resumed (the window between connection_made and create_connection's return)
    supervisor-fork   the supervisor's fork raises OSError(EAGAIN), as under a process limit
    metrics-render    rendering /metrics raises
    takeover-commit   a successor SIGKILLs itself mid-commit (the maps already point at it, uncommitted)

The variable is read once per process (at import) and never changed: nothing here is configuration.
"""

from __future__ import annotations

import os

ENV = "SKIFF_FAILPOINT"


def parse(value: str) -> dict[str, str | None]:
    """'a,b:/tmp/x' -> {'a': None, 'b': '/tmp/x'}; blank entries are ignored."""
    points: dict[str, str | None] = {}
    for entry in value.split(","):
        name, sep, path = entry.strip().partition(":")
        if name:
            points[name] = path if sep and path else None
    return points


_POINTS = parse(os.environ.get(ENV, ""))
ANY = bool(_POINTS)  # per-connection call sites test this first: a failpoint costs nothing when none is set


def configured(name: str) -> bool:
    """True when the environment names `name` at all (it may be switched on later by its file)."""
    return name in _POINTS


def active(name: str) -> bool:
    """True when the failpoint `name` should fail now."""
    if name not in _POINTS:
        return False
    path = _POINTS[name]
    return path is None or os.path.exists(path)
