"""Load and scale: memory flat after warm-up, nothing leaked, nothing hangs.

Each scenario runs in a child interpreter, so that its resident set size is
its own: one warm-up round, then measured rounds.  After every round the
child collects garbage and reports its RSS, the memory tracemalloc sees, the
number of live greenlets (``greenlet.greenlet`` objects that are not dead,
found with ``gc.get_objects()``), of task objects and of threads.  The
parent asserts that none of them grows after the warm-up.
"""

from __future__ import annotations

import json
import os
import textwrap
from typing import Any

import pytest

from ..conftest import CONFIGS, run_python
from ._support import FULL, count, peak, volume

CHILD = textwrap.dedent(
    """
    import asyncio, gc, json, os, sys, threading, tracemalloc
    import greenlet
    import greenportal
    from greenportal import await_, ensure_portal

    scenario, config, n, rounds = sys.argv[1], sys.argv[2], int(sys.argv[3]), int(sys.argv[4])
    extra = int(sys.argv[5])

    def rss():
        with open("/proc/self/statm") as f:
            return int(f.read().split()[1]) * os.sysconf("SC_PAGE_SIZE")

    def measure(**more):
        for _ in range(3):
            gc.collect()
        objs = gc.get_objects()
        report = {
            "rss": rss(),
            "traced": tracemalloc.get_traced_memory()[0],
            "greenlets": sum(1 for o in objs if isinstance(o, greenlet.greenlet) and not o.dead),
            "tasks": sum(1 for o in objs if type(o).__name__ in ("Task", "_PyTask")),
            "objects": len(objs),
            "threads": threading.active_count(),
        }
        del objs
        report.update(more)
        print(json.dumps(report), flush=True)

    def run(main):
        if config == "trio":
            import trio
            return trio.run(main)
        return asyncio.run(main())

    if config == "trio":
        import trio
        Event, checkpoint = trio.Event, trio.lowlevel.checkpoint
    else:
        Event, checkpoint = asyncio.Event, lambda: asyncio.sleep(0)

    async def spawn_all(fn, count, *args):
        if config == "trio":
            async with trio.open_nursery() as nursery:
                for _ in range(count):
                    nursery.start_soon(fn, *args)
        else:
            await asyncio.gather(*[fn(*args) for _ in range(count)])

    # --- scenarios: each returns a dict of figures for one round ---------------

    def suspended():
        # n portal tasks all suspended in await_ at once, then released.
        state = {"in": 0, "finally": 0, "peak": 0}

        async def one(gate, all_in):
            await ensure_portal()
            try:
                state["in"] += 1
                state["peak"] = max(state["peak"], state["in"])
                if state["in"] == n:
                    all_in.set()
                await_(gate.wait())
                state["in"] -= 1
            finally:
                state["finally"] += 1

        async def main():
            gate, all_in = Event(), Event()
            async def release():
                await all_in.wait()
                gate.set()
            if config == "trio":
                async with trio.open_nursery() as nursery:
                    nursery.start_soon(release)
                    await spawn_all(one, n, gate, all_in)
            else:
                releaser = asyncio.ensure_future(release())
                await spawn_all(one, n, gate, all_in)
                await releaser

        run(main)
        assert state["finally"] == n and state["in"] == 0, state
        return {"peak": state["peak"], "calls": n}

    def many_awaits():
        # n await_ calls in one task; every 16th yields to the loop.
        async def step(i):
            if i % 16 == 0:
                await checkpoint()
            return i

        async def main():
            await ensure_portal()
            total = 0
            for i in range(n):
                total += await_(step(i))
            assert total == n * (n - 1) // 2

        run(main)
        return {"calls": n}

    runner = greenportal.Runner() if scenario == "runner" else None

    def runner_calls():
        # `extra` threads, each calling Runner.run n times.
        async def add(a, b):
            await asyncio.sleep(0)
            return a + b
        errors = []
        def worker(k):
            for i in range(n):
                if runner.run(add, k, i) != k + i:
                    errors.append((k, i))
        threads = [threading.Thread(target=worker, args=(k,)) for k in range(extra)]
        for t in threads:
            t.start()
        for t in threads:
            t.join()
        assert not errors, errors[:5]
        return {"calls": n * extra}

    work = {"suspended": suspended, "awaits": many_awaits, "runner": runner_calls}[scenario]
    # Phase 1, RSS and object counts: a warm-up round (it also starts the
    # Runner's loop thread), then the measured rounds.
    work()
    measure(round=0, phase="rss")
    for r in range(1, rounds + 1):
        measure(round=r, phase="rss", **work())
    # Phase 2, tracemalloc (its own tables would blur the RSS): the first
    # traced round is the baseline (caches and set tables grown to the
    # round's size are allocated again while tracing), then one more.
    tracemalloc.start()
    measure(round=0, phase="traced", **work())
    measure(round=1, phase="traced", **work())
    if runner is not None:
        runner.close()
        measure(round="closed")
    """
)

MiB = 1024 * 1024


def run_scenario(scenario: str, config: str, n: int, rounds: int, extra: int = 0) -> list[Any]:
    out = run_python(
        "-c",
        CHILD,
        scenario,
        config,
        str(n),
        str(rounds),
        str(extra),
        timeout=volume(50, 1800),
    )
    assert out.returncode == 0, out.stderr[-3000:]
    reports = [json.loads(line) for line in out.stdout.splitlines() if line.startswith("{")]
    assert len(reports) >= rounds + 3, out.stdout
    return reports


def assert_flat(reports: list[Any]) -> None:
    rss = [r for r in reports if r.get("phase") == "rss"]
    traced = [r for r in reports if r.get("phase") == "traced"]
    base = rss[0]
    for r in rss[1:] + traced:
        assert r["greenlets"] == base["greenlets"], reports
        assert r["tasks"] == base["tasks"], reports
        assert r["threads"] == base["threads"], reports
        # Python's own caches (interned strings, free lists) may grow a
        # little; a leak of one object per task or call would be thousands.
        assert r["objects"] - base["objects"] < 200, reports
    # The resident set after the measured rounds, against the warm-up's.
    # malloc's fragmentation moves it by a few MiB from round to round (the
    # counts above and tracemalloc below stay exact); a leak of a greenlet
    # stack per task would add far more.
    assert rss[-1]["rss"] - base["rss"] < max(24 * MiB, base["rss"] // 4), reports
    # What tracemalloc sees still allocated after a round, against the
    # round before: a leak of 8 bytes per task or call would show.
    assert traced[1]["traced"] - traced[0]["traced"] < 64 * 1024, reports


SCALE_CONFIGS = [c for c in ("asyncio-c", "trio") if c in CONFIGS]


@pytest.mark.subprocess
@pytest.mark.timeout(volume(60, 1800))
@pytest.mark.parametrize("config", SCALE_CONFIGS)
def test_many_tasks_suspended_in_await_then_released(config: str) -> None:
    n = volume(10_000, 100_000)
    if config != "trio" and os.environ.get("PYTHONASYNCIODEBUG"):
        # Debug mode records a traceback for every task and future: a tenth
        # of the tasks keeps a round within seconds (the child inherits it).
        n //= 10
    rounds = 3
    reports = run_scenario("suspended", config, n, rounds)
    assert_flat(reports)
    assert all(r["peak"] == n for r in reports if r["round"] != 0 or r["phase"] == "traced")
    count("scale: portal tasks suspended and released", n * (rounds + 3))
    peak("scale: portal tasks suspended at once", n)


@pytest.mark.subprocess
@pytest.mark.timeout(volume(60, 1800))
@pytest.mark.parametrize("config", SCALE_CONFIGS)
def test_many_awaits_in_one_task(config: str) -> None:
    n = volume(100_000, 1_000_000)
    rounds = 2
    reports = run_scenario("awaits", config, n, rounds)
    assert_flat(reports)
    count("scale: await_ calls in one task", n * (rounds + 3))


@pytest.mark.subprocess
@pytest.mark.timeout(volume(60, 1800))
def test_many_threads_calling_runner_run() -> None:
    threads = volume(8, 50)
    calls = volume(500, 10_000)
    rounds = 2 if FULL else 3
    # Each round is `threads` threads x calls/rounds calls; the warm-up and
    # the two traced rounds come on top.
    per_round = calls // rounds
    reports = run_scenario("runner", "asyncio-c", per_round, rounds, threads)
    assert_flat(reports)
    closed = reports[-1]
    assert closed["round"] == "closed"
    # Closing the Runner ends its loop thread: only the main thread is left.
    assert closed["threads"] == 1, reports
    count("scale: Runner.run calls from threads", threads * per_round * (rounds + 3))
    peak("scale: threads calling one Runner", threads)
