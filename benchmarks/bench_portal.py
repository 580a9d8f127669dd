"""Timings: greenportal against greenback, SQLAlchemy's greenlet bridge and awaitlet.

Measures every timing row of the suite on one event loop, in this one
process.  All cases run in every round, each in a task of its own, in a
shuffled order, so that the implementations are interleaved and their
ratios are comparable even on a noisy machine.  Each sample is the mean time
of one operation over a batch; the report gives the median over rounds and
the interquartile range.

Normally started by ``benchmarks/run.py``, which runs it once per event loop
and adds the memory rows; it can also be run by itself in an environment
that has the packages of ``benchmarks/requirements.txt``::

    python benchmarks/bench_portal.py --loop trio --rounds 11

Sections:

``main``
    the table: native checkpoint, checkpoint in a portal task (one row per
    way of making the portal), ``await_`` of a checkpoint / of a coroutine
    that never yields / of a ten-trap coroutine, portal creation, a new task
    taking a portal, and the raw greenlet floors.
``scaling``
    how the cost of ``await_`` grows with the depth of sync frames above it,
    with the number of traps in the awaited coroutine, and with the number of
    concurrent portal tasks.
"""

from __future__ import annotations

import argparse
import json
import random
import sys
import time
import traceback
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import _common
from _common import AsyncFn, Impl, Loop

perf = time.perf_counter

DEPTHS = (1, 10, 100)
TRAPS = (1, 10, 100)
TASK_COUNTS = (10, 1_000, 10_000)


@dataclass
class Case:
    row: str
    column: str
    fn: AsyncFn  # runs in a fresh task, returns seconds per operation


def _empty() -> None:
    pass


async def _empty_async() -> None:
    pass


async def _no_yield() -> None:
    pass


def _deep(depth: int, fn: Callable[[], float]) -> float:
    """Call *fn* from *depth* nested sync frames (this one included)."""
    if depth <= 1:
        return fn()
    return _deep(depth - 1, fn)


async def _deep_async(depth: int, fn: AsyncFn) -> float:
    """Await ``fn()`` from *depth* nested coroutine frames (this one included)."""
    if depth <= 1:
        return await fn()  # type: ignore[no-any-return]
    return await _deep_async(depth - 1, fn)


class Builder:
    """Makes the cases of one loop; ``n`` is the batch size of a checkpoint case."""

    def __init__(self, loop: Loop, impls: dict[str, Impl], n: int) -> None:
        self.loop = loop
        self.impls = impls
        self.n = n
        self.cases: list[Case] = []
        checkpoint = loop.checkpoint

        async def traps(count: int) -> None:
            for _ in range(count):
                await checkpoint()

        self.traps = traps

    def add(self, row: str, column: str, fn: AsyncFn) -> None:
        self.cases.append(Case(row, column, fn))

    # -- building blocks --------------------------------------------------------

    def native_checkpoints(self, count: int) -> AsyncFn:
        checkpoint = self.loop.checkpoint

        async def run() -> float:
            t0 = perf()
            for _ in range(count):
                await checkpoint()
            return (perf() - t0) / count

        return run

    def sync_checkpoints(self, impl: Impl, count: int) -> Callable[[], float]:
        """Sync code that calls ``await_(checkpoint())`` *count* times; seconds per call."""
        checkpoint = self.loop.checkpoint
        await_ = impl.await_

        def run() -> float:
            t0 = perf()
            for _ in range(count):
                await_(checkpoint())
            return (perf() - t0) / count

        return run

    def sync_awaits(self, impl: Impl, make: Callable[[], Any], count: int) -> Callable[[], float]:
        await_ = impl.await_

        def run() -> float:
            t0 = perf()
            for _ in range(count):
                await_(make())
            return (perf() - t0) / count

        return run

    def native_awaits(self, make: Callable[[], Any], count: int) -> AsyncFn:
        async def run() -> float:
            t0 = perf()
            for _ in range(count):
                await make()
            return (perf() - t0) / count

        return run

    def in_portal(self, impl: Impl, body: Callable[[], float]) -> AsyncFn:
        async def run() -> float:
            return await impl.sync_in_portal(body)  # type: ignore[no-any-return]

        return run

    # -- the main table -------------------------------------------------------------

    def main(self) -> None:
        n = self.n
        traps = self.traps

        async def switch_pair() -> float:
            return _common.switch_pair_seconds(n)

        async def new_greenlet() -> float:
            return _common.new_greenlet_seconds(max(n // 10, 1))

        self.add("floor_switch", "floor", switch_pair)
        self.add("floor_greenlet", "floor", new_greenlet)
        self.add("checkpoint", "native", self.native_checkpoints(n))
        if self.loop.name != "trio":  # Trio steps only real coroutines
            checkpoints = self.native_checkpoints(n)

            async def shim_steps() -> float:
                import asyncio

                shim = _common.MinimalShim(checkpoints())
                task = asyncio.get_running_loop().create_task(shim)  # type: ignore[arg-type]
                return await task  # type: ignore[no-any-return]

            self.add("floor_shim", "floor", shim_steps)
        self.add("await_noyield", "native", self.native_awaits(_no_yield, n))
        self.add("await_ten", "native", self.native_awaits(lambda: traps(10), n // 10))
        for name, impl in self.impls.items():
            self.add_steps(name, impl)
            self.add("await_checkpoint", name, self.in_portal(impl, self.sync_checkpoints(impl, n)))
            run_sync_body = self.sync_checkpoints(impl, n)

            async def per_call_portal(impl: Impl = impl, body: Any = run_sync_body) -> float:
                return await impl.run_sync(body)  # type: ignore[no-any-return]

            self.add("await_checkpoint_sync", name, per_call_portal)
            self.add(
                "await_noyield", name, self.in_portal(impl, self.sync_awaits(impl, _no_yield, n))
            )
            self.add(
                "await_ten",
                name,
                self.in_portal(impl, self.sync_awaits(impl, lambda: traps(10), n // 10)),
            )
            self.add_creation(name, impl)
        self.add_new_task(None, "native")
        for name, impl in self.impls.items():
            if impl.ensure_portal is not None:
                self.add_new_task(impl, name)

    def add_steps(self, name: str, impl: Impl) -> None:
        """A native checkpoint in a task that has a portal, made each way the bridge can."""
        loop = self.loop
        checkpoints = self.native_checkpoints(self.n)
        if (ensure := impl.ensure_portal) is not None:

            async def ensured() -> float:
                await ensure()
                return await checkpoints()  # type: ignore[no-any-return]

            self.add("step_ensure_portal", name, ensured)
        if (bestow := impl.bestow_portal) is not None:

            async def bestowed() -> float:
                bestow(loop.current_task())
                await loop.checkpoint()  # the portal takes over at the next step
                return await checkpoints()  # type: ignore[no-any-return]

            self.add("step_bestow_portal", name, bestowed)
        if (run := impl.with_portal_run) is not None:

            async def inline() -> float:
                return await run(checkpoints)  # type: ignore[no-any-return]

            self.add("step_with_portal_run", name, inline)
        if (tree := impl.with_portal_run_tree) is not None:

            async def tree_run() -> float:
                return await tree(checkpoints)  # type: ignore[no-any-return]

            self.add("step_with_portal_run_tree", name, tree_run)

    def add_creation(self, name: str, impl: Impl) -> None:
        count = max(self.n // 10, 1)
        run_sync = impl.run_sync

        async def sync_portal() -> float:
            t0 = perf()
            for _ in range(count):
                await run_sync(_empty)
            return (perf() - t0) / count

        self.add("create_sync", name, sync_portal)
        if (run := impl.with_portal_run) is not None:

            async def async_portal() -> float:
                t0 = perf()
                for _ in range(count):
                    await run(_empty_async)
                return (perf() - t0) / count

            self.add("create_async", name, async_portal)

    def add_new_task(self, impl: Impl | None, column: str) -> None:
        """Start tasks in batches of 100 that take a portal (or, natively, checkpoint once)."""
        loop = self.loop
        batches = max(self.n // 1000, 1)
        size = 100
        if impl is None:
            body: AsyncFn = loop.checkpoint  # type: ignore[assignment]
        else:
            assert impl.ensure_portal is not None
            body = impl.ensure_portal  # type: ignore[assignment]

        async def run() -> float:
            fns = [body] * size
            t0 = perf()
            for _ in range(batches):
                await loop.run_all(fns)
            return (perf() - t0) / (batches * size)

        self.add("new_task", column, run)

    # -- scaling ----------------------------------------------------------------------

    def scaling(self) -> None:
        n = self.n
        for depth in DEPTHS:
            row = f"depth_{depth}"
            native = self.native_checkpoints(n)

            async def native_deep(depth: int = depth, native: AsyncFn = native) -> float:
                return await _deep_async(depth, native)

            self.add(row, "native", native_deep)
            for name, impl in self.impls.items():
                body = self.sync_checkpoints(impl, n)

                def deep(depth: int = depth, body: Callable[[], float] = body) -> float:
                    return _deep(depth, body)

                self.add(row, name, self.in_portal(impl, deep))
        for count in TRAPS:
            row = f"traps_{count}"
            awaits = max(n // count, 50)

            def make(count: int = count) -> Any:
                return self.traps(count)

            self.add(row, "native", self.native_awaits(make, awaits))
            for name, impl in self.impls.items():
                self.add(row, name, self.in_portal(impl, self.sync_awaits(impl, make, awaits)))
        for tasks in TASK_COUNTS:
            steps = max(10, 4 * n // tasks)
            self.add(f"tasks_{tasks}", "native", self.concurrent(None, tasks, steps))
            for name, impl in self.impls.items():
                self.add(f"tasks_{tasks}", name, self.concurrent(impl, tasks, steps))

    def concurrent(self, impl: Impl | None, tasks: int, steps: int) -> AsyncFn:
        """*tasks* tasks with a portal each take *steps* ``await_(checkpoint())``; s per step."""
        loop = self.loop
        checkpoint = loop.checkpoint

        async def run() -> float:
            start = loop.Event()
            ready = [0]
            body: AsyncFn
            if impl is None:

                async def native_body() -> None:
                    ready[0] += 1
                    await start.wait()
                    for _ in range(steps):
                        await checkpoint()

                body = native_body
            else:
                await_ = impl.await_

                def sync_body() -> None:
                    ready[0] += 1
                    await_(start.wait())
                    for _ in range(steps):
                        await_(checkpoint())

                def sync_body_after_wait() -> None:
                    for _ in range(steps):
                        await_(checkpoint())

                if (ensure := impl.ensure_portal) is not None:

                    async def portal_body() -> None:
                        await ensure()
                        ready[0] += 1
                        await start.wait()
                        sync_body_after_wait()

                    body = portal_body
                else:
                    run_sync = impl.run_sync

                    async def spawned_body() -> None:
                        await run_sync(sync_body)

                    body = spawned_body
            t0 = [0.0]

            async def starter() -> None:
                await loop.yield_until(lambda: ready[0] == tasks)
                t0[0] = perf()
                start.set()

            await loop.run_all([starter] + [body] * tasks)
            return (perf() - t0[0]) / (tasks * steps)

        return run


def run_rounds(
    loop: Loop, cases: list[Case], rounds: int, seed: int, log: Callable[[str], None]
) -> tuple[dict[str, dict[str, list[float]]], dict[str, dict[str, str]]]:
    """Run every case once per round, in a shuffled order; samples and failures by row/column."""
    samples: dict[str, dict[str, list[float]]] = {}
    failed: dict[str, dict[str, str]] = {}
    live = list(cases)
    rng = random.Random(seed)
    for number in range(rounds):
        order = list(live)
        rng.shuffle(order)

        async def one_round(order: list[Case] = order) -> None:
            for case in order:
                _common.collect()
                try:
                    value = await loop.in_new_task(case.fn)
                except Exception as error:
                    detail = traceback.format_exception_only(type(error), error)[-1].strip()
                    failed.setdefault(case.row, {})[case.column] = detail
                    samples.get(case.row, {}).pop(case.column, None)
                    live.remove(case)
                    log(f"  {case.row}/{case.column} failed, dropped: {detail}")
                    continue
                samples.setdefault(case.row, {}).setdefault(case.column, []).append(value)

        t0 = perf()
        loop.run(one_round)
        log(f"  round {number + 1}/{rounds} ({perf() - t0:.1f} s)")
    return samples, failed


def measure(
    loop_name: str, rounds: int, scaling_rounds: int, n: int, log: Callable[[str], None]
) -> dict[str, Any]:
    loop = Loop(loop_name)
    impls, skipped = _common.load_impls(loop_name)
    result: dict[str, Any] = {
        "loop": loop_name,
        "checkpoint": loop.checkpoint_text,
        "machine": _common.machine_info(),
        "versions": {name: impl.version for name, impl in impls.items()},
        "skipped": skipped,
        "n": n,
        "rounds": {"main": rounds, "scaling": scaling_rounds},
        "samples": {},
        "failed": {},
    }
    phases = [("main", rounds)]
    if scaling_rounds > 0:
        phases.append(("scaling", scaling_rounds))
    for phase, count in phases:
        builder = Builder(loop, impls, n)
        getattr(builder, phase)()
        log(f"{loop_name}: {phase}, {len(builder.cases)} cases x {count} rounds")
        samples, failed = run_rounds(loop, builder.cases, count, seed=len(phase), log=log)
        result["samples"].update(samples)
        result["failed"].update(failed)
    return result


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--loop", default="asyncio", choices=_common.LOOPS)
    parser.add_argument("--rounds", type=int, default=21, help="rounds of the main table")
    parser.add_argument(
        "--scaling-rounds", type=int, default=5, help="rounds of the scaling sections (0: skip)"
    )
    parser.add_argument("--n", type=int, default=5000, help="checkpoints per sample")
    parser.add_argument("--json", metavar="PATH", help="write the raw samples here, print no table")
    args = parser.parse_args()

    def log(text: str) -> None:
        print(text, file=sys.stderr, flush=True)

    result = measure(args.loop, args.rounds, args.scaling_rounds, args.n, log)
    if args.json:
        with open(args.json, "w") as out:
            json.dump(result, out)
        return
    import report

    report.print_report([result], {})


if __name__ == "__main__":
    main()
