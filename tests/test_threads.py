"""await_ outside portals (worker threads, plain threads, loop threads) and to_thread.

Rows of the dispatch (see greenportal._threads and greenportal._backends):

1. a task with a portal: the portal, no thread hop;
2. a worker thread started from a task (greenportal.to_thread, anyio's and
   Trio's to_thread.run_sync): the starting loop, inside the starting task;
3. a thread with no event loop: the default Runner, one loop for everyone;
4. an event loop's thread outside any portal: RuntimeError.

Threads and tasks are ordered with events, never with sleeps.  Timeouts
below are either the behaviour under test (asyncio.timeout, wait_for and
move_on_after firing while the thread waits forever) or bounds on waits that
should never run out.
"""

from __future__ import annotations

import asyncio
import contextvars
import inspect
import math
import os
import sys
import textwrap
import threading
from collections.abc import Callable, Coroutine
from typing import Any, TypeVar

import anyio
import anyio.to_thread
import pytest

import greenportal
from greenportal import ThreadLimiter, _threads, asyncify, await_, ensure_portal, to_thread
from greenportal._backends import _asyncio as asyncio_backend

from .conftest import Backend, run_python

T = TypeVar("T")

try:
    import trio
except ImportError:
    trio = None  # type: ignore[assignment]

needs_trio = pytest.mark.skipif(trio is None, reason="Trio is not installed")

var: contextvars.ContextVar[str] = contextvars.ContextVar("var", default="unset")

# How a worker thread gets started: greenportal's own to_thread, anyio's, Trio's.
STARTERS = ["greenportal", "anyio", "trio"]


class Boom(Exception):
    pass


class OtherBoom(Exception):
    pass


@pytest.fixture(params=STARTERS)
def starter(request: pytest.FixtureRequest, backend: Backend) -> str:
    name: str = request.param
    if name == "trio" and not backend.is_trio:
        pytest.skip("trio.to_thread needs a Trio run")
    return name


async def start_thread(starter: str, fn: Callable[..., T], *args: Any) -> T:
    """Run ``fn(*args)`` in a worker thread started the *starter* way."""
    if starter == "greenportal":
        return await to_thread(fn, *args)
    if starter == "anyio":
        return await anyio.to_thread.run_sync(fn, *args)
    return await trio.to_thread.run_sync(fn, *args)


def where(backend: Backend) -> tuple[object, object, int]:
    """(loop or Trio token, current task, thread id), from async code."""
    if backend.is_trio:
        return (
            trio.lowlevel.current_trio_token(),
            trio.lowlevel.current_task(),
            threading.get_ident(),
        )
    return asyncio.get_running_loop(), asyncio.current_task(), threading.get_ident()


def runs_in_starting_task(backend: Backend, starter: str) -> bool:
    # anyio's from_thread.run under asyncio runs the awaitable in a new task
    # (inside the caller's cancel scope); greenportal cannot change that.
    return starter != "anyio" or backend.is_trio


async def double(x: int) -> int:
    await anyio.sleep(0)
    return 2 * x


async def explode(exc: BaseException) -> None:
    await anyio.sleep(0)
    raise exc


def coro_closed(coro: Coroutine[Any, Any, Any]) -> bool:
    return inspect.getcoroutinestate(coro) == inspect.CORO_CLOSED


# ---------------------------------------------------------------- row 1


def test_portal_task_uses_the_portal(backend: Backend, monkeypatch: pytest.MonkeyPatch) -> None:
    """With a portal, await_ never takes the outside-portal path nor hops threads."""

    def no_slow_path(aw: object) -> None:
        raise AssertionError("await_ left the portal")

    monkeypatch.setattr(_threads, "await_without_portal", no_slow_path)

    async def probe() -> tuple[object, object, int]:
        await anyio.sleep(0)
        return where(backend)

    async def main() -> None:
        await ensure_portal()
        here = where(backend)
        for _ in range(3):
            assert await_(probe()) == here

    backend.run(main)


def test_portal_awaits_to_thread_whose_thread_awaits(backend: Backend) -> None:
    """Sync code in a portal -> await_(to_thread(sync)) -> await_ in that thread."""

    async def probe() -> tuple[object, object, int]:
        await anyio.sleep(0)
        return where(backend)

    def in_thread() -> tuple[tuple[object, object, int], int]:
        return await_(probe()), threading.get_ident()

    async def main() -> None:
        await ensure_portal()
        here = where(backend)
        (loop, task, ident), thread = await_(to_thread(in_thread))
        assert (loop, task, ident) == here
        assert thread != here[2]

    backend.run(main)


# ---------------------------------------------------------------- row 2


def test_worker_awaits_on_starting_loop_and_task(backend: Backend, starter: str) -> None:
    """The awaitable runs on the loop (and in the task) that started the thread."""

    async def probe() -> tuple[object, object, int]:
        await anyio.sleep(0)
        return where(backend)

    def in_thread() -> tuple[tuple[object, object, int], int]:
        return await_(probe()), threading.get_ident()

    async def main() -> None:
        loop, task, ident = where(backend)
        (seen_loop, seen_task, seen_ident), thread = await start_thread(starter, in_thread)
        assert thread != ident
        assert seen_loop is loop
        assert seen_ident == ident
        if runs_in_starting_task(backend, starter):
            assert seen_task is task
        else:
            assert seen_task is not None

    backend.run(main)


def test_worker_contextvars(backend: Backend, starter: str) -> None:
    """The caller's vars reach the thread; the thread's vars reach its awaitables."""

    async def read() -> str:
        await anyio.sleep(0)
        return var.get()

    def in_thread() -> tuple[str, str, str]:
        inherited = var.get()
        var.set("thread")
        first = await_(read())
        var.set("thread again")
        return inherited, first, await_(read())

    async def main() -> None:
        var.set("caller")
        assert await start_thread(starter, in_thread) == ("caller", "thread", "thread again")
        assert var.get() == "caller"  # the thread worked on a copy

    backend.run(main)


def test_worker_uses_objects_of_the_starting_loop(backend: Backend, starter: str) -> None:
    """A stream and an event made by the starting task work from the thread."""

    async def main() -> None:
        send, receive = anyio.create_memory_object_stream[int](0)  # rendezvous
        done = anyio.Event()

        async def producer() -> None:
            async with send:
                for i in range(3):
                    await send.send(i)
            await done.wait()

        async def finish() -> None:
            done.set()

        def in_thread() -> list[int]:
            got = [await_(receive.receive()) for _ in range(3)]
            await_(finish())
            return got

        async with receive, anyio.create_task_group() as tg:
            tg.start_soon(producer)
            assert await start_thread(starter, in_thread) == [0, 1, 2]
        assert done.is_set()

    backend.run(main)


def test_worker_uses_asyncio_objects_of_the_starting_loop(aio_backend: Backend) -> None:
    """asyncio's loop-bound Queue, Lock and Future, made in the task, work in the thread."""

    async def main() -> None:
        loop = asyncio.get_running_loop()
        queue: asyncio.Queue[int] = asyncio.Queue()
        lock = asyncio.Lock()
        future: asyncio.Future[str] = loop.create_future()
        await lock.acquire()

        async def feeder() -> None:
            for i in range(3):
                await asyncio.sleep(0)
                queue.put_nowait(i)
            lock.release()
            future.set_result("done")

        def in_thread() -> tuple[list[int], str]:
            got = [await_(queue.get()) for _ in range(3)]
            await_(lock.acquire())
            lock.release()
            return got, await_(future)

        feeding = asyncio.create_task(feeder())
        assert await to_thread(in_thread) == ([0, 1, 2], "done")
        await feeding

    aio_backend.run(main)


def test_worker_exceptions_both_ways(backend: Backend, starter: str) -> None:
    """The awaitable's exception reaches the thread; the thread's reaches the task."""
    inner = Boom("from the awaitable")
    outer = OtherBoom("from the thread")

    def in_thread() -> None:
        with pytest.raises(Boom) as info:
            await_(explode(inner))
        assert info.value is inner
        raise outer

    async def main() -> None:
        with pytest.raises(OtherBoom) as info:
            await start_thread(starter, in_thread)
        assert info.value is outer

    backend.run(main)


def test_worker_many_awaits(backend: Backend, starter: str) -> None:
    def in_thread() -> list[int]:
        return [await_(double(i)) for i in range(100)]

    async def main() -> None:
        assert await start_thread(starter, in_thread) == [2 * i for i in range(100)]

    backend.run(main)


def test_worker_nested_to_thread(backend: Backend, starter: str) -> None:
    """Thread -> await_(coroutine that starts a thread) -> await_ in that thread."""

    async def probe() -> tuple[object, object, int]:
        await anyio.sleep(0)
        return where(backend)

    def innermost() -> tuple[object, object, int]:
        return await_(probe())

    async def middle() -> tuple[object, object, int]:
        return await start_thread(starter, innermost)

    def outer_thread() -> tuple[object, object, int]:
        return await_(middle())

    async def main() -> None:
        loop, task, ident = where(backend)
        seen_loop, seen_task, seen_ident = await start_thread(starter, outer_thread)
        assert seen_loop is loop
        assert seen_ident == ident
        if runs_in_starting_task(backend, starter):
            assert seen_task is task

    backend.run(main)


def test_worker_await_not_awaitable(backend: Backend) -> None:
    def in_thread() -> None:
        await_(42)  # type: ignore[arg-type]

    async def main() -> None:
        with pytest.raises(TypeError):
            await to_thread(in_thread)

    backend.run(main)


def test_asyncio_to_thread_uses_the_starting_loop(aio_backend: Backend) -> None:
    """asyncio.to_thread's threads await on the loop that started them (tests/test_executor.py)."""

    def in_thread() -> asyncio.AbstractEventLoop:
        return await_(running_loop())

    async def main() -> None:
        seen = await asyncio.to_thread(in_thread)
        assert seen is asyncio.get_running_loop()

    aio_backend.run(main)


def test_asyncify_thread_awaits(backend: Backend) -> None:
    @asyncify
    def in_thread(x: int) -> tuple[int, int]:
        return await_(double(x)), threading.get_ident()

    async def main() -> None:
        value, ident = await in_thread(21)
        assert value == 42
        assert ident != threading.get_ident()

    backend.run(main)


# ---------------------------------------------------------------- cancellation


class Blocker:
    """Sync code for a worker thread that blocks in await_ until cancelled.

    ``entered`` is set from inside the awaitable, on the loop, once the
    thread waits; ``log`` records what the thread saw.
    """

    def __init__(self) -> None:
        self._entered: anyio.Event | None = None
        self.log: list[str] = []
        self.caught: BaseException | None = None

    @property
    def entered(self) -> anyio.Event:
        # Made on first use, which is on the event loop.
        if self._entered is None:
            self._entered = anyio.Event()
        return self._entered

    async def block(self) -> None:
        self.entered.set()
        await anyio.sleep_forever()

    def __call__(self) -> None:
        try:
            await_(self.block())
            self.log.append("not cancelled")
        except BaseException as error:
            self.caught = error
            self.log.append("cancelled")
            raise
        finally:
            self.log.append("finally")


def test_cancel_task_reaches_thread_asyncio(aio_backend: Backend) -> None:
    blocker = Blocker()

    async def main() -> None:
        child = asyncio.create_task(to_thread(blocker))
        await blocker.entered.wait()
        child.cancel("stop")
        with pytest.raises(asyncio.CancelledError):
            await child
        assert child.cancelled()
        assert blocker.log == ["cancelled", "finally"]
        assert type(blocker.caught) is asyncio.CancelledError
        assert blocker.caught.args == ("stop",)

    aio_backend.run(main)


@pytest.mark.skipif(sys.version_info < (3, 11), reason="asyncio.timeout is 3.11+")
def test_asyncio_timeout_reaches_thread(aio_backend: Backend) -> None:
    blocker = Blocker()

    async def main() -> None:
        with pytest.raises(TimeoutError):
            async with asyncio.timeout(0.02):  # type: ignore[attr-defined]
                await to_thread(blocker)
        assert blocker.log == ["cancelled", "finally"]
        assert type(blocker.caught) is asyncio.CancelledError
        assert asyncio.current_task().cancelling() == 0  # type: ignore[union-attr]

    aio_backend.run(main)


def test_asyncio_wait_for_reaches_thread(aio_backend: Backend) -> None:
    blocker = Blocker()

    async def main() -> None:
        with pytest.raises(asyncio.TimeoutError):
            await asyncio.wait_for(to_thread(blocker), 0.02)
        assert blocker.log == ["cancelled", "finally"]
        assert type(blocker.caught) is asyncio.CancelledError

    aio_backend.run(main)


def test_cancel_scope_reaches_thread(backend: Backend, starter: str) -> None:
    """An anyio CancelScope around the call, cancelled from inside the awaitable."""
    blocker = Blocker()

    async def main() -> None:
        cancelled = anyio.get_cancelled_exc_class()
        block = blocker.block
        with anyio.CancelScope() as scope:

            async def cancel_then_block() -> None:
                scope.cancel()
                await block()

            blocker.block = cancel_then_block  # type: ignore[method-assign]
            await start_thread(starter, blocker)
            blocker.log.append("after the call")
        assert scope.cancelled_caught
        assert blocker.log == ["cancelled", "finally"]
        assert isinstance(blocker.caught, cancelled)

    backend.run(main)


def test_task_group_cancel_reaches_thread(backend: Backend, starter: str) -> None:
    blocker = Blocker()
    child_log: list[str] = []

    async def main() -> None:
        cancelled = anyio.get_cancelled_exc_class()

        async def child() -> None:
            try:
                await start_thread(starter, blocker)
                child_log.append("returned")
            except cancelled:
                child_log.append("cancelled")
                raise

        async with anyio.create_task_group() as tg:
            tg.start_soon(child)
            await blocker.entered.wait()
            tg.cancel_scope.cancel()
        assert blocker.log == ["cancelled", "finally"]
        assert isinstance(blocker.caught, cancelled)
        assert child_log == ["cancelled"]

    backend.run(main)


@needs_trio
@pytest.mark.parametrize("name", STARTERS)
def test_trio_move_on_after_reaches_thread(name: str) -> None:
    blocker = Blocker()

    async def main() -> None:
        with trio.move_on_after(0.02) as scope:
            await start_thread(name, blocker)
            blocker.log.append("after the call")
        assert scope.cancelled_caught
        assert blocker.log == ["cancelled", "finally"]
        assert isinstance(blocker.caught, trio.Cancelled)

    trio.run(main)


def test_cancel_during_sync_code_waits_for_thread(aio_backend: Backend) -> None:
    """The task cannot interrupt sync code: it waits, then raises the cancellation."""
    entered = threading.Event()
    go = threading.Event()
    log: list[str] = []

    async def mark() -> None:
        entered.set()

    def in_thread() -> str:
        await_(mark())
        go.wait(30)
        log.append("thread finished")
        return "result"

    async def main() -> None:
        child = asyncio.create_task(to_thread(in_thread))
        while not entered.is_set():
            await asyncio.sleep(0)
        child.cancel()
        for _ in range(10):
            await asyncio.sleep(0)
        assert not child.done()
        assert log == []
        go.set()
        with pytest.raises(asyncio.CancelledError):
            await child
        assert child.cancelled()
        assert log == ["thread finished"]

    aio_backend.run(main)


def test_cancel_during_sync_code_delivered_at_next_await(aio_backend: Backend) -> None:
    """A cancellation that arrived during sync code lands at the next await_, once."""
    entered = threading.Event()
    go = threading.Event()
    refused: list[Coroutine[Any, Any, int]] = []
    log: list[str] = []

    async def mark() -> None:
        entered.set()

    def in_thread() -> int:
        await_(mark())
        go.wait(30)
        coro = double(1)
        refused.append(coro)
        try:
            await_(coro)
        except asyncio.CancelledError:
            log.append("cancelled")
        return await_(double(21))

    async def main() -> None:
        child = asyncio.create_task(to_thread(in_thread))
        while not entered.is_set():
            await asyncio.sleep(0)
        child.cancel()
        for _ in range(3):
            await asyncio.sleep(0)
        go.set()
        assert await child == 42
        assert log == ["cancelled"]
        assert coro_closed(refused[0])

    aio_backend.run(main)


def test_cancellation_delivered_once_asyncio(aio_backend: Backend) -> None:
    """The thread may catch CancelledError and await_ again, as native code may."""
    blocker = Blocker()

    def in_thread() -> int:
        with pytest.raises(asyncio.CancelledError):
            blocker()
        return await_(double(21))

    async def main() -> None:
        child = asyncio.create_task(to_thread(in_thread))
        await blocker.entered.wait()
        child.cancel()
        assert await child == 42
        assert blocker.log == ["cancelled", "finally"]

    aio_backend.run(main)


# ---------------------------------------------------------------- row 3


async def running_loop() -> asyncio.AbstractEventLoop:
    await asyncio.sleep(0)
    return asyncio.get_running_loop()


def run_in_threads(fn: Callable[[], T], count: int) -> list[T]:
    """Run *fn* in *count* plain threads at once; return results, re-raise errors."""
    results: list[Any] = [None] * count
    errors: list[BaseException] = []

    def target(i: int) -> None:
        try:
            results[i] = fn()
        except BaseException as error:
            errors.append(error)

    threads = [threading.Thread(target=target, args=(i,)) for i in range(count)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(30)
    if errors:
        raise errors[0]
    return results


def test_no_loop_main_thread_uses_default_runner() -> None:
    first = await_(running_loop())
    assert first is greenportal.default_runner().loop
    assert await_(running_loop()) is first
    assert await_(double(21)) == 42


def test_no_loop_threads_share_default_runner() -> None:
    def in_thread() -> list[asyncio.AbstractEventLoop]:
        return [await_(running_loop()) for _ in range(3)]

    loops = {loop for seen in run_in_threads(in_thread, 4) for loop in seen}
    assert loops == {greenportal.default_runner().loop}
    assert await_(running_loop()) in loops


def test_no_loop_resources_survive_across_calls_and_threads() -> None:
    async def make() -> tuple[asyncio.Lock, asyncio.Queue[int]]:
        return asyncio.Lock(), asyncio.Queue()

    async def release() -> None:
        lock.release()  # on the loop: asyncio locks are not thread-safe

    lock, queue = await_(make())
    await_(lock.acquire())  # held, from the main thread

    def waiter() -> int:
        # Contended: binds the lock to the loop, then gets in.
        await_(lock.acquire())
        try:
            return await_(queue.get())
        finally:
            await_(release())

    results: list[int] = []
    thread = threading.Thread(target=lambda: results.append(waiter()))
    thread.start()
    await_(queue.put(7))
    await_(release())
    thread.join(30)
    assert results == [7]
    # Uncontended again, and still usable from the main thread.
    assert await_(asyncio.wait_for(lock.acquire(), 5)) is True
    await_(release())


def test_no_loop_future_of_another_loop_is_refused() -> None:
    other = asyncio.new_event_loop()
    try:
        future = other.create_future()
        with pytest.raises(RuntimeError, match="Future bound to another event loop"):
            await_(future)

        def in_thread() -> None:
            with pytest.raises(RuntimeError, match="another event loop"):
                await_(future)

        run_in_threads(in_thread, 1)
    finally:
        other.close()


def test_no_loop_resource_of_another_loop_gets_a_note() -> None:
    other = asyncio.new_event_loop()
    try:
        future = other.create_future()

        async def use() -> object:
            return await future

        with pytest.raises(RuntimeError, match="different loop") as info:
            await_(use())
        if sys.version_info >= (3, 11):
            notes = getattr(info.value, "__notes__", [])
            assert any("greenportal" in note and "loop" in note for note in notes)
    finally:
        other.close()


def test_worker_future_of_another_loop_is_refused(aio_backend: Backend) -> None:
    other = asyncio.new_event_loop()

    def in_thread() -> None:
        await_(other.create_future())

    async def main() -> None:
        with pytest.raises(RuntimeError, match="another event loop"):
            await to_thread(in_thread)

    try:
        aio_backend.run(main)
    finally:
        other.close()


# ---------------------------------------------------------------- row 4


def test_loop_task_without_portal_refuses(backend: Backend) -> None:
    async def main() -> None:
        coro = double(1)
        with pytest.raises(RuntimeError, match="portal") as info:
            await_(coro)
        assert "to_thread" in str(info.value)
        assert coro_closed(coro)

    backend.run(main)


def test_loop_callback_refuses(backend: Backend) -> None:
    """In a loop callback (no task at all), await_ refuses instead of stalling the loop."""
    outcome: list[BaseException | None] = []
    coros: list[Coroutine[Any, Any, int]] = []

    def callback() -> None:
        coro = double(1)
        coros.append(coro)
        try:
            await_(coro)
        except BaseException as error:
            outcome.append(error)
        else:
            outcome.append(None)

    async def main() -> None:
        if backend.is_trio:
            trio.lowlevel.current_trio_token().run_sync_soon(callback)
        else:
            asyncio.get_running_loop().call_soon(callback)
        while not outcome:
            await anyio.sleep(0)

    backend.run(main)
    error = outcome[0]
    assert isinstance(error, RuntimeError)
    message = str(error)
    assert "portal" in message
    assert "to_thread" in message
    if not backend.is_trio:
        # (Trio runs such callbacks in a system task: the no-portal message.)
        assert "running an asyncio event loop" in message
    assert coro_closed(coros[0])


# ---------------------------------------------------------------- to_thread


def test_to_thread_passes_args_and_kwargs(backend: Backend) -> None:
    def fn(a: int, b: int, *, c: int = 0) -> tuple[int, int, int]:
        return a, b, c

    async def main() -> None:
        assert await to_thread(fn, 1, 2, c=3) == (1, 2, 3)
        assert await to_thread(fn, 1, b=2) == (1, 2, 0)

    backend.run(main)


def test_to_thread_copies_context(backend: Backend) -> None:
    def fn() -> str:
        seen = var.get()
        var.set("changed in thread")
        return seen

    async def main() -> None:
        var.set("caller")
        assert await to_thread(fn) == "caller"
        assert var.get() == "caller"

    backend.run(main)


def test_to_thread_runs_in_another_thread(backend: Backend) -> None:
    async def main() -> None:
        assert await to_thread(threading.get_ident) != threading.get_ident()

    backend.run(main)


def test_to_thread_not_callable(backend: Backend) -> None:
    limiter = greenportal.default_thread_limiter()

    async def main() -> None:
        before = limiter.borrowed
        with pytest.raises(TypeError, match="callable"):
            await to_thread(42)  # type: ignore[arg-type]
        assert limiter.borrowed == before

    backend.run(main)


def test_to_thread_outside_any_loop() -> None:
    limiter = greenportal.default_thread_limiter()
    coro = to_thread(threading.get_ident)
    with pytest.raises(RuntimeError):
        coro.send(None)
    coro.close()
    assert limiter.borrowed == 0


def test_worker_threads_are_reused(backend: Backend) -> None:
    """Sequential calls land on the same cached thread."""

    async def main() -> None:
        threads = [await to_thread(threading.current_thread) for _ in range(200)]
        assert len({t.ident for t in threads}) == 1
        if not backend.is_trio:
            assert threads[0].name == "greenportal-worker"
            assert threads[0].daemon

    backend.run(main)


def test_worker_parks_before_announcing(
    aio_backend: Backend, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A worker is idle again before its task resumes, so the next call reuses it."""
    order: list[str] = []
    cache = _threads._ThreadCache()
    monkeypatch.setattr(_threads, "_threads", cache)
    park = cache.park
    thread_done = asyncio_backend.Host.thread_done

    def recording_park(worker: Any) -> None:
        order.append("park")
        park(worker)

    def recording_thread_done(host: Any) -> None:
        order.append("announce")
        thread_done(host)

    monkeypatch.setattr(cache, "park", recording_park)
    monkeypatch.setattr(asyncio_backend.Host, "thread_done", recording_thread_done)

    async def main() -> None:
        for _ in range(3):
            await to_thread(threading.get_ident)
            assert len(cache._idle) == 1
        assert order == ["park", "announce"] * 3

    aio_backend.run(main)


def test_idle_worker_thread_exits(aio_backend: Backend, monkeypatch: pytest.MonkeyPatch) -> None:
    cache = _threads._ThreadCache()
    cache.IDLE_SECONDS = 0.05
    monkeypatch.setattr(_threads, "_threads", cache)

    async def main() -> None:
        first = await to_thread(threading.current_thread)
        first.join(10)
        assert not first.is_alive()
        assert cache._idle == []
        second = await to_thread(threading.current_thread)
        assert second is not first

    aio_backend.run(main)


FORK_SCRIPT = """
import asyncio, os, signal, threading
import greenportal

def in_thread():
    return greenportal.await_(asyncio.sleep(0, "awaited"))

async def main():
    return await greenportal.to_thread(in_thread)

assert asyncio.run(main()) == "awaited"  # leaves an idle worker thread
pid = os.fork()
if pid == 0:
    signal.alarm(10)  # a hang shows as SIGALRM
    try:
        assert asyncio.run(main()) == "awaited"
    except BaseException:
        os._exit(1)
    os._exit(0)
_, status = os.waitpid(pid, 0)
print(os.waitstatus_to_exitcode(status))
"""


FORK_WHILE_BUSY_SCRIPT = """
import asyncio, os, signal, threading
import greenportal

limiter = greenportal.ThreadLimiter(1)
release = threading.Event()
busy = threading.Event()

def hold():
    busy.set()
    release.wait()

async def parent():
    task = asyncio.create_task(greenportal.asyncify(hold, limiter=limiter)())
    await asyncio.to_thread(busy.wait)
    # The only slot is taken by a thread that the child will not have.
    pid = os.fork()
    if pid == 0:
        signal.alarm(10)  # a hang shows as SIGALRM
        try:
            slot = limiter.borrowed
            ok = asyncio.run(child()) == "ran"
        except BaseException:
            os._exit(1)
        os._exit(0 if ok and slot == 0 else 2)
    release.set()
    await task
    return pid

async def child():
    return await greenportal.asyncify(lambda: "ran", limiter=limiter)()

pid = asyncio.run(parent())
_, status = os.waitpid(pid, 0)
print(os.waitstatus_to_exitcode(status))
"""


@pytest.mark.subprocess
@pytest.mark.skipif(not hasattr(os, "fork"), reason="needs fork()")
def test_limiter_slots_are_fresh_after_fork() -> None:
    """Slots held by the parent's threads do not exist in the child."""
    out = run_python(
        "-W", "ignore::DeprecationWarning", "-c", textwrap.dedent(FORK_WHILE_BUSY_SCRIPT)
    )
    assert (out.returncode, out.stdout, out.stderr) == (0, "0\n", "")


@pytest.mark.subprocess
@pytest.mark.skipif(not hasattr(os, "fork"), reason="needs fork()")
def test_to_thread_after_fork() -> None:
    """The child of a fork gets fresh worker threads, not the parent's idle list."""
    out = run_python("-W", "ignore::DeprecationWarning", "-c", textwrap.dedent(FORK_SCRIPT))
    assert (out.returncode, out.stdout, out.stderr) == (0, "0\n", "")


@needs_trio
def test_to_thread_in_trio_guest_run_on_asyncio() -> None:
    """A Trio guest run's tasks step in asyncio callbacks; to_thread must use Trio."""

    async def probe() -> object:
        await trio.sleep(0)
        return trio.lowlevel.current_task()

    def in_thread() -> object:
        return await_(probe())

    async def trio_main() -> bool:
        return await to_thread(in_thread) is trio.lowlevel.current_task()

    async def host() -> Any:
        loop = asyncio.get_running_loop()
        done: asyncio.Future[Any] = loop.create_future()
        trio.lowlevel.start_guest_run(
            trio_main,
            run_sync_soon_threadsafe=loop.call_soon_threadsafe,
            done_callback=done.set_result,
        )
        return (await done).unwrap()

    assert asyncio.run(host()) is True


# ---------------------------------------------------------------- ThreadLimiter


def test_limiter_validation() -> None:
    for bad in (0, -1, 1.5, True, "2", None):
        with pytest.raises(ValueError, match="ThreadLimiter"):
            ThreadLimiter(bad)  # type: ignore[arg-type]
    limiter = ThreadLimiter(3)
    assert limiter.total == 3
    assert limiter.borrowed == 0
    assert "0/3" in repr(limiter)
    with pytest.raises(ValueError, match="ThreadLimiter"):
        limiter.total = 0
    assert limiter.total == 3


def test_default_limiter() -> None:
    limiter = greenportal.default_thread_limiter()
    assert limiter is greenportal.default_thread_limiter()
    assert isinstance(limiter, ThreadLimiter)
    assert limiter.total == 40


def test_default_limiter_counts_to_thread(backend: Backend) -> None:
    limiter = greenportal.default_thread_limiter()

    async def main() -> None:
        before = limiter.borrowed
        assert await to_thread(lambda: limiter.borrowed) == before + 1
        assert limiter.borrowed == before

    backend.run(main)


def test_limiter_limits_concurrency(backend: Backend) -> None:
    """ThreadLimiter(2) with 6 calls: two threads at a time, in three rounds."""
    limiter = ThreadLimiter(2)
    lock = threading.Lock()
    gate = threading.Semaphore(0)
    running = 0
    peak = 0

    async def main() -> None:
        send, receive = anyio.create_memory_object_stream[int](math.inf)

        @asyncify(limiter=limiter)
        def work(i: int) -> int:
            nonlocal running, peak
            with lock:
                running += 1
                peak = max(peak, running)
            await_(send.send(i))
            assert gate.acquire(timeout=30)
            with lock:
                running -= 1
            return i

        results: list[int] = []

        async def call(i: int) -> None:
            results.append(await work(i))

        async with send, receive, anyio.create_task_group() as tg:
            for i in range(6):
                tg.start_soon(call, i)
            try:
                for _ in range(3):
                    await receive.receive()
                    await receive.receive()
                    for _ in range(10):  # room for an over-eager limiter to show
                        await anyio.sleep(0)
                    with lock:
                        assert running == 2
                    assert limiter.borrowed == 2
                    gate.release(2)
            except BaseException:
                gate.release(6)  # fail fast: let every thread go
                raise
        assert sorted(results) == list(range(6))
        assert peak == 2
        assert limiter.borrowed == 0

    backend.run(main)


def test_limiter_cancelled_waiter_takes_nothing(backend: Backend) -> None:
    limiter = ThreadLimiter(1)
    hold = threading.Event()
    ran: list[str] = []

    async def main() -> None:
        entered = anyio.Event()

        async def mark() -> None:
            entered.set()

        def holder() -> None:
            await_(mark())
            hold.wait(30)

        run_holder = asyncify(holder, limiter=limiter)
        run_other = asyncify(lambda: ran.append("other"), limiter=limiter)
        scope = anyio.CancelScope()

        other_done = anyio.Event()

        async def other() -> None:
            with scope:
                await run_other()
            other_done.set()

        async with anyio.create_task_group() as tg:
            tg.start_soon(run_holder)
            try:
                await entered.wait()
                tg.start_soon(other)
                while not limiter._waiters:
                    await anyio.sleep(0)
                assert len(limiter._waiters) == 1
                assert limiter.borrowed == 1
                scope.cancel()
                await other_done.wait()
                assert scope.cancelled_caught
                assert len(limiter._waiters) == 0
                assert limiter.borrowed == 1  # still the holder's, and only it
            finally:
                hold.set()
        assert limiter.borrowed == 0
        assert ran == []
        await run_other()
        assert ran == ["other"]
        assert limiter.borrowed == 0

    backend.run(main)


def test_limiter_waiter_cancelled_after_grant_gives_slot_back(backend: Backend) -> None:
    """A slot handed to a waiter that is cancelled before it wakes up goes back."""
    limiter = ThreadLimiter(1)
    release = threading.Event()
    ran: list[str] = []
    run_other = asyncify(lambda: ran.append("other"), limiter=limiter)

    async def main() -> None:
        entered = anyio.Event()

        async def mark() -> None:
            entered.set()

        def hold() -> None:
            await_(mark())
            release.wait(30)

        run_hold = asyncify(hold, limiter=limiter)
        if backend.is_trio:
            scope = trio.CancelScope()
            outcome: list[str] = []

            async def waiter_trio() -> None:
                with scope:
                    await run_other()
                outcome.append("cancelled" if scope.cancelled_caught else "not cancelled")

            async def holder_trio() -> None:
                await run_hold()
                # Released: the slot went to the waiter, which is not awake yet.
                assert limiter.borrowed == 1
                assert not limiter._waiters
                scope.cancel()

            async with trio.open_nursery() as nursery:
                nursery.start_soon(holder_trio)
                await entered.wait()
                nursery.start_soon(waiter_trio)
                while not limiter._waiters:
                    await trio.sleep(0)
                release.set()
            assert outcome == ["cancelled"]
        else:
            waiter: asyncio.Task[None] | None = None

            async def holder_asyncio() -> None:
                await run_hold()
                assert limiter.borrowed == 1
                assert not limiter._waiters
                assert waiter is not None
                waiter.cancel()

            holder = asyncio.create_task(holder_asyncio())
            await entered.wait()
            waiter = asyncio.create_task(run_other())
            while not limiter._waiters:
                await asyncio.sleep(0)
            release.set()
            await holder
            with pytest.raises(asyncio.CancelledError):
                await waiter
        assert limiter.borrowed == 0
        assert ran == []
        await run_other()
        assert ran == ["other"]
        assert limiter.borrowed == 0

    backend.run(main)


def test_limiter_shared_across_loops(backend: Backend) -> None:
    """A slot freed on one event loop (in another thread) wakes a waiter on this one."""
    limiter = ThreadLimiter(1)
    holding = threading.Event()
    release = threading.Event()

    def hold() -> str:
        holding.set()
        release.wait(30)
        return "other loop"

    async def other_loop_main() -> str:
        return await asyncify(hold, limiter=limiter)()

    results: list[str] = []
    other = threading.Thread(target=lambda: results.append(asyncio.run(other_loop_main())))
    other.start()

    async def main() -> None:
        assert await anyio.to_thread.run_sync(holding.wait, 30)
        assert limiter.borrowed == 1
        async with anyio.create_task_group() as tg:

            async def call() -> None:
                # Runs only once the other loop's thread has let go of the slot.
                assert await asyncify(release.is_set, limiter=limiter)()
                results.append("this loop")

            tg.start_soon(call)
            while not limiter._waiters:
                await anyio.sleep(0)
            release.set()

    try:
        backend.run(main)
    finally:
        release.set()
        other.join(30)
    assert sorted(results) == ["other loop", "this loop"]
    assert limiter.borrowed == 0


def test_limiter_raising_total_wakes_waiters(backend: Backend) -> None:
    limiter = ThreadLimiter(1)
    release = threading.Event()

    async def main() -> None:
        entered = anyio.Event()

        async def mark() -> None:
            entered.set()

        def hold() -> str:
            await_(mark())
            release.wait(30)
            return "held"

        run_hold = asyncify(hold, limiter=limiter)
        run_quick = asyncify(lambda: limiter.borrowed, limiter=limiter)
        results: list[object] = []

        async def holder() -> None:
            results.append(await run_hold())

        async with anyio.create_task_group() as tg:
            tg.start_soon(holder)
            await entered.wait()
            async with anyio.create_task_group() as inner:
                inner.start_soon(lambda: run_quick())
                while not limiter._waiters:
                    await anyio.sleep(0)
                limiter.total = 2
            # The quick call ran while the holder still held its slot.
            assert not release.is_set()
            assert limiter.borrowed == 1
            release.set()
        assert results == ["held"]
        assert limiter.borrowed == 0

    backend.run(main)


# ---------------------------------------------------------------- asyncify


def test_asyncify_bare_decorator(backend: Backend) -> None:
    def add(a: int, b: int = 0) -> tuple[int, int]:
        """Add two numbers."""
        return a + b, threading.get_ident()

    wrapped = asyncify(add)
    assert wrapped.__name__ == "add"
    assert wrapped.__doc__ == "Add two numbers."
    assert wrapped.sync is add  # type: ignore[attr-defined]
    assert inspect.iscoroutinefunction(wrapped)

    async def main() -> None:
        total, ident = await wrapped(1, b=2)
        assert total == 3
        assert ident != threading.get_ident()

    backend.run(main)


def test_asyncify_with_limiter(backend: Backend) -> None:
    limiter = ThreadLimiter(3)

    @asyncify(limiter=limiter)
    def borrowed(label: str) -> tuple[str, int]:
        """Report the limiter."""
        return label, limiter.borrowed

    assert borrowed.__name__ == "borrowed"
    assert borrowed.__doc__ == "Report the limiter."
    assert borrowed.sync("x") == ("x", 0)  # type: ignore[attr-defined]

    @asyncify()
    def plain() -> int:
        return greenportal.default_thread_limiter().borrowed

    async def main() -> None:
        assert await borrowed("y") == ("y", 1)
        assert limiter.borrowed == 0
        assert await plain() >= 1

    backend.run(main)


def test_asyncify_misuse() -> None:
    with pytest.raises(TypeError, match="ThreadLimiter"):
        asyncify(limiter=4)  # type: ignore[call-overload]
    with pytest.raises(TypeError, match="ThreadLimiter"):
        asyncify(print, limiter=object())  # type: ignore[call-overload]
    with pytest.raises(TypeError, match="callable"):
        asyncify(42)  # type: ignore[call-overload]
    with pytest.raises(TypeError, match="callable"):
        asyncify(limiter=ThreadLimiter(1))(42)  # type: ignore[arg-type]
