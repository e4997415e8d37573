"""`python -m tester SCENARIO -c CONFIG`: run one scenario against the proxy, report, exit 0 if all passed.

Exit status: 0 every check passed; 1 a check failed; 2 the run could not start (bad options, config, a target
address the tester could not bind); 130 interrupted (Ctrl-C).
"""

from __future__ import annotations

import argparse
import asyncio
import sys
import time
from pathlib import Path

import uvloop
from rich.console import Console

from tester.config import ConfigError, read_config
from tester.diagnose import diagnose
from tester.htmlreport import write_html
from tester.progress import Progress
from tester.report import build, print_text, write_json
from tester.run import Options, Run, wait_ready
from tester.scenarios import SCENARIOS
from tester.targets import TargetPool

EXIT_OK, EXIT_FAILED, EXIT_USAGE, EXIT_INTERRUPTED = 0, 1, 2, 130


def parse_args(argv: list[str] | None) -> Options:
    parser = argparse.ArgumentParser(prog="python -m tester", description=__doc__.splitlines()[0])
    parser.add_argument("scenario", choices=sorted(SCENARIOS))
    parser.add_argument("-c", "--config", type=Path, required=True, help="the proxy's config.json")
    parser.add_argument(
        "--proxy-host", default="127.0.0.1", help="where the proxy listens (default 127.0.0.1)"
    )
    parser.add_argument(
        "--spawn-targets",
        action="store_true",
        help="run echo targets on every loopback target of the config and attribute connections",
    )
    parser.add_argument(
        "--connections",
        type=int,
        metavar="N",
        help="per port (smoke 20, failover 40), per app (balance 200), total (throughput 4), cap (soak)",
    )
    parser.add_argument("--concurrency", type=int, default=16, metavar="N", help="connections in flight (16)")
    parser.add_argument(
        "--duration", type=float, metavar="S", help="soak (10) and reload (4) length in seconds"
    )
    parser.add_argument(
        "--seed", type=int, default=1, help="payloads and choices are reproducible per seed (1)"
    )
    parser.add_argument(
        "--timeout",
        type=float,
        default=5.0,
        metavar="S",
        help="connect timeout and idle timeout per read or write (5)",
    )
    parser.add_argument(
        "--wait-ready",
        type=float,
        default=0.0,
        metavar="S",
        help="retry connecting to the first port for up to S seconds before starting (0)",
    )
    parser.add_argument(
        "--bytes",
        type=_size,
        default=16 * 2**20,
        metavar="SIZE",
        help="throughput bytes per connection, e.g. 64M (16M)",
    )
    parser.add_argument(
        "--max-size", type=_size, default=2**20, metavar="SIZE", help="largest smoke/soak payload (1M)"
    )
    parser.add_argument(
        "--min-fairness",
        type=float,
        default=0.8,
        metavar="J",
        help="balance fails below this Jain index (0.8)",
    )
    parser.add_argument(
        "--reload-deadline",
        type=float,
        default=5.0,
        metavar="S",
        help="reload: added ports must echo and removed ports refuse within S seconds (5)",
    )
    parser.add_argument(
        "--edit-config",
        action="store_true",
        help="reload: let the tester edit the config file the proxy serves (only Ports and Targets change; "
        "the original bytes and mode are restored at the end, on Ctrl-C too); without it reload does not run",
    )
    parser.add_argument(
        "--metrics",
        metavar="HOST:PORT",
        help="skiff's --metrics address: a failed run reads /metrics to say which targets skiff marks down",
    )
    parser.add_argument("--json", type=Path, metavar="FILE", help="write the report as JSON")
    parser.add_argument("--html", type=Path, metavar="FILE", help="write a self-contained HTML report")
    parser.add_argument("-q", "--quiet", action="store_true", help="no progress bar")
    args = parser.parse_args(argv)
    if args.concurrency < 1 or (args.connections is not None and args.connections < 1):
        parser.error("--concurrency and --connections must be at least 1")
    return Options(**vars(args))


def _size(text: str) -> int:
    units = {"k": 2**10, "m": 2**20, "g": 2**30}
    text = text.strip().lower().removesuffix("b").removesuffix("i")
    scale = units.get(text[-1:], 1)
    number = text[:-1] if text[-1:] in units else text
    try:
        return int(float(number) * scale)
    except ValueError:
        raise argparse.ArgumentTypeError(f"{text!r} is not a size like 4096, 64k or 16M") from None


async def execute(run: Run) -> None:
    """Start the targets, wait for the proxy, run the scenario within a hard time limit, stop the targets."""
    options = run.options
    if run.pool is not None:
        await run.pool.start(TargetPool.local_targets(run.apps))
    try:
        first = next((p for _, p in run.ports()), None)
        if first is None:
            run.check("config.ports", False, "the config lists no port")
            return
        if options.wait_ready and not await wait_ready(options.proxy_host, first, options.wait_ready):
            run.check(
                "ready",
                False,
                f"nothing listened on {options.proxy_host}:{first} within {options.wait_ready:g} s",
            )
            return
        # Every loop is bounded by count or time already; this stops a wedged run from hanging CI forever.
        limit = (options.duration or 10.0) + options.reload_deadline + 30 * options.timeout + 60
        try:
            async with asyncio.timeout(limit):
                await SCENARIOS[options.scenario](run)
        except TimeoutError:
            run.check(f"{options.scenario}.finished", False, f"did not finish within {limit:g} s")
        await diagnose(run)
    finally:
        if run.pool is not None:
            await run.pool.close()


def main(argv: list[str] | None = None) -> int:
    options = parse_args(argv)
    try:
        apps = read_config(options.config)
    except ConfigError as exc:
        print(f"tester: {exc}", file=sys.stderr)
        return EXIT_USAGE
    started = time.perf_counter()
    with Progress(enabled=not options.quiet) as progress:
        run = Run(options, apps, TargetPool() if options.spawn_targets else None, progress)
        try:
            uvloop.run(execute(run))
        except OSError as exc:
            print(f"tester: cannot start: {exc.strerror or exc}", file=sys.stderr)
            return EXIT_USAGE
        except KeyboardInterrupt:
            print("tester: interrupted (the config file, if it was edited, is back as it was)", file=sys.stderr)
            return EXIT_INTERRUPTED
    document = build(run, time.perf_counter() - started, argv if argv is not None else sys.argv[1:])
    console = Console(width=160) if not sys.stdout.isatty() else Console()
    print_text(document, console)
    if options.json is not None:
        write_json(document, options.json)
    if options.html is not None:
        write_html(document, options.html)
    return EXIT_OK if document["ok"] else EXIT_FAILED
