#!/usr/bin/env python3
"""Macro benchmark: the demo service's ways of running one sync layer, under load.

Usage::

    python3 benchmarks/macro.py              # SQLite and PostgreSQL, 9 rounds; about 7 minutes
    python3 benchmarks/macro.py --quick      # 2 shorter rounds; about 1.5 minutes
    python3 benchmarks/macro.py --db sqlite --rounds 15 --seconds 4
    python3 benchmarks/macro.py --python /path/to/venv/bin/python   # no virtualenv of ours

Needs only a ``python3`` (CPython 3.10+) to start: like ``benchmarks/run.py``
it makes or reuses ``.venv-bench`` (the repository installed editable, with
``benchmarks/requirements.txt``), then runs itself again in that venv.

What it measures: the demo service (``examples/app``, an aiohttp server over
a sync services -> repositories -> DB facade layer making five SQL queries per
request) runs in a child process with every variant mounted at once:

* ``native``       the layer rewritten with async/await (the reference);
* ``greenportal``  the sync layer, ``greenportal.with_portal_run_sync`` per
  request and ``greenportal.await_`` in the facade;
* ``greenback``    the same with greenback's portals;
* ``sqlalchemy``   the same with SQLAlchemy's bridge (``greenlet_spawn`` and
  ``await_only``);
* ``loop-thread``  the facade blocks the serving loop on a second loop in a
  thread (``run_coroutine_threadsafe(...).result()``);
* ``threadpool``   the layer runs in the default thread pool
  (``run_in_executor``), the facade hops back to the serving loop.

This process is the load generator: 50 keep-alive connections on loopback,
each sending its next request as soon as the previous answer arrives (a
closed loop, so the load is bounded), for ``--seconds`` per variant after a
short warm-up.  The server reports its own CPU time (``os.times()``, every
thread of the process) and that of its event-loop thread before and after
each window.  The variants take turns, in a rotated order each round, and
the report gives medians over the rounds; ratios to native are the medians
of same-round ratios, which cancels much of the drift of a shared machine.

The databases: SQLite through aiosqlite in a temporary file, and PostgreSQL
through asyncpg in a throwaway cluster (``tools/pgcluster.py``; skipped, with
a message saying what to install, when the server binaries are missing).

Targets (issue 5), read off the greenportal row: throughput at least 0.93x
native's, p99 latency at most 1.2x native's, and extra server CPU per request
over native at most half of greenback's.  They are reported, never enforced.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import platform
import statistics
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

HERE = Path(__file__).resolve().parent
ROOT = HERE.parent
EXAMPLES = ROOT / "examples"
TOOLS = ROOT / "tools"

# Server-side variant names, in table order, and their labels in the report.
VARIANTS = ("native", "portal", "greenback", "sqlalchemy", "loop-thread", "threadpool")
LABELS = {
    "native": "native async",
    "portal": "greenportal",
    "greenback": "greenback",
    "sqlalchemy": "SQLAlchemy bridge",
    "loop-thread": "loop in a thread",
    "threadpool": "thread pool",
}
TARGET_THROUGHPUT = 0.93
TARGET_P99 = 1.2
TARGET_CPU_SHARE = 0.5


def say(text: str) -> None:
    print(f"[benchmarks/macro.py] {text}", file=sys.stderr, flush=True)


# -- the outer process: find or make the interpreter, then run the inner one ------


def outer(argv: list[str], python: str | None) -> int:
    if python is None:
        sys.path.insert(0, str(HERE))
        import run  # benchmarks/run.py: its virtualenv handling, standard library only

        python = run.prepare_venv()
    cmd = [python, str(Path(__file__).resolve()), "--inner", *argv]
    try:
        return subprocess.run(cmd, cwd=ROOT, check=False).returncode
    except KeyboardInterrupt:
        return 130


# -- the inner process: the measurements ---------------------------------------------


def median(values: list[float]) -> float:
    return statistics.median(values) if values else float("nan")


def spread(values: list[float]) -> str:
    """The interquartile range of *values*, as ``[q1, q3]``."""
    if len(values) < 2:
        return "[one window]"
    q1, _, q3 = statistics.quantiles(values, n=4, method="inclusive")
    return f"[{q1:.2f}, {q3:.2f}]"


async def window(
    server: Any, variant: str, args: argparse.Namespace, seed: int
) -> dict[str, float]:
    """One measured window of *variant* (after a short warm-up)."""
    from app.load import drive

    if args.warmup > 0:
        await drive(
            "127.0.0.1",
            server.port,
            variant,
            concurrency=args.concurrency,
            seconds=args.warmup,
            seed=seed + 100_000,
        )
    before = await server.stats()
    result = await drive(
        "127.0.0.1",
        server.port,
        variant,
        concurrency=args.concurrency,
        seconds=args.seconds,
        seed=seed,
    )
    after = await server.stats()
    if result.errors:
        raise SystemExit(
            f"{variant}: {result.errors} request(s) failed; first: {result.first_error}"
        )
    served = after["requests"].get(variant, 0) - before["requests"].get(variant, 0)
    served = max(served, 1)
    return {
        "rps": result.requests_per_second,
        "p50": result.percentile(50),
        "p99": result.percentile(99),
        "cpu": (after["cpu_seconds"] - before["cpu_seconds"]) / served,
        "loop_cpu": (after["loop_cpu_seconds"] - before["loop_cpu_seconds"]) / served,
        "stall": after["max_loop_stall_ms"] / 1000,
    }


METRICS = ("rps", "p50", "p99", "cpu", "loop_cpu", "stall")


async def measure_database(args: argparse.Namespace, dsn: str | None) -> dict[str, Any]:
    """Every variant, round after round, each window between two native windows.

    A round is ``native, A, native, B, ..., native``, the others in a rotated
    order each round.  Each window of another variant is compared with the
    mean of the native windows just before and after it, which cancels most
    of the drift of a shared machine.
    """
    from app.process import ServerProcess

    others = [v for v in VARIANTS if v != "native"]
    samples: dict[str, list[dict[str, float]]] = {v: [] for v in VARIANTS}
    # For each sample of another variant: the mean of its two native neighbours.
    baselines: dict[str, list[dict[str, float]]] = {v: [] for v in others}
    server = ServerProcess(list(VARIANTS), dsn=dsn, uvloop=args.server_uvloop)
    load_before = os.getloadavg()
    seed = 0
    async with server:
        say(f"server pid {server.pid} on port {server.port}: {server.database}")
        for number in range(args.rounds):
            shift = number % len(others)
            order = others[shift:] + others[:shift]
            if number % 2:
                order.reverse()
            seed += 1
            previous = await window(server, "native", args, seed)
            samples["native"].append(previous)
            for variant in order:
                seed += 1
                mine = await window(server, variant, args, seed)
                seed += 1
                following = await window(server, "native", args, seed)
                samples[variant].append(mine)
                samples["native"].append(following)
                base = {key: (previous[key] + following[key]) / 2 for key in METRICS}
                baselines[variant].append(base)
                previous = following
                say(
                    f"round {number + 1}/{args.rounds} {LABELS[variant]:<18}"
                    f"{mine['rps']:6.0f} req/s ({mine['rps'] / base['rps']:.2f}x)"
                    f"  p99 {mine['p99'] * 1000:6.1f} ms  CPU {mine['cpu'] * 1e6:5.0f} us/req"
                    f"  | native {following['rps']:6.0f} req/s"
                )
        database = server.database
        build = server.greenportal
    return {
        "database": database,
        "greenportal": build,
        "samples": samples,
        "baselines": baselines,
        "loadavg": [load_before[0], os.getloadavg()[0]],
    }


def paired(measured: dict[str, Any], variant: str, key: str) -> list[float]:
    """variant/native for *key*, each window against its native neighbours."""
    if variant == "native":
        return [1.0]
    return [
        mine[key] / base[key]
        for mine, base in zip(
            measured["samples"][variant], measured["baselines"][variant], strict=True
        )
        if base[key] > 0
    ]


def extra_cpu(measured: dict[str, Any], variant: str) -> list[float]:
    """variant's CPU per request minus its native neighbours', window by window, in seconds."""
    if variant == "native":
        return [0.0]
    return [
        mine["cpu"] - base["cpu"]
        for mine, base in zip(
            measured["samples"][variant], measured["baselines"][variant], strict=True
        )
    ]


def report(title: str, measured: dict[str, Any], args: argparse.Namespace) -> str:
    samples = measured["samples"]
    lines = [
        f"{title}: {measured['database']}; server: {measured['greenportal']}",
        f"{args.concurrency} connections, {args.rounds} rounds x {args.seconds:g} s per variant;"
        " medians; x native: median ratio to the native windows either side",
        "",
    ]
    head = (
        f"{'variant':<19}{'req/s':>7}{'x native':>9}{'p50 ms':>8}{'p99 ms':>8}{'x native':>9}"
        f"{'CPU us/req':>11}{'x native':>9}{'extra CPU':>10}{'loop CPU':>9}{'stall ms':>9}"
    )
    lines += [head, "-" * len(head)]
    for variant in VARIANTS:
        rows = samples[variant]
        if not rows:
            continue

        def med(key: str, rows: list[dict[str, float]] = rows) -> float:
            return median([row[key] for row in rows])

        lines.append(
            f"{LABELS[variant]:<19}{med('rps'):>7.0f}"
            f"{median(paired(measured, variant, 'rps')):>9.2f}"
            f"{med('p50') * 1000:>8.1f}{med('p99') * 1000:>8.1f}"
            f"{median(paired(measured, variant, 'p99')):>9.2f}"
            f"{med('cpu') * 1e6:>11.0f}{median(paired(measured, variant, 'cpu')):>9.2f}"
            f"{median(extra_cpu(measured, variant)) * 1e6:>+10.0f}"
            f"{med('loop_cpu') * 1e6:>9.0f}{med('stall') * 1000:>9.0f}"
        )
    lines += [
        "",
        "CPU us/req: server process CPU time (all threads) per request; extra CPU: minus",
        "the neighbouring native windows'; loop CPU: the event-loop thread's alone; stall:",
        "longest event-loop stall in a window.  Load average (1 min) at start and end: "
        + " -> ".join(f"{value:.2f}" for value in measured["loadavg"]),
        "",
        "Targets (issue 5), greenportal against native and greenback:",
    ]
    lines += [f"  {line}" for line in targets(measured)]
    return "\n".join(lines)


def targets(measured: dict[str, Any]) -> list[str]:
    verdict = {True: "PASS", False: "MISS"}
    rps = paired(measured, "portal", "rps")
    p99 = paired(measured, "portal", "p99")
    pooled = sum(row["rps"] for row in measured["samples"]["portal"]) / sum(
        row["rps"] for row in measured["baselines"]["portal"]
    )
    lines = [
        f"{verdict[median(rps) >= TARGET_THROUGHPUT]}  throughput {median(rps):.2f}x native "
        f"(target >= {TARGET_THROUGHPUT}x; quartiles of the windows {spread(rps)}, "
        f"all windows pooled {pooled:.2f}x)",
        f"{verdict[median(p99) <= TARGET_P99]}  p99 latency {median(p99):.2f}x native "
        f"(target <= {TARGET_P99}x; quartiles {spread(p99)})",
    ]
    mine = median(extra_cpu(measured, "portal")) * 1e6
    if measured["samples"]["greenback"]:
        theirs = median(extra_cpu(measured, "greenback")) * 1e6
        if theirs <= 0:
            lines.append(
                f"n/a   extra CPU per request {mine:+.0f} us vs greenback's {theirs:+.0f} us: "
                "greenback's extra is not above the noise, so half of it is no yardstick"
            )
        else:
            ok = mine <= TARGET_CPU_SHARE * theirs
            lines.append(
                f"{verdict[ok]}  extra CPU per request {mine:+.0f} us vs greenback's "
                f"{theirs:+.0f} us (target <= {TARGET_CPU_SHARE:g}x greenback's, i.e. "
                f"<= {TARGET_CPU_SHARE * theirs:.0f} us)"
            )
    return lines


async def inner_main(args: argparse.Namespace) -> int:
    sys.path[:0] = [str(EXAMPLES), str(TOOLS)]
    import aiohttp

    import greenportal

    reports: list[str] = []
    raw: dict[str, Any] = {}
    started = time.perf_counter()
    for db in args.db:
        if db == "sqlite":
            say("SQLite: measuring")
            measured = await measure_database(args, None)
            title = "SQLite"
        else:
            from pgcluster import MISSING_MESSAGE, PostgresCluster, find_pg_bin

            if find_pg_bin() is None:
                message = f"PostgreSQL: skipped. {MISSING_MESSAGE}"
                say(message)
                reports.append(message)
                continue
            say("PostgreSQL: starting a throwaway cluster")
            with PostgresCluster() as cluster:
                measured = await measure_database(args, cluster.dsn)
            title = "PostgreSQL"
        raw[db] = measured
        reports.append(report(title, measured, args))
    say(f"done in {time.perf_counter() - started:.0f} s")
    print(
        f"Macro benchmark: Python {platform.python_version()}, greenportal "
        f"{greenportal.__version__}, aiohttp {aiohttp.__version__}, "
        f"{os.cpu_count()} CPUs, {platform.platform(terse=True)}; server loop: "
        f"{'uvloop' if args.server_uvloop else 'asyncio'}"
    )
    for text in reports:
        print()
        print(text)
    if args.json_out:
        Path(args.json_out).write_text(json.dumps(raw, indent=1))
    return 0


def without_python(argv: list[str]) -> list[str]:
    """*argv* without ``--python PATH`` / ``--python=PATH`` (the inner run needs neither)."""
    kept: list[str] = []
    skip = False
    for arg in argv:
        if skip:
            skip = False
        elif arg == "--python":
            skip = True
        elif not arg.startswith("--python="):
            kept.append(arg)
    return kept


def main() -> int:
    parser = argparse.ArgumentParser(
        description="The demo service's variants under load on SQLite and PostgreSQL."
    )
    parser.add_argument("--quick", action="store_true", help="2 rounds of 1 s windows")
    parser.add_argument("--rounds", type=int, help="rounds (default 9; quick 2)")
    parser.add_argument(
        "--seconds", type=float, help="measured seconds per window (default 1.5; quick 1)"
    )
    parser.add_argument("--warmup", type=float, help="unmeasured seconds before each window")
    parser.add_argument("--concurrency", type=int, default=50, help="connections (default 50)")
    parser.add_argument(
        "--db",
        action="append",
        choices=("sqlite", "postgresql"),
        help="only this database (repeatable; default both)",
    )
    parser.add_argument("--server-uvloop", action="store_true", help="serve on uvloop")
    parser.add_argument("--python", help="use this interpreter as it is, no virtualenv")
    parser.add_argument("--json-out", metavar="PATH", help="also save every sample here")
    parser.add_argument("--inner", action="store_true", help=argparse.SUPPRESS)
    args = parser.parse_args()
    if not args.inner:
        return outer(without_python(sys.argv[1:]), args.python)
    quick = args.quick
    args.rounds = args.rounds or (2 if quick else 9)
    args.seconds = args.seconds or (1.0 if quick else 1.5)
    args.warmup = args.warmup if args.warmup is not None else 0.25
    args.db = args.db or ["sqlite", "postgresql"]
    try:
        import uvloop
    except ImportError:
        return asyncio.run(inner_main(args))
    # The load generator runs on uvloop when it can: cheaper per request,
    # more of the machine left for the server.
    return uvloop.run(inner_main(args))


if __name__ == "__main__":
    sys.exit(main())
