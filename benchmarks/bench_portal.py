"""Microbenchmarks: greenportal against greenback and SQLAlchemy's greenlet bridge.

Every row is measured in this one process, with the implementations
interleaved round by round, so that the ratios are comparable even on a
noisy machine.  Times are per operation, median over rounds, with the spread
(min-max of the per-round medians) in brackets.  Overheads subtract the
native checkpoint measured in the same round.

Usage::

    python benchmarks/bench_portal.py [--loop asyncio|uvloop|trio] [--rounds N] [--n N]

Requires greenback and sqlalchemy for their columns (skipped if missing).
"""

from __future__ import annotations

import argparse
import statistics
import sys
import time
from collections.abc import Awaitable, Callable
from typing import Any

import greenlet

import greenportal

try:
    import greenback
except ImportError:  # pragma: no cover
    greenback = None
try:
    from sqlalchemy.util import await_only, greenlet_spawn
except ImportError:  # pragma: no cover
    await_only = greenlet_spawn = None


def switch_pair_floor(n: int) -> float:
    """One greenlet switch there and back, the floor for any portal step."""

    def body() -> None:
        parent = greenlet.getcurrent().parent
        assert parent is not None
        while True:
            parent.switch()

    gr = greenlet.greenlet(body)
    gr.switch()
    switch = gr.switch
    t0 = time.perf_counter()
    for _ in range(n):
        switch()
    return (time.perf_counter() - t0) / n


class Lib:
    def __init__(self, name: str) -> None:
        self.name = name
        if name == "trio":
            import trio

            self.sleep0 = trio.lowlevel.checkpoint
            self.run = trio.run
        else:
            import asyncio

            self.sleep0 = lambda: asyncio.sleep(0)
            if name == "uvloop":
                import uvloop

                self.run = lambda fn: uvloop.run(fn())
            else:
                self.run = lambda fn: asyncio.run(fn())


def build_cases(lib: Lib, n: int) -> dict[str, Callable[[], Awaitable[float]]]:
    sleep0 = lib.sleep0

    async def native_checkpoint() -> float:
        t0 = time.perf_counter()
        for _ in range(n):
            await sleep0()
        return (time.perf_counter() - t0) / n

    async def ten_traps() -> None:
        for _ in range(10):
            await sleep0()

    async def native_ten() -> float:
        t0 = time.perf_counter()
        for _ in range(n // 10):
            await ten_traps()
        return (time.perf_counter() - t0) / (n // 10)

    def steps_in(mod: Any) -> Callable[[], Awaitable[float]]:
        async def run() -> float:
            await mod.ensure_portal()
            t0 = time.perf_counter()
            for _ in range(n):
                await sleep0()
            return (time.perf_counter() - t0) / n

        return run

    def await_checkpoint(mod: Any) -> Callable[[], Awaitable[float]]:
        async def run() -> float:
            await mod.ensure_portal()
            await_ = mod.await_
            t0 = time.perf_counter()
            for _ in range(n):
                await_(sleep0())
            return (time.perf_counter() - t0) / n

        return run

    def await_ten(mod: Any) -> Callable[[], Awaitable[float]]:
        async def run() -> float:
            await mod.ensure_portal()
            await_ = mod.await_
            t0 = time.perf_counter()
            for _ in range(n // 10):
                await_(ten_traps())
            return (time.perf_counter() - t0) / (n // 10)

        return run

    def run_sync_empty(mod: Any) -> Callable[[], Awaitable[float]]:
        async def run() -> float:
            fn = mod.with_portal_run_sync
            t0 = time.perf_counter()
            for _ in range(n // 10):
                await fn(_empty)
            return (time.perf_counter() - t0) / (n // 10)

        return run

    cases: dict[str, Callable[[], Awaitable[float]]] = {
        "native checkpoint": native_checkpoint,
        "native 10-trap coroutine": native_ten,
        "checkpoint in ensure_portal task / greenportal": steps_in(greenportal),
        "await_(checkpoint) / greenportal": await_checkpoint(greenportal),
        "await_(10-trap coroutine) / greenportal": await_ten(greenportal),
        "with_portal_run_sync(empty) / greenportal": run_sync_empty(greenportal),
    }
    if greenback is not None:
        cases["checkpoint in ensure_portal task / greenback"] = steps_in(greenback)
        cases["await_(checkpoint) / greenback"] = await_checkpoint(greenback)
        cases["await_(10-trap coroutine) / greenback"] = await_ten(greenback)
        cases["with_portal_run_sync(empty) / greenback"] = run_sync_empty(greenback)
    if await_only is not None and lib.name != "trio":

        def sa_await_inside(coro_fn: Callable[[], Any], count: int) -> Callable[[], None]:
            def body() -> None:
                for _ in range(count):
                    await_only(coro_fn())

            return body

        async def sa_checkpoint() -> float:
            t0 = time.perf_counter()
            await greenlet_spawn(sa_await_inside(sleep0, n))
            return (time.perf_counter() - t0) / n

        async def sa_ten() -> float:
            t0 = time.perf_counter()
            await greenlet_spawn(sa_await_inside(ten_traps, n // 10))
            return (time.perf_counter() - t0) / (n // 10)

        async def sa_spawn_empty() -> float:
            t0 = time.perf_counter()
            for _ in range(n // 10):
                await greenlet_spawn(_empty)
            return (time.perf_counter() - t0) / (n // 10)

        cases["await_(checkpoint) / sqlalchemy await_only"] = sa_checkpoint
        cases["await_(10-trap coroutine) / sqlalchemy await_only"] = sa_ten
        cases["with_portal_run_sync(empty) / sqlalchemy greenlet_spawn"] = sa_spawn_empty
    return cases


def _empty() -> None:
    pass


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--loop", default="asyncio", choices=["asyncio", "uvloop", "trio"])
    parser.add_argument("--rounds", type=int, default=7)
    parser.add_argument("--n", type=int, default=20_000)
    args = parser.parse_args()
    lib = Lib(args.loop)
    cases = build_cases(lib, args.n)
    results: dict[str, list[float]] = {name: [] for name in cases}
    floors: list[float] = []
    for _ in range(args.rounds):
        floors.append(switch_pair_floor(args.n))
        for name, case in cases.items():
            results[name].append(lib.run(case))

    def med(name: str) -> float:
        return statistics.median(results[name])

    floor = statistics.median(floors)
    native = med("native checkpoint")
    native_ten = med("native 10-trap coroutine")
    print(f"# {args.loop}, Python {sys.version.split()[0]}, greenlet {greenlet.__version__}")
    print(f"# rounds={args.rounds} n={args.n}; per operation, median [min-max] of rounds")
    print(f"{'greenlet switch pair (floor)':58s} {floor * 1e6:8.3f} us")
    for name, vals in results.items():
        base = native_ten if "10-trap" in name else native
        extra = ""
        if name.startswith(("checkpoint in", "await_(")):
            over = med(name) - base
            extra = f"  overhead {over * 1e6:7.3f} us = {over / floor:5.2f} x floor"
        print(
            f"{name:58s} {med(name) * 1e6:8.3f} us "
            f"[{min(vals) * 1e6:.3f}-{max(vals) * 1e6:.3f}]{extra}"
        )
    if greenback is not None:
        print("# ratios, greenportal / greenback (lower is better)")
        for what in (
            "checkpoint in ensure_portal task",
            "await_(checkpoint)",
            "await_(10-trap coroutine)",
            "with_portal_run_sync(empty)",
        ):
            ours, theirs = med(f"{what} / greenportal"), med(f"{what} / greenback")
            base = native_ten if "10-trap" in what else native
            if what.startswith(("checkpoint", "await_")):
                ratio = (ours - base) / max(theirs - base, 1e-12)
                print(f"  {what:40s} overhead ratio {ratio:5.2f}")
            else:
                print(f"  {what:40s} time ratio     {ours / theirs:5.2f}")


if __name__ == "__main__":
    main()
