"""Faults: exceptions, closing, collection, Ctrl-C, dying threads, fork and exit, at volume.

Each fault is injected at every point of a small program or many times at
random points; after each, every ``finally`` block that started has run and
the process still works.  Single cases live elsewhere and are not repeated
here: tests/test_lifetime.py (a task collected while suspended),
tests/test_keyboard_interrupt.py (one SIGINT per backend), tests/test_runner.py
(a call in flight when the Runner closes, fork, interpreter exit) and
tests/test_threads.py (exceptions both ways through a worker thread).
"""

from __future__ import annotations

import asyncio
import gc
import json
import sys
import textwrap
import threading
from collections.abc import Callable, Coroutine
from typing import Any

import pytest

import greenportal
from greenportal import await_, ensure_portal, with_portal_run, with_portal_run_sync

from ..conftest import CONFIGS, Backend, gc_collect_harder, run_python
from ._support import count, volume

FAULT_CONFIGS = [c for c in ("asyncio-c", "asyncio-py", "trio") if c in CONFIGS]


class Boom(Exception):
    pass


# --- a program with many suspension points, written twice ---------------------
#
# ``program(depth)`` alternates async and sync layers down to *depth*; every
# layer has try/except/finally, and some finally blocks suspend themselves.
# The "portal" twin's sync layers call await_; the "native" twin is the same
# code as async def.  A manual driver steps either coroutine trap by trap, as
# an event loop would, and injects a fault at the k-th trap.


class Trap:
    """An awaitable that yields one named trap to whoever drives the coroutine."""

    def __init__(self, name: str) -> None:
        self.name = name

    def __await__(self) -> Any:
        return (yield self.name)


def make_program(
    log: list[Any], portal: bool, await_while_closing: bool = False
) -> Callable[[int, str], Coroutine[Any, Any, Any]]:
    """The program, as the portal twin or the native twin.

    Each sync layer does async cleanup: after its second call, or while an
    exception leaves it.  Only with *await_while_closing* does it also await
    while ``GeneratorExit`` leaves it (close() or collection), which native
    coroutines answer with ``RuntimeError("coroutine ignored GeneratorExit")``;
    see test_await_while_closing_unwinds_like_native.
    """

    async def leaf(tag: str) -> str:
        try:
            first = await Trap(tag + ".a")
            second = await Trap(tag + ".b")
            return f"{first}{second}"
        finally:
            log.append(("leaf finally", tag))

    def sync_layer(depth: int, tag: str) -> str:
        try:
            got = await_(async_layer(depth - 1, tag + "/s1"))
            try:
                got += await_(async_layer(depth - 1, tag + "/s2"))
            except Boom as exc:
                log.append(("caught", tag, str(exc)))
                got += "!"
            except GeneratorExit:
                log.append(("closing", tag))
                if await_while_closing:
                    await_(Trap(tag + ".cleanup"))
                raise
            except BaseException as exc:
                log.append(("cleanup after", tag, type(exc).__name__))
                await_(Trap(tag + ".cleanup"))
                raise
            else:
                got += await_(Trap(tag + ".cleanup"))
            finally:
                log.append(("sync inner finally", tag))
            return got
        finally:
            log.append(("sync finally", tag))

    async def native_sync_layer(depth: int, tag: str) -> str:
        try:
            got = await async_layer(depth - 1, tag + "/s1")
            try:
                got += await async_layer(depth - 1, tag + "/s2")
            except Boom as exc:
                log.append(("caught", tag, str(exc)))
                got += "!"
            except GeneratorExit:
                log.append(("closing", tag))
                if await_while_closing:
                    await Trap(tag + ".cleanup")
                raise
            except BaseException as exc:
                log.append(("cleanup after", tag, type(exc).__name__))
                await Trap(tag + ".cleanup")
                raise
            else:
                got += await Trap(tag + ".cleanup")
            finally:
                log.append(("sync inner finally", tag))
            return got
        finally:
            log.append(("sync finally", tag))

    async def async_layer(depth: int, tag: str) -> str:
        if depth <= 0:
            return await leaf(tag)
        try:
            if portal:
                got = sync_layer(depth, tag + "/a")
            else:
                got = await native_sync_layer(depth, tag + "/a")
            return got + await leaf(tag + "/t")
        finally:
            log.append(("async finally", tag))

    return async_layer


def drive(coro: Any, fault_at: int | None, fault: str, log: list[Any]) -> int:
    """Step *coro* trap by trap; at the *fault_at*-th trap inject *fault*. Returns traps seen."""
    traps = 0
    value: Any = None
    throw: BaseException | None = None
    while True:
        try:
            trap = coro.send(value) if throw is None else coro.throw(throw)
        except StopIteration as exc:
            log.append(("returned", exc.value))
            return traps
        except BaseException as exc:
            log.append(("raised", type(exc).__name__, str(exc)))
            return traps
        log.append(("trap", trap))
        throw = None
        value = f"<{traps}>"
        if traps == fault_at:
            if fault == "close":
                try:
                    coro.close()
                    log.append(("closed",))
                except BaseException as exc:
                    log.append(("close raised", type(exc).__name__, str(exc)))
                return traps
            throw = {
                "Boom": Boom("injected"),
                "CancelledError": asyncio.CancelledError("injected"),
                "KeyboardInterrupt": KeyboardInterrupt(),
            }[fault]
        traps += 1


FAULTS = ["Boom", "CancelledError", "KeyboardInterrupt", "close"]


@pytest.mark.timeout(volume(60, 1200))
@pytest.mark.parametrize("config", FAULT_CONFIGS)
def test_fault_thrown_at_every_suspension_point(config: str) -> None:
    """A fault thrown into the portal at trap k unwinds exactly as in the native twin."""
    depth = volume(2, 4)
    points_checked = 0

    async def main() -> None:
        nonlocal points_checked
        native_log: list[Any] = []
        points = drive(make_program(native_log, False)(depth, "r"), None, "", native_log)
        assert points > 10
        for fault in FAULTS:
            for k in range(points + 1):
                native: list[Any] = []
                drive(make_program(native, False)(depth, "r"), k, fault, native)
                through_portal: list[Any] = []
                program = make_program(through_portal, True)
                drive(with_portal_run(program, depth, "r"), k, fault, through_portal)
                assert through_portal == native, (fault, k)
                points_checked += 1

    Backend(config).run(main)
    assert leftover_portal_greenlets() == []
    count("faults: exceptions thrown at a suspension point", points_checked)


@pytest.mark.skipif(
    sys.version_info < (3, 11),
    reason="3.10 keeps call arguments on the caller's value stack, which the collector "
    "cannot see inside a suspended greenlet (documented gap; see test_lifetime.py)",
)
@pytest.mark.parametrize("config", FAULT_CONFIGS)
def test_dropped_and_collected_at_every_suspension_point(
    config: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A portal dropped while suspended at trap k is finalized as the native coroutine is."""
    depth = volume(2, 4)
    unraisable: list[Any] = []
    monkeypatch.setattr(
        sys,
        "unraisablehook",
        lambda u: unraisable.append((type(u.exc_value).__name__, str(u.exc_value))),
    )
    checked = 0

    def run_to(coro: Any, k: int, log: list[Any]) -> None:
        value = None
        for i in range(k + 1):
            try:
                log.append(("trap", coro.send(value)))
            except StopIteration:
                return
            value = f"<{i}>"

    async def main() -> None:
        nonlocal checked
        native_log: list[Any] = []
        points = drive(make_program(native_log, False)(depth, "r"), None, "", native_log)
        for k in range(points):
            logs = []
            for portal in (False, True):
                log: list[Any] = []
                program = make_program(log, portal)
                coro = with_portal_run(program, depth, "r") if portal else program(depth, "r")
                run_to(coro, k, log)
                del coro, program
                gc.collect()
                gc.collect()
                log.extend(unraisable)
                unraisable.clear()
                logs.append(log)
            assert logs[1] == logs[0], k
            checked += 1

    Backend(config).run(main)
    assert leftover_portal_greenlets() == []
    count("faults: suspended portals dropped and collected", checked)


def leftover_portal_greenlets() -> list[Any]:
    """Portal greenlets that still serve a portal, or idle ones parked anywhere but the pool."""
    from greenportal._portal import PortalGreenlet

    gc_collect_harder()
    return [
        g
        for g in gc.get_objects()
        if isinstance(g, PortalGreenlet)
        and not g.dead
        # (an idle one waits in _worker, or in the pure-Python job loop under it)
        and (g.portal_ref() is not None or g.gr_frame.f_code.co_name not in ("_worker", "_run_job"))
    ]


AWAIT_WHILE_CLOSING_CHILD = textwrap.dedent(
    """
    import asyncio, gc, json, sys
    sys.path.insert(0, sys.argv[2])
    from tests.reliability.test_faults import drive, make_program, leftover_portal_greenlets
    from greenportal import with_portal_run

    unraisable = []
    sys.unraisablehook = lambda u: unraisable.append(type(u.exc_value).__name__)
    how = sys.argv[1]
    differ = []

    def run_to(coro, k, log):
        value = None
        for i in range(k + 1):
            log.append(("trap", coro.send(value)))
            value = f"<{i}>"

    async def main():
        log = []
        points = drive(make_program(log, False, True)(2, "r"), None, "", log)
        for k in range(points):
            logs = []
            for portal in (False, True):
                log = []
                program = make_program(log, portal, True)
                coro = with_portal_run(program, 2, "r") if portal else program(2, "r")
                if how == "close":
                    drive(coro, k, "close", log)
                else:
                    run_to(coro, k, log)
                del coro, program
                for _ in range(3):
                    gc.collect()
                log.extend(unraisable)
                unraisable.clear()
                logs.append(log)
            if logs[0] != logs[1]:
                differ.append(k)

    asyncio.run(main())
    print(json.dumps({"differ": differ, "leaked": len(leftover_portal_greenlets())}))
    """
)


@pytest.mark.subprocess
@pytest.mark.parametrize("how", ["close", "collected"])
def test_await_while_closing_unwinds_like_native(how: str) -> None:
    """Cleanup that awaits while GeneratorExit leaves the frame, in a child interpreter.

    Native coroutines answer such an await with ``RuntimeError("coroutine
    ignored GeneratorExit")`` raised in the awaiting frame, which then unwinds
    every outer frame (their ``finally`` blocks run) before ``close()``
    returns or the finalizer ends.  The child compares both twins at every
    suspension point and counts portal greenlets left suspended.
    """
    if how == "collected" and sys.version_info < (3, 11):
        pytest.skip("3.10 cannot collect a suspended portal (documented gap)")
    import os

    root = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
    out = run_python("-c", AWAIT_WHILE_CLOSING_CHILD, how, root)
    assert out.returncode == 0, out.stderr[-3000:]
    report = json.loads(out.stdout.strip().splitlines()[-1])
    assert report == {"differ": [], "leaked": 0}


# --- closing the loop or the Runner with calls suspended -----------------------


@pytest.mark.skipif(
    sys.version_info < (3, 11),
    reason="3.10 cannot collect a suspended portal task (documented gap; see test_lifetime.py)",
)
@pytest.mark.parametrize("config", [c for c in ("asyncio-c", "asyncio-py") if c in CONFIGS])
def test_loop_closed_with_portal_tasks_suspended(config: str) -> None:
    """Tasks suspended in await_ when their loop is closed: collected, every finally runs."""
    n = volume(200, 5000)
    started: set[int] = set()
    finished: set[int] = set()
    backend = Backend(config)

    def sync_wait(i: int) -> None:
        try:
            started.add(i)
            for _ in range(i % 4):
                await_(asyncio.sleep(0))
            # Only the awaited coroutine references this Event: sync frames
            # that hold a task's futures keep it alive (documented gap).
            await_(asyncio.Event().wait())
        finally:
            finished.add(i)

    async def one(i: int) -> None:
        await ensure_portal()
        sync_wait(i)

    messages: list[str] = []
    for _ in range(volume(2, 5)):
        started.clear()
        finished.clear()
        messages.clear()
        loop = backend.new_loop()
        loop.set_exception_handler(lambda loop, ctx: messages.append(ctx["message"]))
        tasks = [loop.create_task(one(i)) for i in range(n)]
        loop.run_until_complete(asyncio.sleep(0.0))
        for _ in range(5):
            loop.run_until_complete(asyncio.sleep(0))
        assert len(started) == n
        loop.close()
        del tasks
        gc_collect_harder()
        assert finished == started
        assert all("destroyed but it is pending" in m for m in messages)
        count("faults: loops closed under suspended portal tasks")
        count("faults: portal tasks abandoned with their loop", n)
    # The process still works.
    assert backend.run(with_portal_run_sync, lambda: await_(asyncio.sleep(0, "fine"))) == "fine"


def close_runner_under_suspended_calls(kind: str, n_threads: int) -> None:
    """One round: threads blocked in Runner.run, half of them in portal tasks, then close()."""
    import anyio

    runner = greenportal.Runner(kind) if kind == "trio" else greenportal.Runner()
    started = threading.Semaphore(0)
    finished: list[int] = []
    outcomes: list[str] = []
    lock = threading.Lock()

    async def forever_async(i: int) -> None:
        try:
            started.release()
            await anyio.sleep_forever()
        finally:
            with lock:
                finished.append(i)

    def forever_sync(i: int) -> None:
        try:
            started.release()
            await_(anyio.sleep_forever())
        finally:
            with lock:
                finished.append(i)

    async def via_portal(i: int) -> None:
        await ensure_portal()
        forever_sync(i)

    def caller(i: int) -> None:
        try:
            runner.run(via_portal if i % 2 else forever_async, i)
            result = "returned"
        except greenportal.RunnerClosedError:
            result = "RunnerClosedError"
        except BaseException as exc:  # pragma: no cover - reported by the assert
            result = repr(exc)
        with lock:
            outcomes.append(result)

    threads = [threading.Thread(target=caller, args=(i,)) for i in range(n_threads)]
    for t in threads:
        t.start()
    for _ in range(n_threads):
        assert started.acquire(timeout=30)
    runner.close()
    for t in threads:
        t.join(30)
    assert outcomes == ["RunnerClosedError"] * n_threads
    assert sorted(finished) == list(range(n_threads))


@pytest.mark.parametrize("kind", ["asyncio", "trio"])
def test_runner_closed_with_many_calls_suspended(kind: str) -> None:
    """Many callers blocked in Runner.run when it closes: each gets RunnerClosedError."""
    if kind == "trio" and "trio" not in CONFIGS:
        pytest.skip("Trio is not installed")
    n_threads = volume(16, 64)
    baseline_threads = threading.active_count()
    for _ in range(volume(3, 20)):
        close_runner_under_suspended_calls(kind, n_threads)
        count("faults: Runner closes under suspended calls")
        count("faults: Runner calls suspended at close", n_threads)
    assert threading.active_count() == baseline_threads
    with greenportal.Runner() as fresh:
        assert fresh.run(asyncio.sleep, 0, "fine") == "fine"


# --- worker threads that die ----------------------------------------------------


@pytest.mark.timeout(volume(60, 600))
@pytest.mark.parametrize("config", [c for c in ("asyncio-c", "trio") if c in CONFIGS])
def test_worker_threads_dying_at_every_await(config: str) -> None:
    """A to_thread worker raising (Exception, SystemExit, KeyboardInterrupt) after k await_ calls.

    More failures than the thread limiter has tokens: a token lost per death
    would make the later calls hang.
    """
    import anyio

    kinds = [Boom, SystemExit, KeyboardInterrupt]
    per_kind_points = 6
    repeats = volume(1, 5)
    total = greenportal.default_thread_limiter().total
    finally_ran = 0
    deaths = 0

    def worker(k: int, kind: type[BaseException]) -> None:
        nonlocal finally_ran
        try:
            for i in range(per_kind_points):
                if i == k:
                    raise kind(f"died after {k}")
                await_(anyio.sleep(0))
        finally:
            finally_ran += 1

    async def main() -> None:
        nonlocal deaths
        baseline = threading.active_count()
        for _ in range(repeats * max(1, total // (len(kinds) * per_kind_points) + 1)):
            for kind in kinds:
                for k in range(per_kind_points):
                    try:
                        await greenportal.to_thread(worker, k, kind)
                    except kind as exc:
                        assert str(exc) == f"died after {k}"
                        deaths += 1
        assert deaths > total
        # Still usable, and idle workers do not pile up.
        assert await greenportal.to_thread(lambda: await_(anyio.sleep(0)) or "fine") == "fine"
        assert threading.active_count() <= baseline + total

    Backend(config).run(main)
    assert finally_ran == deaths
    count("faults: worker threads died", deaths)


# --- Ctrl-C at random moments, fork and exit: child interpreters -----------------

SIGINT_CHILD = textwrap.dedent(
    """
    import json, os, random, signal, sys, threading, time
    signal.signal(signal.SIGINT, signal.default_int_handler)
    import greenportal
    from greenportal import await_, ensure_portal

    config, moments, seed = sys.argv[1], int(sys.argv[2]), int(sys.argv[3])
    rng = random.Random(seed)
    started, finished = set(), set()

    if config == "trio":
        import trio
        protect = trio.lowlevel.enable_ki_protection
        checkpoint = trio.lowlevel.checkpoint
    else:
        import asyncio
        protect = lambda fn: fn
        checkpoint = lambda: asyncio.sleep(0)

    # The bookkeeping itself must not be cut in half by the signal: Trio
    # defers KeyboardInterrupt out of protected functions; asyncio.run turns
    # Ctrl-C into a cancellation of the main task.
    @protect
    def mark(where, key):
        where.add(key)

    def sync_step(task, step):
        try:
            mark(started, (task, step))
            for _ in range(3):
                await_(checkpoint())
            total = 0
            for i in range(2000):  # busy sync code in the portal
                total += i
        finally:
            # Both marks inside one try: a signal landing between the first
            # mark and a later try statement would skip the second in any
            # Python code, portal or not (seen once in 300 moments on 3.10).
            try:
                mark(finished, (task, step))
                await_(checkpoint())  # async cleanup from a finally
            finally:
                mark(finished, (task, step, "cleanup"))

    async def worker(task):
        await ensure_portal()
        for step in range(20):
            sync_step(task, step)

    async def main():
        if config == "trio":
            async with trio.open_nursery() as nursery:
                for t in range(20):
                    nursery.start_soon(worker, t)
        else:
            await asyncio.gather(*[worker(t) for t in range(20)])

    def run():
        if config == "trio":
            trio.run(main)
        else:
            asyncio.run(main())

    def only_keyboard_interrupts(exc):
        subs = getattr(exc, "exceptions", None)
        if subs is None:
            return isinstance(exc, KeyboardInterrupt)
        return all(only_keyboard_interrupts(e) for e in subs)

    def kill_after(delay):
        time.sleep(delay)
        os.kill(os.getpid(), signal.SIGINT)

    t0 = time.perf_counter()
    run()
    duration = time.perf_counter() - t0
    outcomes = {"interrupted": 0, "completed": 0, "late": 0}
    lost = []
    for moment in range(moments):
        started.clear()
        finished.clear()
        killer = threading.Thread(target=kill_after, args=(rng.uniform(0, duration * 1.1),))
        outcome = None
        try:
            try:
                killer.start()
                run()
                outcome = "completed"
            except BaseException as exc:
                # Trio raises it from the nursery, in a group, as natively.
                if not only_keyboard_interrupts(exc):
                    raise
                outcome = "interrupted"
            finally:
                killer.join()
        except KeyboardInterrupt:
            outcome = "late"  # after the run returned: nothing was in flight
        outcomes[outcome] += 1
        missing = [k for k in started if k not in finished or k + ("cleanup",) not in finished]
        if missing:
            lost.append((moment, outcome, sorted(missing)[:3]))
    run()  # the process is still usable
    print(json.dumps({"outcomes": outcomes, "lost": lost, "threads": threading.active_count()}))
    """
)


@pytest.mark.subprocess
@pytest.mark.timeout(volume(60, 1800))
@pytest.mark.parametrize("config", [c for c in ("asyncio-c", "trio") if c in CONFIGS])
def test_sigint_at_random_moments(config: str) -> None:
    if config != "trio" and sys.version_info < (3, 11):
        pytest.skip(
            "3.10's asyncio.run() has no Ctrl-C handling: a SIGINT raises in asyncio's "
            "own code, natively too"
        )
    moments = volume(25, 1000)
    out = run_python(
        "-W", "error", "-c", SIGINT_CHILD, config, str(moments), "6", timeout=volume(50, 1700)
    )
    assert out.returncode == 0, out.stderr[-3000:]
    report = json.loads(out.stdout.strip().splitlines()[-1])
    assert report["lost"] == []
    assert sum(report["outcomes"].values()) == moments
    assert report["outcomes"]["interrupted"] > 0
    assert report["threads"] == 1
    count("faults: SIGINT delivered at random moments", moments)


FORK_AND_EXIT_CHILD = textwrap.dedent(
    """
    import asyncio, os, sys, threading, warnings
    # Forking a process with threads warns on 3.12+; that is the point here.
    warnings.simplefilter("ignore", DeprecationWarning)
    import greenportal
    from greenportal import await_, ensure_portal

    mode, n = sys.argv[1], int(sys.argv[2])
    runner = greenportal.Runner()
    started = threading.Semaphore(0)
    release = None  # made on the runner's loop

    def log(*args):
        # one write per line: threads print concurrently
        sys.stdout.write(" ".join(map(str, args)) + "\\n")
        sys.stdout.flush()

    async def make_event():
        return asyncio.Event()

    release = runner.run(make_event)

    def sync_wait(i):
        try:
            started.release()
            await_(release.wait())
        finally:
            log("finally", i)

    async def in_portal(i):
        await ensure_portal()
        sync_wait(i)

    async def sleeper(i):
        try:
            started.release()  # only once the call runs on the loop
            await asyncio.sleep(3600)
        finally:
            log("async finally", i)

    def default_runner_wait(i):
        # await_ in a plain thread: on the default Runner
        try:
            await_(sleeper(i))
        finally:
            log("finally", i)

    def call(fn, i):
        try:
            fn(i)
        except greenportal.RunnerClosedError:
            log("closed", i)

    threads = []
    for i in range(n):
        if i % 2:
            fn = lambda i: runner.run(in_portal, i)
        else:
            fn = default_runner_wait
        t = threading.Thread(target=call, args=(fn, i), daemon=True)
        t.start()
        threads.append(t)
    for _ in range(n):
        started.acquire()

    if mode == "fork":
        pid = os.fork()
        if pid == 0:
            status = 1
            try:
                async def where():
                    await asyncio.sleep(0)
                    return "child ok"
                fresh = greenportal.Runner()
                assert fresh.run(where) == "child ok"
                assert greenportal.await_(where()) == "child ok"
                log("child ok")
                fresh.close()
                status = 0
            finally:
                os._exit(status)
        _, status = os.waitpid(pid, 0)
        log("child exit", os.waitstatus_to_exitcode(status))
        runner.run(lambda: release.set() or asyncio.sleep(0))
        for t in threads[1::2]:
            t.join(10)
        log("parent ok")
    else:
        log("exiting with work in flight")
    """
)


@pytest.mark.subprocess
@pytest.mark.parametrize("mode", ["fork", "exit"])
def test_fork_and_exit_with_calls_in_flight(mode: str) -> None:
    """fork() while threads wait in Runner.run and await_; interpreter exit with them waiting."""
    import os

    if mode == "fork" and not hasattr(os, "fork"):
        pytest.skip("needs os.fork")
    n = volume(8, 64)
    out = run_python("-W", "error", "-c", FORK_AND_EXIT_CHILD, mode, str(n), timeout=30)
    assert out.returncode == 0, out.stderr[-3000:]
    lines = out.stdout.splitlines()
    # At exit the Runners close and every suspended call unwinds on its loop:
    # the portal tasks' sync finally blocks (odd i) and the default Runner's
    # coroutines (even i) run their finally blocks.  The waiting threads are
    # daemons: they get RunnerClosedError ("closed i") and run their own
    # finally blocks only if they get the GIL before the interpreter is gone.
    unwound_at_exit = {f"async finally {i}" for i in range(0, n, 2)}
    racing = {f"finally {i}" for i in range(0, n, 2)} | {f"closed {i}" for i in range(n)}
    if mode == "fork":
        assert "child ok" in lines
        assert "child exit 0" in lines
        parent_ok = lines.index("parent ok")
        # released by the parent before it exits
        assert {f"finally {i}" for i in range(1, n, 2)} <= set(lines[:parent_ok])
        after = set(lines[parent_ok + 1 :])
    else:
        assert lines[0] == "exiting with work in flight"
        after = set(lines[1:])
        unwound_at_exit |= {f"finally {i}" for i in range(1, n, 2)}
    assert unwound_at_exit <= after
    assert after - unwound_at_exit <= racing
    assert "Traceback" not in out.stderr, out.stderr[-3000:]
    count(f"faults: {'fork()' if mode == 'fork' else 'interpreter exit'} with calls in flight", n)
