"""Memory: resident memory per task suspended inside ``await_``, in a fresh process.

One measurement per process, so that nothing else this suite did can hide
or inflate it.  ``benchmarks/run.py`` starts one process per loop, bridge
and task count; by hand::

    python benchmarks/bench_memory.py --loop asyncio --impl greenportal --tasks 10000

prints one line of JSON with, per task, in bytes:

``per_task``
    RSS with the tasks suspended, minus RSS before they were created.
``held_after``
    RSS once they have all finished (and a collection ran), minus RSS before.
    Allocators keep some freed memory, so this is not zero even natively.
``growth``
    the same batch is run four times in all: the slope (least squares) of
    the RSS after each batch finished, per task of a batch.  Memory that is
    reused reads about zero here; a leak of L bytes per task reads L.  The
    allocators make single batches move by a few hundred bytes per task.

The tasks wait on one event:

* ``native``: ``await event.wait()`` in a plain task;
* ``greenportal``, ``greenback``: ``await ensure_portal()``, then sync code
  that calls ``await_(event.wait())``;
* ``sqlalchemy``, ``awaitlet``: sync code run with ``greenlet_spawn`` /
  ``async_def`` that calls ``await_only`` / ``awaitlet`` of the wait;
* ``floor``: no event loop at all; bare greenlets, each suspended in a
  function of its own (one Python frame), the least a suspended portal can
  cost.

RSS is read from ``/proc/self/statm`` (Linux).
"""

from __future__ import annotations

import argparse
import gc
import json
import os
import statistics
import sys
import time
from collections.abc import Callable
from typing import Any

import _common
from _common import AsyncFn, Loop

WARM_UP = 200
BATCHES = 4  # of the measured size, one after the other


def rss() -> int:
    """Resident set size of this process, in bytes, after a full collection."""
    gc.collect()
    with open("/proc/self/statm") as statm:
        pages = int(statm.read().split()[1])
    return pages * os.sysconf("SC_PAGE_SIZE")


def measure_floor(tasks: int) -> dict[str, float]:
    import greenlet

    hub = greenlet.getcurrent()

    def hold() -> None:
        hub.switch()

    def batch(count: int, marks: list[int]) -> None:
        held = []
        for _ in range(count):
            gr = greenlet.greenlet(hold)
            gr.switch()
            held.append(gr)
        marks.append(rss())
        for gr in held:
            gr.switch()
        del held, gr
        marks.append(rss())

    batch(WARM_UP, [])
    before = rss()
    marks: list[int] = []
    for _ in range(BATCHES):
        batch(tasks, marks)
    return summarise(before, marks, tasks)


def summarise(before: int, marks: list[int], tasks: int) -> dict[str, float]:
    """*marks*: RSS with the tasks suspended, then after they finished, for each batch."""
    suspended, after = marks[0], marks[1]
    afters = marks[1::2]
    slope = statistics.linear_regression(range(len(afters)), afters).slope
    return {
        "per_task": (suspended - before) / tasks,
        "held_after": (after - before) / tasks,
        "growth": slope / tasks,
    }


def task_body(loop: Loop, impl_name: str, ready: list[int]) -> Callable[[Any], AsyncFn]:
    """A function of the event to wait on, giving the body of one suspended task."""
    if impl_name == "native":

        def native(event: Any) -> AsyncFn:
            async def body() -> None:
                ready[0] += 1
                await event.wait()

            return body

        return native
    impls, skipped = _common.load_impls(loop.name)
    if impl_name not in impls:
        raise SystemExit(f"{impl_name} is not available on {loop.name}: {skipped[impl_name]}")
    impl = impls[impl_name]
    await_ = impl.await_

    def bridged(event: Any) -> AsyncFn:
        def wait() -> None:
            ready[0] += 1
            await_(event.wait())

        async def body() -> None:
            await impl.sync_in_portal(wait)

        return body

    return bridged


def measure_tasks(loop_name: str, impl_name: str, tasks: int) -> dict[str, float]:
    loop = Loop(loop_name)
    ready = [0]
    make_body = task_body(loop, impl_name, ready)

    async def batch(count: int, marks: list[int]) -> None:
        event = loop.Event()
        ready[0] = 0
        body = make_body(event)

        async def release() -> None:
            await loop.yield_until(lambda: ready[0] == count)
            marks.append(rss())
            event.set()

        await loop.run_all([release] + [body] * count)
        marks.append(rss())

    async def main() -> dict[str, float]:
        await batch(WARM_UP, [])
        before = rss()
        marks: list[int] = []
        for _ in range(BATCHES):
            await batch(tasks, marks)
        return summarise(before, marks, tasks)

    return loop.run(main)  # type: ignore[no-any-return]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--loop", default="asyncio", choices=_common.LOOPS)
    parser.add_argument(
        "--impl", default="greenportal", choices=["native", *_common.IMPLS, "floor"]
    )
    parser.add_argument("--tasks", type=int, default=10_000)
    args = parser.parse_args()
    if not os.path.exists("/proc/self/statm"):
        raise SystemExit("memory rows need /proc/self/statm (Linux)")
    t0 = time.perf_counter()
    if args.impl == "floor":
        result = measure_floor(args.tasks)
    else:
        result = measure_tasks(args.loop, args.impl, args.tasks)
    result["seconds"] = time.perf_counter() - t0
    json.dump(result, sys.stdout)
    print()


if __name__ == "__main__":
    main()
