"""await_ in asyncio's executor threads runs on the loop that started the work."""

from __future__ import annotations

import asyncio
import concurrent.futures
import contextvars
import threading
import time
from typing import Any

import pytest

import greenportal
from greenportal import LoopExecutor, await_

from .test_runner_wake import _CountingSelector

request_id: contextvars.ContextVar[str] = contextvars.ContextVar("request_id", default="-")


def take(queue: asyncio.Queue[int], n: int) -> list[int]:
    """Sync code that awaits the serving loop's queue n times."""
    return [await_(queue.get()) for _ in range(n)]


async def feed(queue: asyncio.Queue[int], n: int, ticks: list[float]) -> None:
    """A producer on the loop: proves the loop runs while the thread waits."""
    for i in range(n):
        await asyncio.sleep(0.005)
        ticks.append(time.monotonic())
        await queue.put(i)


async def _through(how: str, fn: Any, *args: Any) -> Any:
    loop = asyncio.get_running_loop()
    if how == "to_thread":
        return await asyncio.to_thread(fn, *args)
    if how == "run_in_executor":
        return await loop.run_in_executor(None, fn, *args)
    if how == "own pool":
        with concurrent.futures.ThreadPoolExecutor(1) as pool:
            return await loop.run_in_executor(pool, fn, *args)
    if how == "LoopExecutor.submit":
        with LoopExecutor(1) as pool:
            return await asyncio.wrap_future(pool.submit(fn, *args))
    assert how == "LoopExecutor via run_in_executor"
    with LoopExecutor(1) as pool:
        return await loop.run_in_executor(pool, fn, *args)


HOWS = [
    "to_thread",
    "run_in_executor",
    "own pool",
    "LoopExecutor.submit",
    "LoopExecutor via run_in_executor",
]


@pytest.mark.parametrize("how", HOWS)
def test_awaits_the_starting_loops_queue(aio_backend: Any, how: str) -> None:
    """The awaitable runs on the loop that started the thread; that loop keeps serving."""

    async def main() -> None:
        queue: asyncio.Queue[int] = asyncio.Queue()
        ticks: list[float] = []
        producer = asyncio.create_task(feed(queue, 5, ticks))
        assert await _through(how, take, queue, 5) == [0, 1, 2, 3, 4]
        await producer
        assert len(ticks) == 5

    aio_backend.run(main)


@pytest.mark.parametrize("how", ["to_thread", "run_in_executor"])
def test_each_await_costs_two_polls_of_the_loop(how: str) -> None:
    # After the first, the thread's requests reach the loop through its
    # wake-up channel, each one's first step runs in the wake-up (eagerly,
    # or through _asyncio._step_now), and the thread is released from there.
    # Awaiting a coroutine that never suspends then costs two polls of the
    # selector: the wake-up's, and the one before the task's done callback
    # (after the thread has gone on).  Through call_soon_threadsafe, a task
    # that waited an iteration for its first step and a release in the done
    # callback, it cost three.
    _CountingSelector.polls = 0

    async def done() -> int:
        return 1

    def work() -> int:
        assert await_(done()) == 1  # (this one opens the channel)
        before = _CountingSelector.polls
        for _ in range(50):
            assert await_(done()) == 1
        return _CountingSelector.polls - before

    loop = asyncio.SelectorEventLoop(_CountingSelector())
    try:
        polls = loop.run_until_complete(_through(how, work))
    finally:
        loop.close()
    assert polls <= 2 * 50 + 5


@pytest.mark.parametrize("thread_sensitive", [True, False])
def test_asgiref_sync_to_async(aio_backend: Any, thread_sensitive: bool) -> None:
    """asgiref's sync_to_async threads are run_in_executor threads: recognised."""
    asgiref_sync = pytest.importorskip("asgiref.sync")

    async def main() -> None:
        queue: asyncio.Queue[int] = asyncio.Queue()
        ticks: list[float] = []
        producer = asyncio.create_task(feed(queue, 3, ticks))
        call = asgiref_sync.sync_to_async(take, thread_sensitive=thread_sensitive)
        assert await call(queue, 3) == [0, 1, 2]
        await producer

    aio_backend.run(main)


def test_lock_of_the_loop_and_loop_thread(aio_backend: Any) -> None:
    """The awaitable's steps run on the loop's own thread, with its running loop."""

    def in_thread(lock: asyncio.Lock) -> tuple[int, object, int]:
        async def inspect() -> tuple[int, object]:
            async with lock:
                return threading.get_ident(), asyncio.get_running_loop()

        ident, loop = await_(inspect())
        return ident, loop, threading.get_ident()

    async def main() -> None:
        lock = asyncio.Lock()
        async with lock:  # the thread's first await_ waits for us
            future = asyncio.ensure_future(asyncio.to_thread(in_thread, lock))
            await asyncio.sleep(0.02)
            assert not future.done()
        ident, loop, thread = await future
        assert ident == threading.get_ident()
        assert loop is asyncio.get_running_loop()
        assert thread != ident

    aio_backend.run(main)


def test_context_of_to_thread_reaches_the_awaitable(aio_backend: Any) -> None:
    async def read() -> str:
        return request_id.get()

    def in_thread() -> str:
        return await_(read())

    async def main() -> None:
        request_id.set("r-42")
        assert await asyncio.to_thread(in_thread) == "r-42"

    aio_backend.run(main)


def test_exceptions_pass_through(aio_backend: Any) -> None:
    class Boom(Exception):
        pass

    async def fail() -> None:
        await asyncio.sleep(0)
        raise Boom("from the loop")

    def in_thread() -> str:
        try:
            await_(fail())
        except Boom as error:
            return f"caught {error}"
        return "not raised"

    async def main() -> None:
        assert await asyncio.to_thread(in_thread) == "caught from the loop"

    aio_backend.run(main)


def test_cancelling_the_task_cancels_the_await_in_flight(aio_backend: Any) -> None:
    log: list[str] = []
    finished = threading.Event()

    def blocked() -> None:
        try:
            await_(asyncio.sleep(30))
        except asyncio.CancelledError:
            log.append("cancelled")
        # Delivered once: the next await_ runs normally.
        await_(asyncio.sleep(0))
        log.append("went on")
        finished.set()

    async def main() -> None:
        task = asyncio.ensure_future(asyncio.to_thread(blocked))
        await asyncio.sleep(0.05)
        task.cancel()
        with pytest.raises(asyncio.CancelledError):
            await task
        # asyncio does not wait for the thread; it goes on on this loop.
        while not finished.is_set():
            await asyncio.sleep(0.005)

    aio_backend.run(main)
    assert log == ["cancelled", "went on"]


def test_cancel_while_in_sync_code_is_raised_at_next_await(aio_backend: Any) -> None:
    log: list[str] = []
    finished = threading.Event()
    cancelled = threading.Event()

    def busy() -> None:
        await_(asyncio.sleep(0))  # the route is set up
        cancelled.wait(10)  # plain sync work while the task is cancelled
        time.sleep(0.02)
        try:
            await_(asyncio.sleep(0))
        except asyncio.CancelledError:
            log.append("cancelled at the next await_")
        await_(asyncio.sleep(0))
        log.append("then ran normally")
        finished.set()

    async def main() -> None:
        with concurrent.futures.ThreadPoolExecutor(1) as pool:
            task = asyncio.ensure_future(asyncio.get_running_loop().run_in_executor(pool, busy))
            await asyncio.sleep(0.05)
            task.cancel()
            cancelled.set()
            with pytest.raises(asyncio.CancelledError):
                await task
            while not finished.is_set():
                await asyncio.sleep(0.005)

    aio_backend.run(main)
    assert log == ["cancelled at the next await_", "then ran normally"]


def test_plain_submit_while_a_loop_runs_refuses(aio_backend: Any) -> None:
    """A pool thread whose work no loop started does not guess a loop."""
    coros: list[Any] = []
    go = threading.Event()

    def in_thread() -> None:
        go.wait(10)
        coro = asyncio.sleep(0)
        coros.append(coro)
        await_(coro)

    async def main() -> None:
        with concurrent.futures.ThreadPoolExecutor(1) as pool:
            future = pool.submit(in_thread)
            # The thread looks while this coroutine runs (a uvloop loop run
            # with run_until_complete is seen only then: see _executor).
            go.set()
            time.sleep(0.1)
            while not future.done():
                await asyncio.sleep(0.01)
            with pytest.raises(RuntimeError, match="will not guess") as info:
                future.result()
        message = str(info.value)
        assert "MainThread" in message
        assert "LoopExecutor" in message and "asyncio.to_thread" in message
        assert coros[0].cr_frame is None  # closed: no "never awaited" warning

    aio_backend.run(main)


def test_late_chaining_is_waited_for(aio_backend: Any) -> None:
    """run_in_executor chains the future after submit(); a fast worker waits for it."""

    def in_thread() -> int:
        async def answer() -> int:
            await asyncio.sleep(0)
            return threading.get_ident()

        return await_(answer())

    async def main() -> None:
        with concurrent.futures.ThreadPoolExecutor(1) as pool:
            future = pool.submit(in_thread)
            time.sleep(0.05)  # the loop thread is slow to chain the future
            assert await asyncio.wrap_future(future) == threading.get_ident()

    aio_backend.run(main)


def test_plain_pool_in_a_sync_program_uses_the_default_runner() -> None:
    def in_thread() -> int:
        async def where() -> int:
            return threading.get_ident()

        return await_(where())

    with concurrent.futures.ThreadPoolExecutor(1) as pool:
        ident = pool.submit(in_thread).result(timeout=30)
    assert ident == greenportal.default_runner().run(_ident)


async def _ident() -> int:
    return threading.get_ident()


def test_future_of_another_loop_is_refused(aio_backend: Any) -> None:
    other = asyncio.new_event_loop()
    try:
        foreign = other.create_future()

        def in_thread() -> None:
            await_(foreign)

        async def main() -> None:
            with pytest.raises(RuntimeError, match=r"bound to .* but this executor thread") as info:
                await asyncio.to_thread(in_thread)
            assert repr(asyncio.get_running_loop()) in str(info.value)

        aio_backend.run(main)
    finally:
        other.close()


def test_loop_gone_before_the_thread_awaits(aio_backend: Any) -> None:
    """A thread that outlives its loop gets an error naming the loop, not a hang."""
    go = threading.Event()
    errors: list[BaseException] = []
    coros: list[Any] = []

    def late() -> None:
        go.wait(10)
        coro = asyncio.sleep(0)
        coros.append(coro)
        try:
            await_(coro)
        except RuntimeError as error:
            errors.append(error)

    async def main() -> None:
        # Not awaited: the loop ends while the thread still runs.
        asyncio.get_running_loop().run_in_executor(pool, late)
        await asyncio.sleep(0.01)

    with concurrent.futures.ThreadPoolExecutor(1) as pool:
        aio_backend.run(main)
        go.set()
    assert len(errors) == 1
    assert "closed" in str(errors[0]) or "no longer running" in str(errors[0])
    assert coros[0].cr_frame is None


def test_trio_run_elsewhere_is_seen() -> None:
    """A plain pool thread while trio.run runs in another thread refuses too."""
    trio = pytest.importorskip("trio")

    def in_thread() -> None:
        await_(asyncio.sleep(0))

    async def main() -> None:
        with concurrent.futures.ThreadPoolExecutor(1) as pool:
            future = pool.submit(in_thread)
            while not future.done():
                await trio.sleep(0.01)
            with pytest.raises(RuntimeError, match=r"trio\.run\(\) runs in thread"):
                future.result()

    trio.run(main)


def test_plain_threads_error_names_the_futures_loop(aio_backend: Any) -> None:
    """A plain thread's await_ of a loop's Future says which loop, in which thread."""
    errors: list[BaseException] = []

    async def main() -> None:
        future = asyncio.get_running_loop().create_future()

        def own_thread() -> None:
            try:
                await_(future)
            except RuntimeError as error:
                errors.append(error)

        thread = threading.Thread(target=own_thread, name="plain-thread")
        thread.start()
        await asyncio.to_thread(thread.join)
        assert len(errors) == 1
        message = str(errors[0])
        assert repr(asyncio.get_running_loop()) in message
        # uvloop keeps no _thread_id, so only asyncio's loops name the thread.
        if aio_backend.config != "uvloop":
            assert f"running in thread {threading.current_thread().name!r}" in message

    aio_backend.run(main)
