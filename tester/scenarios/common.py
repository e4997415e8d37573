"""Checks several scenarios share: failed connections, split by what the failure says about the proxy.

A check over connections that all failed before their echo has nothing to judge: it fails and says so (a
proxy that is down must not pass `integrity` over zero connections).
"""

from __future__ import annotations

from tester.diagnose import likely_cause
from tester.run import Run
from tester.stats import plural

CONNECTION_REASONS = ("refused", "connect_timeout", "closed", "reset", "timeout", "error")
# check suffix -> (reasons, what the failing connections did)
FAILURE_CHECKS: dict[str, tuple[tuple[str, ...], str]] = {
    "connections": (CONNECTION_REASONS, "failed"),
    "integrity": (("mismatch", "long_read"), "got corrupted echoes"),
    "half_close": (("short_read",), "lost the echo after half-close"),
    "routing": (("wrong_app",), "reached the wrong target"),
}


def check_failures(
    run: Run,
    scenario: str,
    only: set[tuple[str, int]] | None = None,
    suffixes: tuple[str, ...] = tuple(FAILURE_CHECKS),
) -> None:
    """Add `{scenario}.connections`, `.integrity`, `.half_close` and `.routing`; each fails on any count.

    `only` limits the checks to some (app, port) pairs; `suffixes` to some of the four checks.
    """
    completed = run.completed(only)
    for suffix in suffixes:
        reasons, verb = FAILURE_CHECKS[suffix]
        problems = []
        for stats, n in run.recorder.failures(reasons):
            if only is not None and (stats.app, stats.port) not in only:
                continue
            kinds = ", ".join(f"{r} {stats.failed[r]}" for r in reasons if stats.failed[r])
            example = next(stats.examples[r] for r in reasons if r in stats.examples)
            cause = f"; likely: {likely_cause(stats)}" if suffix == "connections" else ""
            problems.append(f"{plural(n, 'connection')} on {stats.app}:{stats.port} {verb} "
                            f"({kinds}; e.g. {example}{cause})")
        if suffix == "routing" and run.pool is None:
            run.check(f"{scenario}.{suffix}", True, "not checked: targets not spawned, attribution unknown")
            continue
        total = sum(
            s.ok + s.failed_total for key, s in run.recorder.ports.items() if only is None or key in only
        )
        if suffix != "connections" and completed == 0 and not problems:
            run.check(f"{scenario}.{suffix}", False,
                      f"not checked: none of {plural(total, 'connection')} completed (see {scenario}.connections)")
            continue
        run.check(
            f"{scenario}.{suffix}", not problems,
            "; ".join(problems) or f"{plural(total, 'connection')}, none {verb}"
        )


def check_all_ok(run: Run, name: str, context: str) -> None:
    """One check that fails on any failed connection, whatever its reason."""
    problems = []
    for stats in run.recorder.ports.values():
        if stats.failed_total:
            kinds = ", ".join(f"{r} {n}" for r, n in sorted(stats.failed.items()))
            example = next(iter(stats.examples.values()))
            where = f"{stats.app}:{stats.port}"
            problems.append(f"{plural(stats.failed_total, 'connection')} on {where} failed ({kinds}; e.g. "
                            f"{example}; likely: {likely_cause(stats)})")
    total = run.recorder.total
    if not problems and total == 0:
        run.check(name, False, "not checked: no connection was made")
        return
    run.check(
        name,
        not problems,
        "; ".join(problems) + f" {context}" if problems else f"{plural(total, 'connection')}, none failed",
    )
