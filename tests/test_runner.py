"""greenportal.Runner: a long-lived event loop in a daemon thread, called from sync code.

Most tests run once per loop flavour: asyncio, asyncio on uvloop, and Trio.
The Ctrl-C, fork and interpreter-exit scenarios run in a child interpreter.
"""

from __future__ import annotations

import asyncio
import concurrent.futures
import contextvars
import functools
import inspect
import os
import re
import sys
import textwrap
import threading
import time
from collections.abc import AsyncIterator, Callable, Generator, Iterator
from contextlib import asynccontextmanager
from dataclasses import dataclass
from types import TracebackType
from typing import Any

import anyio
import pytest

import greenportal
from greenportal import Runner, RunnerClosedError

from .conftest import gc_collect_harder, run_python

FLAVORS = ["asyncio", "uvloop", "trio"]
try:
    import trio
except ImportError:  # the asyncio-only run
    FLAVORS.remove("trio")

WAIT = 10.0  # seconds: an upper bound for things that should take milliseconds


@dataclass
class Flavor:
    """One kind of Runner, and the spelling of a few loop-specific things."""

    name: str

    @property
    def is_trio(self) -> bool:
        return self.name == "trio"

    def make(self) -> Runner:
        if self.name == "trio":
            return Runner("trio")
        if self.name == "uvloop":
            import uvloop

            return Runner(loop_factory=uvloop.new_event_loop)
        return Runner()

    @property
    def cancelled(self) -> type[BaseException]:
        return trio.Cancelled if self.is_trio else asyncio.CancelledError

    def current_task(self) -> object:
        if self.is_trio:
            return trio.lowlevel.current_task()
        return asyncio.current_task()

    async def sleep(self, seconds: float) -> None:
        await (trio.sleep(seconds) if self.is_trio else asyncio.sleep(seconds))

    async def sleep_forever(self) -> None:
        await self.sleep(3600)

    async def shielded_sleep(self, seconds: float) -> None:
        """Sleep even in a cancelled task (for cleanup code)."""
        if self.is_trio:
            with trio.CancelScope(shield=True):
                await trio.sleep(seconds)
        else:
            await asyncio.sleep(seconds)

    def check_in_loop(self, runner: Runner) -> None:
        """Assert that the caller runs inside a task of *runner*'s loop."""
        assert runner.in_loop_thread()
        if self.is_trio:
            trio.lowlevel.current_task()
        else:
            assert asyncio.get_running_loop() is runner.loop


@pytest.fixture(params=FLAVORS)
def flavor(request: pytest.FixtureRequest) -> Flavor:
    return Flavor(request.param)


@pytest.fixture
def runner(flavor: Flavor) -> Iterator[Runner]:
    r = flavor.make()
    try:
        yield r
    finally:
        r.close()


async def loop_thread_id() -> int:
    return threading.get_ident()


async def add(a: int, b: int = 0, *, c: int = 0) -> int:
    await anyio.sleep(0)
    return a + b + c


def in_thread(fn: Callable[[], Any]) -> concurrent.futures.Future[Any]:
    """Run *fn* in a new thread; its outcome in a future."""
    future: concurrent.futures.Future[Any] = concurrent.futures.Future()

    def main() -> None:
        try:
            future.set_result(fn())
        except BaseException as error:
            future.set_exception(error)

    threading.Thread(target=main, daemon=True).start()
    return future


# ----------------------------------------------------------------- constructor


def test_constructor_checks_arguments() -> None:
    with pytest.raises(ValueError, match="backend"):
        Runner("curio")  # type: ignore[arg-type]
    with pytest.raises(ValueError, match="asyncio backend only"):
        Runner("trio", debug=True)
    with pytest.raises(ValueError, match="asyncio backend only"):
        Runner("trio", loop_factory=asyncio.new_event_loop)


def test_backend_and_loop_properties(flavor: Flavor, runner: Runner) -> None:
    assert runner.backend == ("trio" if flavor.is_trio else "asyncio")
    assert not runner.in_loop_thread()
    assert not runner.closed
    if flavor.is_trio:
        with pytest.raises(RuntimeError, match="asyncio runners"):
            runner.loop  # noqa: B018
    else:
        loop = runner.loop
        assert runner.run(asyncio.sleep(0, loop)) is loop
        if flavor.name == "uvloop":
            import uvloop

            assert isinstance(loop, uvloop.Loop)


def test_debug_flag() -> None:
    with Runner(debug=True) as runner:
        assert runner.loop.get_debug()
    with Runner(debug=False) as runner:
        assert not runner.loop.get_debug()


# ------------------------------------------------------------------------- run


def test_run_awaitable_on_the_loop_thread(flavor: Flavor, runner: Runner) -> None:
    async def work() -> tuple[int, bool]:
        flavor.check_in_loop(runner)
        await flavor.sleep(0)
        return threading.get_ident(), runner.in_loop_thread()

    tid, in_loop = runner.run(work())
    assert tid != threading.get_ident()
    assert in_loop
    # Every call runs on the same thread.
    assert runner.run(work())[0] == tid
    assert runner.run(loop_thread_id) == tid


def test_run_async_fn_with_args_and_kwargs(runner: Runner) -> None:
    assert runner.run(add, 1) == 1
    assert runner.run(add, 1, 2) == 3
    assert runner.run(add, 1, b=2, c=4) == 7


def test_run_any_awaitable(flavor: Flavor, runner: Runner) -> None:
    class Answer:
        def __await__(self) -> Generator[Any, None, int]:
            return self.inner().__await__()

        async def inner(self) -> int:
            await flavor.sleep(0)
            return 42

    assert runner.run(Answer()) == 42


def test_run_exception_propagates(runner: Runner) -> None:
    class Boom(Exception):
        pass

    async def fail(message: str) -> None:
        await anyio.sleep(0)
        raise Boom(message)

    with pytest.raises(Boom, match="first") as info:
        runner.run(fail("first"))
    assert any(entry.name == "fail" for entry in info.traceback)
    with pytest.raises(Boom, match="second"):
        runner.run(fail, "second")
    assert runner.run(add, 2, 3) == 5


@pytest.mark.parametrize("exc_type", [KeyboardInterrupt, SystemExit])
def test_run_base_exception_reaches_caller(runner: Runner, exc_type: type[BaseException]) -> None:
    async def fail() -> None:
        await anyio.sleep(0)
        raise exc_type("from the loop")

    with pytest.raises(exc_type, match="from the loop"):
        runner.run(fail())
    # The loop thread survived it.
    assert runner.run(add, 1, 1) == 2
    with pytest.raises(exc_type):
        runner.submit(fail()).result(WAIT)
    assert runner.run(add, 2, 2) == 4


def test_run_bad_input(runner: Runner) -> None:
    with pytest.raises(TypeError, match="awaitable or an async function"):
        runner.run(42)  # type: ignore[call-overload]
    with pytest.raises(TypeError, match="awaitable or an async function"):
        runner.submit(None)  # type: ignore[call-overload]

    coro = add(1)
    with pytest.raises(TypeError, match="arguments only with an async function"):
        runner.run(coro, 2)  # type: ignore[call-overload]
    # The refused coroutine is closed, not left to warn "never awaited".
    assert inspect.getcoroutinestate(coro) == inspect.CORO_CLOSED

    def not_async() -> int:
        return 5

    with pytest.raises(TypeError, match="returned 'int', which is not awaitable"):
        runner.run(not_async)  # type: ignore[arg-type]

    def raises_on_call() -> Any:
        raise LookupError("from the call")

    with pytest.raises(LookupError, match="from the call"):
        runner.run(raises_on_call)
    assert runner.run(add, 1, 2) == 3


def test_run_sees_callers_contextvars(runner: Runner) -> None:
    var: contextvars.ContextVar[str] = contextvars.ContextVar("var", default="unset")

    async def read_and_write() -> str:
        value = var.get()
        var.set("changed on the loop")
        return value

    var.set("main thread")
    assert runner.run(read_and_write()) == "main thread"
    assert runner.run(read_and_write) == "main thread"
    assert runner.submit(read_and_write).result(WAIT) == "main thread"
    # The work runs in a copy: its changes stay there.
    assert var.get() == "main thread"

    def other_thread() -> str:
        var.set("other thread")
        return runner.run(read_and_write)

    assert in_thread(other_thread).result(WAIT) == "other thread"


def test_loop_bound_resources_survive_between_calls(flavor: Flavor, runner: Runner) -> None:
    if flavor.is_trio:

        async def make() -> Any:
            return trio.Event(), trio.Lock()

    else:

        async def make() -> Any:
            # asyncio primitives bind to the loop they are first used on.
            loop = asyncio.get_running_loop()
            return asyncio.Event(), asyncio.Lock(), loop.create_future()

    resources = runner.run(make)
    event, lock = resources[0], resources[1]

    async def hold_lock_until_event() -> str:
        async with lock:
            await event.wait()
        return "released"

    async def take_lock() -> str:
        async with lock:
            return "taken"

    holder = runner.submit(hold_lock_until_event)
    while not runner.run(_locked(lock)):
        time.sleep(0.001)
    taker = runner.submit(take_lock)
    time.sleep(0.01)
    assert not taker.done()  # it waits for the lock, on the same loop

    async def set_event() -> None:
        event.set()

    runner.run(set_event)
    assert holder.result(WAIT) == "released"
    assert taker.result(WAIT) == "taken"

    if not flavor.is_trio:
        future = resources[2]

        async def resolve() -> None:
            future.set_result("resolved")

        runner.run(resolve)
        assert runner.run(future) == "resolved"


async def _locked(lock: Any) -> bool:
    return bool(lock.locked())


# ---------------------------------------------------------------------- submit


def test_submit_result_and_exception(runner: Runner) -> None:
    future = runner.submit(add, 1, b=2)
    assert isinstance(future, concurrent.futures.Future)
    assert future.result(WAIT) == 3

    async def fail() -> None:
        raise ValueError("submitted")

    failed = runner.submit(fail())
    error = failed.exception(WAIT)
    assert isinstance(error, ValueError)
    assert str(error) == "submitted"

    # Many at once run concurrently on the loop: each waits for all the others.
    count = 10
    arrived: list[int] = []

    async def gather(i: int) -> int:
        arrived.append(i)
        while len(arrived) < count:
            await anyio.sleep(0.001)
        return i

    futures = [runner.submit(gather, i) for i in range(count)]
    assert [f.result(WAIT) for f in futures] == list(range(count))


def test_cancelling_the_future_cancels_the_work(flavor: Flavor, runner: Runner) -> None:
    started = threading.Event()
    finished = threading.Event()
    seen: list[object] = []

    async def work() -> str:
        started.set()
        try:
            await flavor.sleep_forever()
        except BaseException as error:
            seen.append(type(error))
            raise
        finally:
            seen.append(runner.in_loop_thread())
            finished.set()
        return "not cancelled"

    future = runner.submit(work)
    assert started.wait(WAIT)
    assert future.cancel()
    assert finished.wait(WAIT)
    assert seen == [flavor.cancelled, True]
    assert future.cancelled()
    with pytest.raises(concurrent.futures.CancelledError):
        future.result()
    assert runner.run(add, 1, 1) == 2


def test_cancelled_before_it_starts(runner: Runner) -> None:
    cancel_before_start(runner)


def cancel_before_start(runner: Runner) -> None:
    """Cancel a job queued behind one that blocks the loop: it never runs."""
    # Keep the loop busy so the next job cannot start before it is cancelled.
    busy, gate = threading.Event(), threading.Event()

    async def block_loop() -> None:
        busy.set()
        gate.wait(WAIT)  # blocks the loop thread on purpose

    ran: list[bool] = []

    async def work() -> None:
        ran.append(True)

    blocker = runner.submit(block_loop)
    assert busy.wait(WAIT)
    future = runner.submit(work)
    assert future.cancel()
    gate.set()
    blocker.result(WAIT)
    assert runner.run(add, 1, 1) == 2
    assert ran == []
    assert future.cancelled()
    with pytest.raises(concurrent.futures.CancelledError):
        future.result()


def test_work_cancelled_on_the_loop_cancels_the_future(flavor: Flavor, runner: Runner) -> None:
    if flavor.is_trio:
        pytest.skip("Trio has no way to cancel a task from outside its cancel scopes")

    async def cancel_myself() -> None:
        task = asyncio.current_task()
        assert task is not None
        task.cancel()
        await asyncio.sleep(1)

    future = runner.submit(cancel_myself)
    with pytest.raises(concurrent.futures.CancelledError):
        future.result(WAIT)
    assert future.cancelled()


# ------------------------------------------------------------------- wrap_iter


def test_wrap_iter_iterates_in_one_task_on_the_loop(flavor: Flavor, runner: Runner) -> None:
    where: list[tuple[object, bool]] = []

    async def agen() -> AsyncIterator[int]:
        for i in range(5):
            where.append((flavor.current_task(), runner.in_loop_thread()))
            await flavor.sleep(0)
            yield i

    assert list(runner.wrap_iter(agen())) == [0, 1, 2, 3, 4]
    assert len(where) == 5
    assert all(in_loop for _, in_loop in where)
    assert len({id(task) for task, _ in where}) == 1


def test_wrap_iter_yields_none_items(runner: Runner) -> None:
    async def agen() -> AsyncIterator[int | None]:
        yield None
        yield 0
        yield None

    assert list(runner.wrap_iter(agen())) == [None, 0, None]

    async def empty() -> AsyncIterator[int]:
        return
        yield  # pragma: no cover

    assert list(runner.wrap_iter(empty())) == []


def test_wrap_iter_break_closes_the_generator(flavor: Flavor, runner: Runner) -> None:
    log: list[object] = []

    async def agen() -> AsyncIterator[int]:
        try:
            for i in range(100):
                yield i
        finally:
            await flavor.sleep(0)  # cleanup may await: the loop runs it
            log.append(("finally", runner.in_loop_thread()))

    # The iterator dies at the end of the loop statement, and closes.
    for item in runner.wrap_iter(agen()):
        if item == 2:
            break
    assert log == [("finally", True)]

    log.clear()
    it = runner.wrap_iter(agen())
    assert next(it) == 0
    it.close()
    assert log == [("finally", True)]
    with pytest.raises(StopIteration):
        next(it)

    log.clear()
    it = runner.wrap_iter(agen())
    assert next(it) == 0
    del it
    gc_collect_harder()
    assert log == [("finally", True)]
    assert runner.run(add, 1, 1) == 2


def test_wrap_iter_error_propagates(runner: Runner) -> None:
    async def agen() -> AsyncIterator[int]:
        yield 1
        raise ValueError("in the generator")

    got: list[int] = []
    with pytest.raises(ValueError, match="in the generator"):
        for item in runner.wrap_iter(agen()):
            got.append(item)
    assert got == [1]

    async def fails_at_once() -> AsyncIterator[int]:
        raise KeyError("at once")
        yield  # pragma: no cover

    with pytest.raises(KeyError, match="at once"):
        next(runner.wrap_iter(fails_at_once()))


def test_wrap_iter_error_in_cleanup_propagates(flavor: Flavor, runner: Runner) -> None:
    async def agen() -> AsyncIterator[int]:
        try:
            yield 1
            yield 2
        finally:
            raise OSError("cleanup failed")

    it = runner.wrap_iter(agen())
    assert next(it) == 1
    with pytest.raises(OSError, match="cleanup failed"):
        it.close()


def test_wrap_iter_non_generator_async_iterable(runner: Runner) -> None:
    class Countdown:
        def __init__(self, start: int) -> None:
            self.n = start
            self.threads: set[int] = set()

        def __aiter__(self) -> Countdown:
            return self

        async def __anext__(self) -> int:
            self.threads.add(threading.get_ident())
            if self.n == 0:
                raise StopAsyncIteration
            self.n -= 1
            return self.n

    countdown = Countdown(3)
    assert list(runner.wrap_iter(countdown)) == [2, 1, 0]
    assert countdown.threads == {runner.run(loop_thread_id)}
    # Stopping early is fine too: there is no aclose() to call.
    assert next(iter(runner.wrap_iter(Countdown(3)))) == 2


def test_wrap_iter_needs_an_async_iterable(runner: Runner) -> None:
    with pytest.raises(TypeError, match="async iterable"):
        runner.wrap_iter([1, 2, 3])  # type: ignore[arg-type]

    async def agen() -> AsyncIterator[int]:
        yield 1

    with pytest.raises(TypeError, match="async iterable"):
        runner.wrap_iter(agen)  # type: ignore[arg-type]


def test_closing_the_runner_closes_live_iterators(flavor: Flavor) -> None:
    runner = flavor.make()
    log: list[object] = []

    async def agen() -> AsyncIterator[int]:
        try:
            for i in range(100):
                yield i
        finally:
            log.append(("finally", runner.in_loop_thread()))

    it = runner.wrap_iter(agen())
    assert next(it) == 0
    runner.close()
    assert log == [("finally", True)]
    with pytest.raises(RunnerClosedError):
        next(it)
    with pytest.raises(StopIteration):
        next(it)


def test_closing_the_runner_while_a_consumer_waits(flavor: Flavor) -> None:
    runner = flavor.make()
    waiting = threading.Event()

    async def agen() -> AsyncIterator[int]:
        yield 1
        waiting.set()
        await flavor.sleep_forever()
        yield 2  # pragma: no cover

    it = runner.wrap_iter(agen())
    assert next(it) == 1
    second = in_thread(lambda: next(it))
    assert waiting.wait(WAIT)
    runner.close()
    with pytest.raises(RunnerClosedError):
        second.result(WAIT)


# ---------------------------------------------------------------- wrap_context


class Recorder:
    """An async context manager that records where it is entered and exited."""

    def __init__(self, flavor: Flavor, runner: Runner, *, suppress: bool = False) -> None:
        self.flavor = flavor
        self.runner = runner
        self.suppress = suppress
        self.log: list[Any] = []
        self.tasks: list[object] = []

    async def __aenter__(self) -> Recorder:
        self.tasks.append(self.flavor.current_task())
        self.log.append(("enter", self.runner.in_loop_thread()))
        await self.flavor.sleep(0)
        return self

    async def __aexit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> bool:
        await self.flavor.sleep(0)
        self.tasks.append(self.flavor.current_task())
        self.log.append(("exit", self.runner.in_loop_thread(), exc_type, exc))
        return self.suppress


def test_wrap_context_enters_and_exits_in_one_task(flavor: Flavor, runner: Runner) -> None:
    cm = Recorder(flavor, runner)
    with runner.wrap_context(cm) as value:
        assert value is cm
        assert cm.log == [("enter", True)]
        # Other calls run meanwhile.
        assert runner.run(add, 1, 2) == 3
    assert cm.log == [("enter", True), ("exit", True, None, None)]
    assert len(cm.tasks) == 2
    assert cm.tasks[0] is cm.tasks[1]
    assert cm.tasks[0] is not None


@pytest.mark.parametrize("suppress", [False, True])
def test_wrap_context_body_exception(flavor: Flavor, runner: Runner, suppress: bool) -> None:
    cm = Recorder(flavor, runner, suppress=suppress)
    error = ValueError("in the body")
    reached_end = False
    if suppress:
        with runner.wrap_context(cm):
            raise error
        reached_end = True
    else:
        with pytest.raises(ValueError) as info:
            with runner.wrap_context(cm):
                raise error
        assert info.value is error
    assert reached_end == suppress
    assert cm.log[-1] == ("exit", True, ValueError, error)
    assert cm.tasks[0] is cm.tasks[1]


def test_wrap_context_with_asynccontextmanager(flavor: Flavor, runner: Runner) -> None:
    log: list[object] = []

    @asynccontextmanager
    async def managed(suppress: bool) -> AsyncIterator[str]:
        task = flavor.current_task()
        try:
            yield "value"
        except KeyError as error:
            log.append(("caught", error.args[0]))
            if not suppress:
                raise
        finally:
            log.append(("same task", flavor.current_task() is task))

    with runner.wrap_context(managed(False)) as value:
        assert value == "value"
    assert log == [("same task", True)]

    log.clear()
    with runner.wrap_context(managed(True)):
        raise KeyError("swallowed")
    assert log == [("caught", "swallowed"), ("same task", True)]

    log.clear()
    with pytest.raises(KeyError, match="raised"):
        with runner.wrap_context(managed(False)):
            raise KeyError("raised")
    assert log == [("caught", "raised"), ("same task", True)]


def test_wrap_context_factory_runs_on_the_loop(flavor: Flavor, runner: Runner) -> None:
    made: list[bool] = []

    def factory() -> Recorder:
        flavor.check_in_loop(runner)
        made.append(runner.in_loop_thread())
        return Recorder(flavor, runner)

    with runner.wrap_context(factory=factory) as cm:
        assert made == [True]
        assert cm.log == [("enter", True)]
    assert cm.log[-1] == ("exit", True, None, None)

    async def async_factory() -> Recorder:
        flavor.check_in_loop(runner)
        await flavor.sleep(0)
        made.append(runner.in_loop_thread())
        return Recorder(flavor, runner)

    with runner.wrap_context(factory=async_factory) as cm:
        assert made == [True, True]
    assert cm.tasks[0] is cm.tasks[1]


def test_wrap_context_errors(flavor: Flavor, runner: Runner) -> None:
    cm = Recorder(flavor, runner)
    with pytest.raises(TypeError, match="not both"):
        runner.wrap_context()
    with pytest.raises(TypeError, match="not both"):
        runner.wrap_context(cm, factory=lambda: cm)
    with pytest.raises(TypeError, match="async context manager"):
        runner.wrap_context(object())
    with pytest.raises(TypeError, match="the factory made 'int'"):
        with runner.wrap_context(factory=lambda: 5):
            pass  # pragma: no cover

    def failing_factory() -> Any:
        raise LookupError("factory failed")

    with pytest.raises(LookupError, match="factory failed"):
        with runner.wrap_context(factory=failing_factory):
            pass  # pragma: no cover

    wrapped = runner.wrap_context(cm)
    with wrapped:
        with pytest.raises(RuntimeError, match="already entered"):
            wrapped.__enter__()
    with pytest.raises(RuntimeError, match="already entered"):
        with wrapped:
            pass  # pragma: no cover
    assert [entry[0] for entry in cm.log] == ["enter", "exit"]
    assert runner.run(add, 1, 1) == 2


def test_wrap_context_aenter_error(flavor: Flavor, runner: Runner) -> None:
    exited: list[bool] = []

    class FailsToEnter:
        async def __aenter__(self) -> None:
            await flavor.sleep(0)
            raise ConnectionError("cannot enter")

        async def __aexit__(self, *exc_info: object) -> None:
            exited.append(True)  # pragma: no cover

    body_ran = False
    with pytest.raises(ConnectionError, match="cannot enter"):
        with runner.wrap_context(FailsToEnter()):
            body_ran = True  # pragma: no cover
    assert not body_ran
    assert exited == []
    with pytest.raises(ConnectionError, match="cannot enter"):
        runner.enter_context(FailsToEnter())
    assert runner.run(add, 1, 1) == 2


def test_wrap_context_aexit_error(flavor: Flavor, runner: Runner) -> None:
    class FailsToExit:
        async def __aenter__(self) -> None:
            pass

        async def __aexit__(self, *exc_info: object) -> None:
            await flavor.sleep(0)
            raise ConnectionResetError("cannot exit")

    with pytest.raises(ConnectionResetError, match="cannot exit"):
        with runner.wrap_context(FailsToExit()):
            pass


def test_wrap_context_holds_a_task_group_open(flavor: Flavor, runner: Runner) -> None:
    # A task group is a cancel scope: it must be entered and exited by one task.
    log: list[str] = []

    @asynccontextmanager
    async def with_background_task() -> AsyncIterator[dict[str, anyio.Event]]:
        events = {"ping": anyio.Event(), "pong": anyio.Event()}

        async def background() -> None:
            try:
                await events["ping"].wait()
                log.append("ping")
                events["pong"].set()
                await anyio.sleep_forever()
            finally:
                log.append("background cancelled")

        async with anyio.create_task_group() as tg:
            tg.start_soon(background)
            with anyio.fail_after(WAIT):  # a second cancel scope, held open too
                yield events
            tg.cancel_scope.cancel()
        log.append("task group exited")

    with runner.wrap_context(with_background_task()) as events:
        # The background task runs between the sync calls of the body.

        async def ping() -> None:
            events["ping"].set()
            await events["pong"].wait()

        runner.run(ping)
        assert log == ["ping"]
    assert log == ["ping", "background cancelled", "task group exited"]


def test_wrap_context_native_task_group(flavor: Flavor, runner: Runner) -> None:
    done = threading.Event()

    async def child() -> None:
        await flavor.sleep(0.01)
        done.set()

    if flavor.is_trio:

        def factory() -> Any:
            return trio.open_nursery()

        with runner.wrap_context(factory=factory) as nursery:
            runner.run(_start_soon(nursery, child))
    else:
        if sys.version_info < (3, 11):
            pytest.skip("asyncio.TaskGroup is 3.11+")
        with runner.wrap_context(factory=asyncio.TaskGroup) as tg:  # type: ignore[attr-defined]
            runner.run(_start_soon(tg, child))
    # The group waits for its child before exiting.
    assert done.is_set()


async def _start_soon(group: Any, fn: Callable[[], Any]) -> None:
    if hasattr(group, "start_soon"):
        group.start_soon(fn)
    else:
        group.create_task(fn())


# --------------------------------------------------------------- enter_context


def test_enter_context_stays_open_until_close(flavor: Flavor) -> None:
    runner = flavor.make()
    log: list[str] = []

    class Named:
        def __init__(self, name: str) -> None:
            self.name = name

        async def __aenter__(self) -> str:
            log.append(f"enter {self.name}")
            return self.name

        async def __aexit__(self, *exc_info: object) -> None:
            await flavor.sleep(0.001)  # the loop still runs here
            log.append(f"exit {self.name}")

    started = threading.Event()

    async def background() -> None:
        started.set()
        try:
            await flavor.sleep_forever()
        finally:
            log.append("background cancelled")

    assert runner.enter_context(Named("a")) == "a"
    assert runner.enter_context(factory=lambda: Named("b")) == "b"
    pending = runner.submit(background)
    assert started.wait(WAIT)
    for _ in range(3):
        assert runner.run(add, 1, 1) == 2
    assert log == ["enter a", "enter b"]
    runner.close()
    assert log == ["enter a", "enter b", "exit b", "exit a", "background cancelled"]
    assert isinstance(pending.exception(WAIT), RunnerClosedError)


def test_enter_context_after_close(flavor: Flavor) -> None:
    runner = flavor.make()
    runner.close()
    with pytest.raises(RuntimeError, match="closed"):
        runner.enter_context(Recorder(flavor, runner))
    with pytest.raises(RuntimeError, match="closed"):
        with runner.wrap_context(Recorder(flavor, runner)):
            pass  # pragma: no cover


def test_close_exits_wrapped_contexts_left_open(flavor: Flavor) -> None:
    # A context held open in another thread's with-block when the runner
    # closes is exited as ``async with`` exits when its task is cancelled.
    runner = flavor.make()
    log: list[object] = []

    class Context:
        async def __aenter__(self) -> None:
            pass

        async def __aexit__(self, exc_type: type[BaseException] | None, *rest: object) -> None:
            log.append(("exit", exc_type, runner.in_loop_thread()))

    wrapped = runner.wrap_context(Context())
    wrapped.__enter__()
    runner.close()
    assert log == [("exit", flavor.cancelled, True)]
    with pytest.raises(RunnerClosedError):
        wrapped.__exit__(None, None, None)
    assert len(log) == 1


# ---------------------------------------------------------------- shutdown order


@pytest.mark.parametrize("loop_kind", ["asyncio", "uvloop"])
def test_asyncio_shutdown_order(loop_kind: str) -> None:
    events: list[Any] = []
    loop_thread: list[threading.Thread] = []
    loops: list[asyncio.AbstractEventLoop] = []

    base: Any
    if loop_kind == "uvloop":
        import uvloop

        base = uvloop.Loop
    else:
        base = asyncio.SelectorEventLoop

    class RecordingLoop(base):  # type: ignore[misc, valid-type]
        def close(self) -> None:
            events.append(("loop closed", loop_thread[0].is_alive()))
            super().close()

    class RecordingExecutor(concurrent.futures.ThreadPoolExecutor):
        def shutdown(self, wait: bool = True, *, cancel_futures: bool = False) -> None:
            events.append("executor shut down")
            super().shutdown(wait, cancel_futures=cancel_futures)

    runner = Runner(loop_factory=RecordingLoop)

    class Context:
        async def __aenter__(self) -> None:
            pass

        async def __aexit__(self, *exc_info: object) -> None:
            # The tasks are not cancelled yet.
            events.append(("context exited", all(not t.done() for t in tasks)))

    tasks: list[asyncio.Task[None]] = []

    async def sleeper(name: str) -> None:
        try:
            await asyncio.sleep(3600)
        except asyncio.CancelledError:
            events.append(f"{name} cancelled")
            raise

    async def agen() -> AsyncIterator[int]:
        try:
            yield 1
            yield 2  # pragma: no cover
        finally:
            events.append("async generator closed")

    generators: list[AsyncIterator[int]] = []

    async def setup() -> None:
        loop = asyncio.get_running_loop()
        loop_thread.append(threading.current_thread())
        loops.append(loop)
        loop.set_default_executor(RecordingExecutor(max_workers=1))
        assert await loop.run_in_executor(None, int, "7") == 7
        tasks.append(loop.create_task(sleeper("task")))
        gen = agen()
        assert await gen.__anext__() == 1
        generators.append(gen)  # suspended, so only shutdown_asyncgens closes it

    runner.run(setup)
    runner.enter_context(Context())
    in_flight = runner.submit(sleeper, "call")
    assert runner.run(add, 1, 1) == 2
    runner.close()
    assert events[0] == ("context exited", True)
    assert sorted(events[1:3]) == ["call cancelled", "task cancelled"]
    assert events[3:6] == [
        "async generator closed",
        "executor shut down",
        ("loop closed", False),  # the thread was joined first
    ]
    # loop.close() may shut the executor down once more (asyncio does).
    assert set(events[6:]) <= {"executor shut down"}
    assert not loop_thread[0].is_alive()
    assert loops[0].is_closed()
    assert isinstance(in_flight.exception(WAIT), RunnerClosedError)


def test_close_closes_suspended_async_generators(flavor: Flavor) -> None:
    # On Trio, the run's own async generator finalization does it.
    runner = flavor.make()
    log: list[object] = []
    keep: list[AsyncIterator[int]] = []

    async def agen() -> AsyncIterator[int]:
        try:
            yield 1
            yield 2  # pragma: no cover
        finally:
            log.append(("closed", runner.in_loop_thread()))

    async def start() -> int:
        gen = agen()
        keep.append(gen)
        return await gen.__anext__()

    assert runner.run(start) == 1
    assert log == []
    runner.close()
    assert log == [("closed", True)]


# ------------------------------------------------------------------------ close


def test_close_is_idempotent_and_context_manager(flavor: Flavor) -> None:
    with flavor.make() as runner:
        assert runner.run(add, 1, 1) == 2
        assert not runner.closed
        assert "running" in repr(runner)
    assert runner.closed
    assert "closed" in repr(runner)
    runner.close()
    runner.close()
    assert runner.closed

    never_started = flavor.make()
    never_started.close()
    assert never_started.closed
    never_started.close()


def test_calls_after_close_raise(flavor: Flavor) -> None:
    runner = flavor.make()
    assert runner.run(add, 1, 1) == 2
    runner.close()
    coro = add(1)
    with pytest.raises(RuntimeError, match="closed"):
        runner.run(coro)
    # The refused coroutine is closed, not left to warn "never awaited".
    assert inspect.getcoroutinestate(coro) == inspect.CORO_CLOSED
    with pytest.raises(RuntimeError, match="closed"):
        runner.run(add, 1)
    with pytest.raises(RuntimeError, match="closed"):
        runner.submit(add, 1)

    async def agen() -> AsyncIterator[int]:
        yield 1  # pragma: no cover

    with pytest.raises(RuntimeError, match="closed"):
        next(runner.wrap_iter(agen()))


def test_concurrent_close_from_two_threads(flavor: Flavor) -> None:
    runner = flavor.make()
    exits: list[str] = []

    class Slow:
        async def __aenter__(self) -> None:
            pass

        async def __aexit__(self, *exc_info: object) -> None:
            await flavor.sleep(0.05)
            exits.append("exited")

    runner.enter_context(Slow())
    barrier = threading.Barrier(2)

    def closer() -> list[str]:
        barrier.wait(WAIT)
        runner.close()
        # Whichever thread closed it, close() returns once it is closed.
        return list(exits)

    first, second = in_thread(closer), in_thread(closer)
    assert first.result(WAIT) == ["exited"]
    assert second.result(WAIT) == ["exited"]
    assert runner.closed


def test_call_in_flight_when_closed(flavor: Flavor) -> None:
    runner = flavor.make()
    started = threading.Event()
    unwound: list[object] = []

    async def forever() -> None:
        started.set()
        try:
            await flavor.sleep_forever()
        except BaseException as error:
            unwound.append(type(error))
            raise

    call = in_thread(lambda: runner.run(forever))
    assert started.wait(WAIT)
    runner.close()
    error = call.exception(WAIT)
    assert isinstance(error, RunnerClosedError)
    assert isinstance(error.__cause__, flavor.cancelled)
    assert unwound == [flavor.cancelled]


def test_close_and_run_from_the_loop_thread_raise(runner: Runner) -> None:
    async def inner() -> int:
        return 1  # pragma: no cover

    async def misuse() -> list[str]:
        messages = []
        coro = inner()
        for attempt in (
            lambda: runner.run(coro),
            lambda: runner.run(inner),
            lambda: runner.submit(inner),
            runner.close,
        ):
            try:
                attempt()
            except RuntimeError as error:
                messages.append(str(error))
        assert inspect.getcoroutinestate(coro) == inspect.CORO_CLOSED
        return messages

    messages = runner.run(misuse)
    assert len(messages) == 4
    assert all("loop thread" in message for message in messages)
    assert not runner.closed
    assert runner.run(add, 1, 1) == 2


def test_close_from_a_thread_running_another_loop(flavor: Flavor) -> None:
    runner = flavor.make()
    assert runner.run(add, 1, 1) == 2
    loop = None if flavor.is_trio else runner.loop

    async def close_it() -> None:
        runner.close()  # blocks this loop briefly; must not fail

    asyncio.run(close_it())
    assert runner.closed
    assert loop is None or loop.is_closed()


def test_many_threads_call_one_runner(runner: Runner) -> None:
    threads, calls = 50, 20
    barrier = threading.Barrier(threads)

    def worker(n: int) -> list[int]:
        barrier.wait(WAIT)
        return [runner.run(add, n, i, c=1) for i in range(calls)]

    futures = [in_thread(functools.partial(worker, n)) for n in range(threads)]
    for n, future in enumerate(futures):
        assert future.result(WAIT * 3) == [n + i + 1 for i in range(calls)]


# ------------------------------------------------------------------ default runner


def test_default_runner_is_shared_and_renewed() -> None:
    first = greenportal.default_runner()
    assert greenportal.default_runner() is first
    others = [in_thread(greenportal.default_runner) for _ in range(5)]
    assert all(f.result(WAIT) is first for f in others)
    assert first.backend == "asyncio"
    first.close()
    second = greenportal.default_runner()
    assert second is not first
    assert not second.closed
    assert second.run(add, 2, 2) == 4


def test_await_in_a_plain_thread_uses_the_default_runner() -> None:
    async def make() -> tuple[asyncio.AbstractEventLoop, asyncio.Lock, asyncio.Future[str]]:
        loop = asyncio.get_running_loop()
        return loop, asyncio.Lock(), loop.create_future()

    async def running_loop() -> asyncio.AbstractEventLoop:
        return asyncio.get_running_loop()

    async def use(lock: asyncio.Lock, future: asyncio.Future[str]) -> str:
        async with lock:
            future.set_result("same loop")
            return await future

    def sync_code() -> tuple[object, object, str]:
        loop, lock, future = greenportal.await_(make())
        loop_again = greenportal.await_(running_loop())
        # The loop-bound Lock and Future still work on the next calls.
        return loop, loop_again, greenportal.await_(use(lock, future))

    loop, loop_again, result = in_thread(sync_code).result(WAIT)
    assert loop is loop_again is greenportal.default_runner().loop
    assert result == "same loop"


# ---------------------------------------------------------------- subprocesses

COMMON = textwrap.dedent(
    """
    import os, sys, threading, time
    import greenportal

    def log(*msg):
        print(*msg, flush=True)

    def make_runner(kind):
        if kind == "trio":
            return greenportal.Runner("trio")
        if kind == "uvloop":
            import uvloop
            return greenportal.Runner(loop_factory=uvloop.new_event_loop)
        return greenportal.Runner()

    KIND = sys.argv[1]
    if KIND == "trio":
        import trio
        Cancelled = trio.Cancelled
        sleep = trio.sleep
        async def shielded_sleep(s):
            with trio.CancelScope(shield=True):
                await trio.sleep(s)
    else:
        import asyncio
        Cancelled = asyncio.CancelledError
        sleep = shielded_sleep = asyncio.sleep

    def loop_identity():
        import asyncio
        try:
            return asyncio.get_running_loop()
        except RuntimeError:
            return trio.lowlevel.current_trio_token()
    """
)


def run_script(body: str, kind: str, timeout: float = 30) -> list[str]:
    out = run_python("-c", COMMON + textwrap.dedent(body), kind, timeout=timeout)
    assert out.returncode == 0, out.stdout + out.stderr
    # asyncio's debug mode (PYTHONASYNCIODEBUG=1) reports steps that block the
    # loop, which some of these scripts do on purpose; anything else counts.
    assert [line for line in out.stderr.splitlines() if not _SLOW_STEP.match(line)] == []
    return out.stdout.splitlines()


_SLOW_STEP = re.compile(r"^Executing <.*> took \d+\.\d+ seconds$")


def skip_missing(kind: str) -> None:
    if kind not in FLAVORS:
        pytest.skip(f"{kind} is not installed")


@pytest.mark.subprocess
@pytest.mark.skipif(sys.platform == "win32", reason="POSIX signals")
@pytest.mark.parametrize("kind", ["asyncio", "uvloop", "trio"])
def test_ctrl_c_while_blocked_in_run(kind: str) -> None:
    skip_missing(kind)
    body = """
    import signal
    signal.signal(signal.SIGINT, signal.default_int_handler)
    runner = make_runner(KIND)
    main_thread = threading.get_ident()
    started = threading.Event()

    async def work():
        started.set()
        try:
            await sleep(3600)
        except Cancelled:
            log("cancelled on the loop", threading.get_ident() != main_thread)
            raise
        finally:
            await shielded_sleep(0.05)  # the caller waits for this
            log("cleanup done")

    def interrupter():
        started.wait()
        time.sleep(0.05)  # let the main thread block in run()
        os.kill(os.getpid(), signal.SIGINT)

    threading.Thread(target=interrupter, daemon=True).start()
    try:
        runner.run(work())
    except KeyboardInterrupt:
        log("KeyboardInterrupt")
    else:
        log("no exception")

    async def answer():
        return 42

    log("after", runner.run(answer()))
    runner.close()
    log("closed")
    """
    assert run_script(body, kind) == [
        "cancelled on the loop True",
        "cleanup done",
        "KeyboardInterrupt",
        "after 42",
        "closed",
    ]


@pytest.mark.subprocess
@pytest.mark.skipif(sys.platform == "win32", reason="POSIX signals")
@pytest.mark.parametrize("kind", ["asyncio", "uvloop", "trio"])
def test_ctrl_c_before_the_work_started(kind: str) -> None:
    # The loop is busy when Ctrl-C comes, so the call's task has not taken its
    # first step when it is cancelled: the caller must still be released, and
    # the work must not run.
    skip_missing(kind)
    body = """
    import signal
    signal.signal(signal.SIGINT, signal.default_int_handler)
    runner = make_runner(KIND)
    busy, gate = threading.Event(), threading.Event()

    async def block_loop():
        busy.set()
        gate.wait(10)  # blocks the loop thread on purpose

    ran = []

    async def work():
        ran.append(True)

    def interrupter():
        busy.wait()
        time.sleep(0.05)  # let the main thread block in run()
        os.kill(os.getpid(), signal.SIGINT)
        time.sleep(0.05)
        gate.set()

    blocker = runner.submit(block_loop())
    threading.Thread(target=interrupter, daemon=True).start()
    busy.wait()
    try:
        runner.run(work())
    except KeyboardInterrupt:
        log("KeyboardInterrupt")
    blocker.result(10)
    log("work ran", bool(ran))
    runner.close()
    log("closed")
    """
    assert run_script(body, kind, timeout=15) == ["KeyboardInterrupt", "work ran False", "closed"]


@pytest.mark.subprocess
@pytest.mark.skipif(not hasattr(os, "fork"), reason="needs os.fork")
@pytest.mark.parametrize("kind", ["asyncio", "uvloop", "trio"])
def test_fork(kind: str) -> None:
    skip_missing(kind)
    body = """
    import warnings
    # Forking a process with threads warns on 3.12+; that is the point here.
    warnings.simplefilter("ignore", DeprecationWarning)

    async def where():
        return threading.get_native_id(), loop_identity()

    runner = make_runner(KIND)
    default = greenportal.default_runner()
    parent_tid, parent_loop = runner.run(where())
    default_tid, default_loop = default.run(where())

    pid = os.fork()
    if pid == 0:
        status = 1
        try:
            tid, loop = runner.run(where())
            log("child runner: new thread", tid not in (parent_tid, default_tid))
            log("child runner: new loop", loop is not parent_loop)
            new_default = greenportal.default_runner()
            log("child default: new runner", new_default is not default)
            tid, loop = new_default.run(where())
            log("child default: new loop", loop is not default_loop)
            import asyncio
            async def via_await():
                return threading.get_native_id()
            log("child await_ uses it", greenportal.await_(via_await()) == tid)
            runner.close()
            status = 0
        finally:
            sys.stdout.flush()
            os._exit(status)
    _, status = os.waitpid(pid, 0)
    log("child exit", os.waitstatus_to_exitcode(status))
    log("parent runner", runner.run(where()) == (parent_tid, parent_loop))
    log("parent default", greenportal.default_runner().run(where()) == (default_tid, default_loop))
    runner.close()
    """
    lines = run_script(body, kind)
    assert lines == [
        "child runner: new thread True",
        "child runner: new loop True",
        "child default: new runner True",
        "child default: new loop True",
        "child await_ uses it True",
        "child exit 0",
        "parent runner True",
        "parent default True",
    ]


@pytest.mark.subprocess
@pytest.mark.parametrize("kind", ["asyncio", "uvloop", "trio"])
def test_runners_close_at_interpreter_exit(kind: str) -> None:
    skip_missing(kind)
    body = """
    import asyncio
    default = greenportal.default_runner()

    class Context:
        async def __aenter__(self):
            return self
        async def __aexit__(self, *exc_info):
            await asyncio.sleep(0.01)
            log("default: context exited")

    async def agen(who, sleep):
        try:
            yield 1
            yield 2
        finally:
            log(f"{who}: generator closed")

    async def use_executor():
        return await asyncio.get_running_loop().run_in_executor(None, int, "5")

    default.enter_context(Context())
    live = default.wrap_iter(agen("default", asyncio.sleep))
    next(live)
    log("executor", default.run(use_executor()))

    # Another runner, of the kind under test, left open too.
    other = make_runner(KIND)
    suspended = []

    async def start():
        gen = agen("other", sleep)
        suspended.append(gen)
        await gen.__anext__()

    other.run(start())
    log("end of script")
    """
    start = time.monotonic()
    lines = run_script(body, kind)
    assert time.monotonic() - start < 10
    assert lines[:2] == ["executor 5", "end of script"]
    assert sorted(lines[2:]) == sorted(
        ["default: context exited", "default: generator closed", "other: generator closed"]
    )
    # The default runner's context exits before its tasks are cancelled.
    assert lines.index("default: context exited") < lines.index("default: generator closed")
