"""Reference-leak workloads for greenportal, run by a debug CPython build.

``scripts/reliability.py --refleak`` runs this file with Debian's
``python3.11d`` (``sys.gettotalrefcount`` exists only in debug builds), once
with the compiled accelerator and once with ``GREENPORTAL_PURE_PYTHON=1``.
It can also be run by hand::

    python3.11d scripts/refleak_workloads.py [--warmups 3] [--rounds 4]
        [--iterations 300] [--tolerance 2] [--only SUBSTRING] [--json]

Each workload exercises greenportal's public API only, and is paired with a
native-async *twin* that makes the same awaits without greenportal.  One
round runs a workload's body ``--iterations`` times on a fresh event loop
(``asyncio``: a new loop; Trio: a new ``trio.run``); the twin's round does
the same.  After ``--warmups`` unmeasured rounds of each (caches, the
greenlet pool and the worker threads fill up), ``--rounds`` measured rounds
follow, workload and twin alternating.  Before each reading the garbage
collector runs and the type cache is cleared; the readings are
``sys.gettotalrefcount()`` and ``sys.getallocatedblocks()``.

As in CPython's ``regrtest -R``, a leak is a growth seen in *every* measured
round: a workload leaks when, in every round, its growth exceeds its twin's
by more than ``--tolerance`` references (or memory blocks).  A one-off
growth (a dict resizing, a free list filling) does not repeat every round.

Standard library, greenportal and greenlet only; Trio's workloads run when
Trio is importable.  The exit status is 1 if a workload leaks, 2 on an error.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import gc
import json
import os
import sys
import threading
import time
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field
from typing import Any

import greenportal

try:
    import trio
except ImportError:
    trio = None

Round = Callable[[int], None]


@dataclass
class Workload:
    name: str
    backend: str
    portal: Round
    native: Round
    what: str = ""
    refs: dict[str, list[int]] = field(default_factory=dict)
    blocks: dict[str, list[int]] = field(default_factory=dict)


WORKLOADS: list[Workload] = []
CLEANUPS: list[Callable[[], None]] = []


def implementation() -> str:
    """Which portal implementation is active: "compiled" or "pure Python"."""
    for name in ("greenportal", "greenportal._accel", "greenportal._portal"):
        try:
            module = __import__(name, fromlist=["SPEEDUPS"])
        except ImportError:
            continue
        flag = getattr(module, "SPEEDUPS", None)
        if flag is not None:
            return "compiled" if flag else "pure Python"
    return "unknown"


# ---- drivers: one round = N iterations of a step on a fresh event loop -----


def _quiet_handler(loop: asyncio.AbstractEventLoop, context: dict[str, Any]) -> None:
    # "Task was destroyed but it is pending!" is what the abandoned-task
    # workloads provoke on purpose, on both sides.
    pass


def asyncio_round(step: Callable[[], Awaitable[None]]) -> Round:
    def run(n: int) -> None:
        async def main() -> None:
            asyncio.get_running_loop().set_exception_handler(_quiet_handler)
            for _ in range(n):
                await step()

        loop = asyncio.new_event_loop()
        try:
            loop.run_until_complete(main())
            loop.run_until_complete(loop.shutdown_asyncgens())
            loop.run_until_complete(loop.shutdown_default_executor())
        finally:
            loop.close()

    return run


def trio_round(step: Callable[[], Awaitable[None]]) -> Round:
    def run(n: int) -> None:
        async def main() -> None:
            for _ in range(n):
                await step()

        trio.run(main)

    return run


def pair(
    name: str, backend: str, what: str, portal: Callable[..., Any], native: Callable[..., Any]
) -> None:
    make = asyncio_round if backend == "asyncio" else trio_round
    WORKLOADS.append(Workload(name, backend, make(portal), make(native), what))


def raw_pair(name: str, backend: str, what: str, portal: Round, native: Round) -> None:
    WORKLOADS.append(Workload(name, backend, portal, native, what))


_collects = [0]


def collect_now_and_then() -> None:
    """Collect garbage every 50th call: while the loop runs, and cheaply."""
    _collects[0] += 1
    if _collects[0] % 50 == 0:
        gc.collect()


# ---- the awaitables both sides await ----------------------------------------


class Boom(Exception):
    pass


async def value(x: int) -> int:
    return x + 1


async def fail(x: int) -> int:
    raise Boom(x)


class AsyncCM:
    def __init__(self, sleep: Callable[[float], Awaitable[Any]]) -> None:
        self.sleep = sleep

    async def __aenter__(self) -> int:
        await self.sleep(0)
        return 1

    async def __aexit__(self, *exc: object) -> None:
        await self.sleep(0)


async def agen(sleep: Callable[[float], Awaitable[Any]], n: int = 3) -> Any:
    for i in range(n):
        await sleep(0)
        yield i


# ---- asyncio workloads --------------------------------------------------------


def sync_await_basic(sleep: Callable[[float], Awaitable[Any]]) -> int:
    greenportal.await_(sleep(0))
    return greenportal.await_(value(1))


async def native_await_basic(sleep: Callable[[float], Awaitable[Any]]) -> int:
    await sleep(0)
    return await value(1)


def sync_exceptions() -> int:
    caught = 0
    for x in range(3):
        try:
            greenportal.await_(fail(x))
        except Boom:
            caught += 1
    return caught


async def native_exceptions() -> int:
    caught = 0
    for x in range(3):
        try:
            await fail(x)
        except Boom:
            caught += 1
    return caught


def sync_raise_out(sleep: Callable[[float], Awaitable[Any]]) -> None:
    greenportal.await_(sleep(0))
    raise Boom("out")


def sync_iter(sleep: Callable[[float], Awaitable[Any]]) -> int:
    return sum(greenportal.async_iter(agen(sleep)))


async def native_iter(sleep: Callable[[float], Awaitable[Any]]) -> int:
    return sum([i async for i in agen(sleep)])


def sync_context(sleep: Callable[[float], Awaitable[Any]]) -> int:
    with greenportal.async_context(AsyncCM(sleep)) as v:
        return v


async def native_context(sleep: Callable[[float], Awaitable[Any]]) -> int:
    async with AsyncCM(sleep) as v:
        return v


async def _blocking_target(x: int) -> int:
    await asyncio.sleep(0)
    return x * 2


blocking_double = greenportal.blocking(_blocking_target)


def sync_hub_waits(sleep: Callable[[float], Awaitable[Any]]) -> int:
    """SQLAlchemy's way of waiting, without SQLAlchemy: a bare switch to the parent.

    The portal's hub drives each awaitable itself (``Portal._native``); the
    attribute read goes through the provider (compiled: ``SwitchProvider``).
    """
    import greenlet

    me = greenlet.getcurrent()
    assert getattr(me, "__sqlalchemy_greenlet_provider__", False)
    hub = me.parent
    assert hub is not None
    hub.switch(sleep(0))
    result: int = hub.switch(value(1))
    try:
        hub.switch(fail(2))
    except Boom:
        result += 1
    return result


async def native_hub_waits(sleep: Callable[[float], Awaitable[Any]]) -> int:
    await sleep(0)
    result = await value(1)
    try:
        await fail(2)
    except Boom:
        result += 1
    return result


def shared_workloads(backend: str, sleep: Callable[[float], Awaitable[Any]]) -> None:
    """The workloads that read the same on both backends (only *sleep* differs)."""

    async def p_exc() -> None:
        await greenportal.with_portal_run_sync(sync_exceptions)
        try:
            await greenportal.with_portal_run_sync(sync_raise_out, sleep)
        except Boom:
            pass

    async def n_exc() -> None:
        await native_exceptions()
        try:
            await sleep(0)
            raise Boom("out")
        except Boom:
            pass

    pair("exceptions through await_", backend, "3 caught + 1 out of the job", p_exc, n_exc)

    async def p_hub() -> None:
        await greenportal.with_portal_run_sync(sync_hub_waits, sleep)

    async def n_hub() -> None:
        await native_hub_waits(sleep)

    pair("waits the hub drives", backend, "bare switches: a trap, a value, a raise", p_hub, n_hub)

    async def p_iter() -> None:
        await greenportal.with_portal_run_sync(sync_iter, sleep)

    async def n_iter() -> None:
        await native_iter(sleep)

    pair("async_iter", backend, "3-item async generator", p_iter, n_iter)

    async def p_ctx() -> None:
        await greenportal.with_portal_run_sync(sync_context, sleep)

    async def n_ctx() -> None:
        await native_context(sleep)

    pair("async_context", backend, "async with, both awaits", p_ctx, n_ctx)


def asyncio_workloads() -> None:
    sleep = asyncio.sleep

    async def p_await() -> None:
        await greenportal.with_portal_run_sync(sync_await_basic, sleep)

    async def n_await() -> None:
        await native_await_basic(sleep)

    pair("await_ (with_portal_run_sync)", "asyncio", "sleep(0) + a coroutine", p_await, n_await)

    async def job_ensure() -> int:
        await greenportal.ensure_portal()
        return sync_await_basic(sleep)

    async def p_ensure() -> None:
        await asyncio.create_task(job_ensure())

    async def n_ensure() -> None:
        await asyncio.create_task(native_await_basic(sleep))

    pair("ensure_portal in a new task", "asyncio", "task per iteration", p_ensure, n_ensure)

    async def inner_async() -> int:
        await sleep(0)
        return sync_await_basic(sleep)

    async def native_inner() -> int:
        await sleep(0)
        return await native_await_basic(sleep)

    async def p_run() -> None:
        await greenportal.with_portal_run(inner_async)

    async def n_run() -> None:
        await native_inner()

    pair("with_portal_run", "asyncio", "async fn calling sync await_", p_run, n_run)

    async def body() -> int:
        await sleep(0)
        return sync_await_basic(sleep)

    async def p_bestow() -> None:
        task = asyncio.create_task(body())
        greenportal.bestow_portal(task)
        await task

    async def n_bestow() -> None:
        await asyncio.create_task(native_inner())

    pair("bestow_portal", "asyncio", "on a task not yet started", p_bestow, n_bestow)

    shared_workloads("asyncio", sleep)

    def sync_blocking() -> int:
        return blocking_double(3)

    async def p_blocking() -> None:
        await greenportal.with_portal_run_sync(sync_blocking)

    async def n_blocking() -> None:
        await _blocking_target(3)

    pair(
        "blocking() in a portal",
        "asyncio",
        "blocking(async fn) called sync",
        p_blocking,
        n_blocking,
    )

    def in_thread_portal() -> int:
        return sync_await_basic(sleep)

    async def p_thread() -> None:
        await greenportal.to_thread(in_thread_portal)

    async def n_thread() -> None:
        loop = asyncio.get_running_loop()

        def in_thread() -> int:
            asyncio.run_coroutine_threadsafe(sleep(0), loop).result()
            return asyncio.run_coroutine_threadsafe(value(1), loop).result()

        await asyncio.to_thread(in_thread)

    pair("to_thread + await_ in it", "asyncio", "thread awaits on the loop", p_thread, n_thread)

    def sync_forever(started: asyncio.Event) -> None:
        started.set()
        greenportal.await_(sleep(3600))

    async def p_cancel() -> None:
        started = asyncio.Event()

        async def job() -> None:
            await greenportal.ensure_portal()
            sync_forever(started)

        task = asyncio.create_task(job())
        await started.wait()
        task.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await task

    async def n_cancel() -> None:
        started = asyncio.Event()

        async def job() -> None:
            started.set()
            await sleep(3600)

        task = asyncio.create_task(job())
        await started.wait()
        task.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await task

    pair("cancel a task in await_", "asyncio", "task.cancel() while suspended", p_cancel, n_cancel)

    # Only the awaited coroutine refers to the Event (and so to the future the
    # task waits on): the task is garbage once dropped.  (A sync frame that
    # held the future itself would keep the task alive while it is suspended:
    # docs/principle.rst, "References from sync frames".)
    def sync_wait() -> None:
        greenportal.await_(asyncio.Event().wait())

    async def p_abandon() -> None:
        async def job() -> None:
            await greenportal.ensure_portal()
            sync_wait()

        task = asyncio.create_task(job())
        await sleep(0)
        await sleep(0)
        del task  # only a reference cycle keeps it now
        collect_now_and_then()

    async def n_abandon() -> None:
        async def job() -> None:
            await asyncio.Event().wait()

        task = asyncio.create_task(job())
        await sleep(0)
        await sleep(0)
        del task
        collect_now_and_then()

    pair("abandoned portal task", "asyncio", "pending task collected", p_abandon, n_abandon)


def runner_workloads(backend: str) -> None:
    """Runner.run from a thread with no loop, against a hand-made loop thread."""
    runner = greenportal.Runner(backend)  # type: ignore[arg-type]
    CLEANUPS.append(runner.close)
    sleep = asyncio.sleep if backend == "asyncio" else trio.sleep

    async def portal_work() -> int:
        return await greenportal.with_portal_run_sync(sync_await_basic, sleep)

    def p_round(n: int) -> None:
        for _ in range(n):
            runner.run(portal_work)

    if backend == "asyncio":
        loop = asyncio.new_event_loop()
        thread = threading.Thread(target=loop.run_forever, daemon=True)
        thread.start()

        def stop() -> None:
            loop.call_soon_threadsafe(loop.stop)
            thread.join()
            loop.close()

        CLEANUPS.append(stop)

        async def native_task() -> int:
            return await asyncio.create_task(native_await_basic(sleep))

        def n_round(n: int) -> None:
            for _ in range(n):
                asyncio.run_coroutine_threadsafe(native_task(), loop).result()

    else:
        ready = threading.Event()
        box: dict[str, Any] = {}

        async def host() -> None:
            box["token"] = trio.lowlevel.current_trio_token()
            box["stop"] = trio.Event()
            ready.set()
            await box["stop"].wait()

        thread = threading.Thread(target=trio.run, args=(host,), daemon=True)
        thread.start()
        ready.wait()

        def stop() -> None:
            trio.from_thread.run_sync(box["stop"].set, trio_token=box["token"])
            thread.join()

        CLEANUPS.append(stop)

        async def native_task() -> int:
            return await native_await_basic(sleep)

        def n_round(n: int) -> None:
            for _ in range(n):
                trio.from_thread.run(native_task, trio_token=box["token"])

    raw_pair("Runner.run", backend, "from a thread with no loop", p_round, n_round)


def trio_workloads() -> None:
    sleep = trio.sleep

    async def p_await() -> None:
        await greenportal.with_portal_run_sync(sync_await_basic, sleep)

    async def n_await() -> None:
        await native_await_basic(sleep)

    pair("await_ (with_portal_run_sync)", "trio", "sleep(0) + a coroutine", p_await, n_await)

    async def job_ensure() -> None:
        await greenportal.ensure_portal()
        sync_await_basic(sleep)

    async def native_job() -> None:
        await native_await_basic(sleep)

    async def p_ensure() -> None:
        async with trio.open_nursery() as nursery:
            nursery.start_soon(job_ensure)

    async def n_ensure() -> None:
        async with trio.open_nursery() as nursery:
            nursery.start_soon(native_job)

    pair("ensure_portal in a new task", "trio", "nursery task per iteration", p_ensure, n_ensure)

    async def inner_async() -> int:
        await sleep(0)
        return sync_await_basic(sleep)

    async def p_run() -> None:
        await greenportal.with_portal_run(inner_async)

    async def n_run() -> None:
        await sleep(0)
        await native_await_basic(sleep)

    pair("with_portal_run", "trio", "async fn calling sync await_", p_run, n_run)

    shared_workloads("trio", sleep)

    def in_thread_portal() -> int:
        return sync_await_basic(sleep)

    async def p_thread() -> None:
        await greenportal.to_thread(in_thread_portal)

    def in_thread_native() -> int:
        trio.from_thread.run(sleep, 0)
        return trio.from_thread.run(value, 1)

    async def n_thread() -> None:
        await trio.to_thread.run_sync(in_thread_native)

    pair("to_thread + await_ in it", "trio", "thread awaits on the loop", p_thread, n_thread)

    async def p_cancel() -> None:
        async def job(task_status: Any = trio.TASK_STATUS_IGNORED) -> None:
            await greenportal.ensure_portal()
            task_status.started()
            greenportal.await_(trio.sleep_forever())

        async with trio.open_nursery() as nursery:
            await nursery.start(job)
            nursery.cancel_scope.cancel()

    async def n_cancel() -> None:
        async def job(task_status: Any = trio.TASK_STATUS_IGNORED) -> None:
            task_status.started()
            await trio.sleep_forever()

        async with trio.open_nursery() as nursery:
            await nursery.start(job)
            nursery.cancel_scope.cancel()

    pair("cancel a task in await_", "trio", "cancel scope while suspended", p_cancel, n_cancel)


# ---- measurement --------------------------------------------------------------


def reading() -> tuple[int, int]:
    gc.collect()
    gc.collect()
    sys._clear_type_cache()
    return sys.gettotalrefcount(), sys.getallocatedblocks()


def measure(w: Workload, warmups: int, rounds: int, iterations: int) -> None:
    sides = {"portal": w.portal, "native": w.native}
    for _ in range(warmups):
        for fn in sides.values():
            fn(iterations)
    # Preallocated, so that storing a result allocates nothing.
    w.refs = {side: [0] * rounds for side in sides}
    w.blocks = {side: [0] * rounds for side in sides}
    for i in range(rounds):
        for side, fn in sides.items():
            refs0, blocks0 = reading()
            fn(iterations)
            refs1, blocks1 = reading()
            w.refs[side][i] = refs1 - refs0
            w.blocks[side][i] = blocks1 - blocks0


def leaks(w: Workload, tolerance: int) -> list[str]:
    found = []
    for kind, table in (("refs", w.refs), ("blocks", w.blocks)):
        excess = [a - b for a, b in zip(table["portal"], table["native"], strict=True)]
        if excess and all(e > tolerance for e in excess):
            found.append(kind)
    return found


def main(argv: list[str]) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--warmups", type=int, default=3)
    parser.add_argument("--rounds", type=int, default=4)
    parser.add_argument("--iterations", type=int, default=300)
    parser.add_argument("--tolerance", type=int, default=2, help="per round, refs or blocks")
    parser.add_argument("--only", default="", help="run the workloads whose name contains this")
    parser.add_argument("--json", action="store_true", help="one JSON object per line")
    args = parser.parse_args(argv)
    if not hasattr(sys, "gettotalrefcount"):
        print("refleak_workloads: needs a debug build of CPython (python3.Xd)", file=sys.stderr)
        return 2

    impl = implementation()
    asyncio_workloads()
    runner_workloads("asyncio")
    if trio is not None:
        trio_workloads()
        runner_workloads("trio")
    selected = [w for w in WORKLOADS if args.only in w.name]
    leaked = 0
    try:
        for w in selected:
            start = time.monotonic()
            measure(w, args.warmups, args.rounds, args.iterations)
            seconds = time.monotonic() - start
            found = leaks(w, args.tolerance)
            leaked += bool(found)
            row = {
                "workload": w.name,
                "backend": w.backend,
                "implementation": impl,
                "what": w.what,
                "iterations": args.iterations,
                "refs": w.refs,
                "blocks": w.blocks,
                "leaks": found,
                "seconds": round(seconds, 2),
            }
            if args.json:
                print(json.dumps(row), flush=True)
            else:
                verdict = "LEAK " + "+".join(found) if found else "ok"
                print(
                    f"{w.backend:<8} {w.name:<32} refs {w.refs['portal']} vs {w.refs['native']}"
                    f"  blocks {w.blocks['portal']} vs {w.blocks['native']}"
                    f"  {verdict} ({seconds:.1f} s)",
                    flush=True,
                )
    finally:
        for cleanup in reversed(CLEANUPS):
            cleanup()
    if args.json:
        summary = {"implementation": impl, "trio": trio is not None, "pid": os.getpid()}
        print(json.dumps({"summary": summary, "workloads": len(selected), "leaked": leaked}))
    return 1 if leaked else 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
