"""greenportal demo: one synchronous application layer, four ways to reach an async database.

Starts the demo service (``examples/app``: aiohttp handlers over a sync
services -> repositories -> DB facade layer) on 127.0.0.1 in a child process,
drives it from this process with concurrent keep-alive connections, and
prints, for each variant, throughput, p50/p99 latency, the server's CPU time
per request and the longest stall of its event loop:

* native      - the layer rewritten with async/await (the reference);
* portal      - the sync layer as it is, the facade calls greenportal.await_;
* loop-thread - the facade blocks on a second event loop in a thread;
* threadpool  - the sync layer runs in a thread pool, the facade hops back.

The variants take turns (``--rounds`` passes), so that a burst of other load
on the machine does not land on one variant only.  The database is SQLite
(aiosqlite, a temporary file) unless a PostgreSQL DSN is given with ``--dsn``
or ``DATABASE_URL`` (asyncpg; the demo creates and fills tables named
``gp_*`` there, dropping earlier ones of those names).

Usage: ``python examples/demo.py [--seconds 12] [--concurrency 50] [--dsn postgresql://...]``
(or ``python3 scripts/demo.py ...``, which makes a virtualenv with the packages first).
"""

from __future__ import annotations

import argparse
import asyncio
import os
import sys
from dataclasses import dataclass, field
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))

from app.load import LoadResult, drive
from app.process import ServerError, ServerProcess
from app.server import DESCRIPTIONS, VARIANTS


class DemoError(Exception):
    """Something went wrong; the message says what."""


@dataclass
class Totals:
    """One variant's measurements, summed over the rounds."""

    load: LoadResult = field(default_factory=LoadResult)
    cpu_seconds: float = 0.0
    stall_ms: float = 0.0

    def add(self, result: LoadResult, cpu_seconds: float, stall_ms: float) -> None:
        self.load.seconds += result.seconds
        self.load.latencies += result.latencies
        self.cpu_seconds += cpu_seconds
        self.stall_ms = max(self.stall_ms, stall_ms)

    @property
    def cpu_per_request_ms(self) -> float:
        return 1000 * self.cpu_seconds / len(self.load.latencies) if self.load.latencies else 0.0


class Progress:
    """A progress bar redrawn in place on a terminal; one line per turn otherwise."""

    WIDTH = 24

    def __init__(self, label: str, seconds: float) -> None:
        self.label = label
        self.seconds = seconds
        self.tty = sys.stdout.isatty()

    def _line(self, done: int, elapsed: float) -> str:
        filled = min(self.WIDTH, round(self.WIDTH * elapsed / self.seconds))
        bar = "#" * filled + "." * (self.WIDTH - filled)
        rate = done / elapsed if elapsed else 0.0
        return f"  {self.label} [{bar}] {done:6d} requests {rate:6.0f} req/s"

    def update(self, done: int, elapsed: float) -> None:
        if self.tty:
            print("\r" + self._line(done, elapsed), end="", flush=True)

    def finish(self, done: int, elapsed: float) -> None:
        print(("\r" if self.tty else "") + self._line(done, elapsed), flush=True)


def table(totals: dict[str, Totals]) -> str:
    native = totals.get("native")
    base = native.load.requests_per_second if native else 0.0
    head = (
        f"{'variant':<12}{'requests':>9}{'req/s':>8}{'vs native':>10}{'p50 ms':>8}"
        f"{'p99 ms':>8}{'CPU ms/req':>11}{'loop stall ms':>14}"
    )
    lines = [head, "-" * len(head)]
    for variant, total in totals.items():
        load = total.load
        ratio = f"{load.requests_per_second / base:.2f}x" if base else "-"
        lines.append(
            f"{variant:<12}{len(load.latencies):>9}{load.requests_per_second:>8.0f}{ratio:>10}"
            f"{load.percentile(50) * 1000:>8.1f}{load.percentile(99) * 1000:>8.1f}"
            f"{total.cpu_per_request_ms:>11.2f}{total.stall_ms:>14.0f}"
        )
    return "\n".join(lines)


async def run(args: argparse.Namespace) -> int:
    quiet = args.quiet

    def say(text: str = "") -> None:
        if not quiet:
            print(text, flush=True)

    say("greenportal demo: one sync application layer, four ways to reach an async database")
    say("starting the service and filling its database...")
    per_round = args.seconds / args.rounds
    totals = {variant: Totals() for variant in args.variants}
    server = ServerProcess(args.variants, dsn=args.dsn, latency_ms=args.latency_ms)
    try:
        await server.start()
    except ServerError as error:
        raise DemoError(str(error)) from error
    try:
        say(f"  service:  http://127.0.0.1:{server.port}/  (pid {server.pid})")
        say(f"  database: {server.database}")
        say(
            f"  load:     {args.concurrency} concurrent connections, {args.seconds:g} s per variant"
            f" in {args.rounds} turns; every request makes 5 SQL queries"
        )
        say()
        for turn in range(args.rounds):
            for index, variant in enumerate(args.variants):
                seed = 1 + turn * len(args.variants) + index
                if args.warmup > 0:
                    await drive(
                        "127.0.0.1",
                        server.port,
                        variant,
                        concurrency=args.concurrency,
                        seconds=args.warmup,
                        seed=seed + 1_000,
                    )
                before = await server.stats()
                label = f"turn {turn + 1}/{args.rounds}  {variant:<11}"
                progress = Progress(label, per_round)
                result = await drive(
                    "127.0.0.1",
                    server.port,
                    variant,
                    concurrency=args.concurrency,
                    seconds=per_round,
                    seed=seed,
                    progress=None if quiet else progress.update,
                    progress_every=0.2,
                )
                after = await server.stats()
                if not quiet:
                    progress.finish(len(result.latencies), result.seconds)
                if result.errors:
                    raise DemoError(
                        f"{result.errors} request(s) to {variant} failed; first: "
                        f"{result.first_error}"
                    )
                cpu = after["cpu_seconds"] - before["cpu_seconds"]
                totals[variant].add(result, cpu, after["max_loop_stall_ms"])
    finally:
        await server.stop()
    say()
    print(table(totals))
    say()
    for variant in totals:
        say(f"  {variant:<11} {DESCRIPTIONS[variant]}")
    say(
        "  CPU ms/req: the server process's CPU time (all its threads) per request;\n"
        "  loop stall: the longest time the server's event loop could not run other tasks.\n"
        "  One run on a busy machine is noisy; benchmarks/macro.py repeats and takes medians."
    )
    return 0


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        description=(__doc__ or "").split("\n\n")[0],
        epilog="The database is SQLite in a temporary file unless --dsn or DATABASE_URL is set.",
    )
    parser.add_argument(
        "--seconds", type=float, default=9.0, help="measured seconds per variant (default 9)"
    )
    parser.add_argument("--rounds", type=int, default=3, help="turns the variants take (default 3)")
    parser.add_argument(
        "--warmup", type=float, default=0.3, help="unmeasured seconds before each turn"
    )
    parser.add_argument(
        "--concurrency", type=int, default=50, help="concurrent connections (default 50)"
    )
    parser.add_argument(
        "--dsn",
        default=os.environ.get("DATABASE_URL") or None,
        help="postgresql://user:password@host:port/dbname (default: $DATABASE_URL, else SQLite)",
    )
    parser.add_argument(
        "--variants",
        type=lambda text: text.split(","),
        default=list(VARIANTS),
        help=f"comma-separated subset of {','.join(VARIANTS)}",
    )
    parser.add_argument(
        "--latency-ms",
        type=float,
        default=0.0,
        help="add this wait to every query, as if the database were on another host",
    )
    parser.add_argument("--quiet", action="store_true", help="print only the table")
    args = parser.parse_args(argv)
    unknown = [v for v in args.variants if v not in VARIANTS]
    if unknown:
        parser.error(f"unknown variant(s) {unknown}; choose from {', '.join(VARIANTS)}")
    if args.seconds <= 0 or args.concurrency < 1 or args.rounds < 1:
        parser.error("--seconds must be positive, --concurrency and --rounds at least 1")
    try:
        return asyncio.run(run(args))
    except DemoError as error:
        print(f"\ndemo failed: {error}", file=sys.stderr)
        return 1
    except KeyboardInterrupt:
        print("\ninterrupted", file=sys.stderr)
        return 130


if __name__ == "__main__":
    sys.exit(main())
