"""Checks several scenarios share: failed connections, split by what the failure says about the proxy."""

from __future__ import annotations

from tester.run import Run

CONNECTION_REASONS = ("refused", "connect_timeout", "reset", "timeout", "error")
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
    for suffix in suffixes:
        reasons, verb = FAILURE_CHECKS[suffix]
        problems = []
        for stats, n in run.recorder.failures(reasons):
            if only is not None and (stats.app, stats.port) not in only:
                continue
            kinds = ", ".join(f"{r} {stats.failed[r]}" for r in reasons if stats.failed[r])
            example = next(stats.examples[r] for r in reasons if r in stats.examples)
            problems.append(f"{n} connections on {stats.app}:{stats.port} {verb} ({kinds}; e.g. {example})")
        if suffix == "routing" and run.pool is None:
            run.check(f"{scenario}.{suffix}", True, "not checked: targets not spawned, attribution unknown")
            continue
        total = sum(
            s.ok + s.failed_total for key, s in run.recorder.ports.items() if only is None or key in only
        )
        run.check(
            f"{scenario}.{suffix}", not problems, "; ".join(problems) or f"{total} connections, none {verb}"
        )


def check_all_ok(run: Run, name: str, context: str) -> None:
    """One check that fails on any failed connection, whatever its reason."""
    problems = []
    for stats in run.recorder.ports.values():
        if stats.failed_total:
            kinds = ", ".join(f"{r} {n}" for r, n in sorted(stats.failed.items()))
            example = next(iter(stats.examples.values()))
            where = f"{stats.app}:{stats.port}"
            problems.append(f"{stats.failed_total} connections on {where} failed ({kinds}; e.g. {example})")
    total = run.recorder.total
    run.check(
        name,
        not problems,
        "; ".join(problems) + f" {context}" if problems else f"{total} connections, none failed",
    )
