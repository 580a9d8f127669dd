"""The asyncio Runner's fast round trip: the eventfd channel and the eager start.

``_backends/_wake.Channel`` hands calls to a loop with one descriptor write;
an asyncio Runner starts its jobs through it (3.12+: eagerly, the first step
in the channel's callback).  These tests check the channel itself, that both
asyncio flavours use it, and that the Runner's guarantees hold on it and on
the ``call_soon_threadsafe`` fallback that loops without ``add_reader`` get.
The Ctrl-C, fork and interpreter-exit scenarios of ``test_runner.py`` run on
the channel already (it is the default on POSIX).
"""

from __future__ import annotations

import asyncio
import concurrent.futures
import contextvars
import os
import selectors
import sys
import threading
import time
from collections.abc import Callable, Iterator
from typing import Any

import pytest

from greenportal import Runner, RunnerClosedError
from greenportal._backends import _wake

from .conftest import gc_collect_harder, run_python
from .test_runner import cancel_before_start

WAIT = 10.0

pytestmark = pytest.mark.skipif(os.name != "posix", reason="the channel is POSIX-only")


def _loop_factories() -> list[Any]:
    factories: list[Any] = [pytest.param(asyncio.new_event_loop, id="asyncio")]
    try:
        import uvloop
    except ImportError:  # pragma: no cover
        return factories
    factories.append(pytest.param(uvloop.new_event_loop, id="uvloop"))
    return factories


@pytest.fixture(params=_loop_factories())
def loop_factory(request: pytest.FixtureRequest) -> Callable[[], asyncio.AbstractEventLoop]:
    factory: Callable[[], asyncio.AbstractEventLoop] = request.param
    return factory


@pytest.fixture
def running_loop(
    loop_factory: Callable[[], asyncio.AbstractEventLoop],
) -> Iterator[tuple[asyncio.AbstractEventLoop, _wake.Channel]]:
    """A loop running in a thread, with a channel opened on it."""
    loop = loop_factory()
    channel = _wake.open_channel(loop, owned=False)
    assert channel is not None
    thread = threading.Thread(target=loop.run_forever, daemon=True)
    thread.start()
    try:
        yield loop, channel
    finally:
        loop.call_soon_threadsafe(loop.stop)
        thread.join(WAIT)
        channel.close()
        loop.close()


def _no_reader_loop() -> asyncio.AbstractEventLoop:
    """An asyncio loop that refuses add_reader, as a proactor loop does."""

    class Loop(asyncio.SelectorEventLoop):
        def add_reader(self, *args: Any) -> None:
            raise NotImplementedError

    return Loop()


# -- the channel ---------------------------------------------------------------


def test_posted_calls_run_in_order_on_the_loop_thread(
    running_loop: tuple[asyncio.AbstractEventLoop, _wake.Channel],
) -> None:
    _, channel = running_loop
    seen: list[tuple[int, int]] = []
    done = threading.Event()
    for i in range(100):
        channel.post(lambda i: seen.append((i, threading.get_ident())), i)
    channel.post(lambda _: done.set(), None)
    assert done.wait(WAIT)
    assert [i for i, _ in seen] == list(range(100))
    assert {ident for _, ident in seen} != {threading.get_ident()}
    assert len({ident for _, ident in seen}) == 1


def test_a_failing_call_is_reported_and_the_rest_run(
    running_loop: tuple[asyncio.AbstractEventLoop, _wake.Channel],
) -> None:
    loop, channel = running_loop
    reported: list[dict[str, Any]] = []
    # (Posted: call_soon_threadsafe callbacks are not ordered with posts.)
    channel.post(loop.set_exception_handler, lambda _, ctx: reported.append(ctx))
    done = threading.Event()

    def fail(_: object) -> None:
        raise ValueError("boom")

    channel.post(fail, None)
    channel.post(lambda _: done.set(), None)
    assert done.wait(WAIT)
    assert len(reported) == 1
    assert isinstance(reported[0]["exception"], ValueError)


def test_a_call_posted_while_draining_runs_on_a_later_wake_up(
    running_loop: tuple[asyncio.AbstractEventLoop, _wake.Channel],
) -> None:
    _, channel = running_loop
    order: list[str] = []
    done = threading.Event()

    def first(_: object) -> None:
        channel.post(second, None)
        order.append("first returned")

    def second(_: object) -> None:
        order.append("second")
        done.set()

    channel.post(first, None)
    assert done.wait(WAIT)
    assert order == ["first returned", "second"]


def test_posted_calls_run_in_an_empty_context(loop_factory: Any) -> None:
    # Not in a copy of the context the channel was opened in (a to_thread
    # host's task, say), which the loop would otherwise keep with its reader.
    var: contextvars.ContextVar[str] = contextvars.ContextVar("var", default="unset")
    loop = loop_factory()
    seen: list[str] = []

    async def open_here() -> _wake.Channel | None:
        var.set("the opener's")
        return _wake.channel_for(loop)

    try:
        channel = loop.run_until_complete(open_here())
        assert channel is not None
        channel.post(lambda _: seen.append(var.get()), None)
        channel.post(lambda _: loop.stop(), None)
        loop.run_forever()
        channel.close()
    finally:
        loop.close()
    assert seen == ["unset"]


def test_pending_calls_are_handed_back_and_close_releases_the_descriptors() -> None:
    loop = asyncio.new_event_loop()
    channel = _wake.open_channel(loop, owned=False)
    assert channel is not None
    channel.post(print, "a")
    channel.post(print, "b")
    assert channel.take_pending() == ["a", "b"]
    assert channel.take_pending() == []
    fd = channel._read_fd
    channel.close()
    channel.close()  # idempotent
    with pytest.raises(RuntimeError):
        channel.post(print, "c")
    os.fstat(fd)  # still open while the channel can be reached
    del channel
    loop.close()
    del loop
    gc_collect_harder()
    with pytest.raises(OSError):
        os.fstat(fd)


def test_no_channel_where_the_loop_refuses_readers() -> None:
    loop = _no_reader_loop()
    try:
        assert _wake.open_channel(loop, owned=False) is None
    finally:
        loop.close()


# -- the Runner on the channel, and on the fallback ----------------------------


@pytest.fixture(params=["channel", "fallback"])
def runner(request: pytest.FixtureRequest, loop_factory: Any) -> Iterator[Runner]:
    factory = loop_factory if request.param == "channel" else _no_reader_loop
    with Runner(loop_factory=factory) as runner:
        impl = runner._ensure_started()
        assert (impl._channel is None) == (request.param == "fallback")  # type: ignore[attr-defined]
        yield runner


def test_both_asyncio_flavours_use_the_channel(loop_factory: Any) -> None:
    with Runner(loop_factory=loop_factory) as runner:
        assert runner._ensure_started()._channel is not None  # type: ignore[attr-defined]


async def _no_suspension(x: int) -> tuple[int, bool]:
    return x + 1, asyncio.current_task() is not None


async def _one_yield(x: int) -> int:
    await asyncio.sleep(0)
    return x * 2


def test_results_and_errors(runner: Runner) -> None:
    assert runner.run(_no_suspension, 1) == (2, True)
    assert runner.run(_one_yield(21)) == 42

    async def fails() -> None:
        raise KeyError("k")

    with pytest.raises(KeyError):
        runner.run(fails())

    async def interrupts() -> None:
        raise KeyboardInterrupt

    with pytest.raises(KeyboardInterrupt):
        runner.run(interrupts())
    assert runner.run(_one_yield(1)) == 2  # the loop survived


def test_work_runs_in_a_copy_of_the_callers_context(runner: Runner) -> None:
    var: contextvars.ContextVar[str] = contextvars.ContextVar("var", default="unset")

    async def read_and_write() -> str:
        seen = var.get()
        var.set("set by the work")
        await asyncio.sleep(0)
        return seen

    token = var.set("caller")
    try:
        assert runner.run(read_and_write()) == "caller"
        assert var.get() == "caller"
    finally:
        var.reset(token)
    # Nothing the work set stays on the loop for the next call.
    assert runner.run(read_and_write()) == "unset"


def test_cancelled_before_it_starts(runner: Runner) -> None:
    cancel_before_start(runner)
    assert runner.run(_one_yield(2)) == 4


def test_cancelling_running_work(runner: Runner) -> None:
    started = threading.Event()
    seen: list[str] = []

    async def work() -> None:
        started.set()
        try:
            await asyncio.sleep(3600)
        except asyncio.CancelledError:
            seen.append("cancelled")
            raise

    future = runner.submit(work)
    assert started.wait(WAIT)
    assert future.cancel()
    with pytest.raises(concurrent.futures.CancelledError):
        future.result(WAIT)
    assert runner.run(_one_yield(3)) == 6
    assert seen == ["cancelled"]


def test_close_under_suspended_calls(loop_factory: Any) -> None:
    runner = Runner(loop_factory=loop_factory)
    started = threading.Barrier(11)
    errors: list[BaseException] = []

    async def forever() -> None:
        await asyncio.sleep(3600)

    def call() -> None:
        started.wait(WAIT)
        try:
            runner.run(forever())
        except BaseException as error:
            errors.append(error)

    threads = [threading.Thread(target=call) for _ in range(10)]
    for thread in threads:
        thread.start()
    started.wait(WAIT)
    # Every call is suspended on the loop once this round trip is back (the
    # channel runs posts in order, and each started eagerly or was queued).
    while runner.run(_count_tasks()) < 10:
        pass
    runner.close()
    for thread in threads:
        thread.join(WAIT)
    assert len(errors) == 10
    assert all(isinstance(error, RunnerClosedError) for error in errors)
    with pytest.raises(RunnerClosedError):
        runner.run(_one_yield(1))


async def _count_tasks() -> int:
    await asyncio.sleep(0.01)
    return len(asyncio.all_tasks()) - 1


def test_many_threads_at_once(runner: Runner) -> None:
    barrier = threading.Barrier(50)

    def call(i: int) -> int:
        barrier.wait(WAIT)
        return sum(runner.run(_one_yield(i)) for _ in range(20))

    with concurrent.futures.ThreadPoolExecutor(50) as pool:
        assert list(pool.map(call, range(50))) == [40 * i for i in range(50)]


def test_a_task_factory_on_the_loop_is_used(runner: Runner) -> None:
    made: list[object] = []

    def factory(loop: asyncio.AbstractEventLoop, coro: Any, **kwargs: Any) -> Any:
        task = asyncio.Task(coro, loop=loop, **kwargs)
        made.append(task)
        return task

    async def install() -> None:
        asyncio.get_running_loop().set_task_factory(factory)

    async def current() -> object:
        return asyncio.current_task()

    runner.run(install())
    try:
        assert runner.run(current()) is made[-1]
    finally:

        async def remove() -> None:
            asyncio.get_running_loop().set_task_factory(None)

        runner.run(remove())


def test_work_that_does_not_suspend_is_done_when_begun(loop_factory: Any) -> None:
    # 3.12+: the job's task starts eagerly, so work that never suspends has
    # finished (and released its caller) by the time _begin returns.
    with Runner(loop_factory=loop_factory) as runner:
        impl: Any = runner._ensure_started()

        async def work() -> str:
            return "done"

        async def begin_here() -> tuple[bool, bool]:
            job = runner._job(work, (), {})
            job.context = contextvars.copy_context()
            impl._begin(job)
            finished = job.handle.done() and not job.done.locked()
            await job.handle
            assert job.result() == "done"
            return finished, job.handle.done()

        finished, done_later = runner.run(begin_here())
        assert finished is (sys.version_info >= (3, 12))
        assert done_later


class _CountingSelector(selectors.DefaultSelector):  # type: ignore[misc,valid-type]
    """The default selector, counting its polls (one per loop iteration)."""

    polls = 0

    def select(self, timeout: float | None = None) -> Any:
        type(self).polls += 1
        return super().select(timeout)


def test_a_jobs_first_step_runs_in_the_wake_up_on_every_python() -> None:
    # On an asyncio loop a job does not wait a loop iteration for its first
    # step: eagerly on 3.12+, and on 3.10/3.11 by running the step the task
    # queued (_asyncio._step_now).  Work that never suspends then costs one
    # poll per call (the one that waits for the call), work that yields once
    # two; waiting an iteration more would add one to each.
    _CountingSelector.polls = 0

    def factory() -> asyncio.AbstractEventLoop:
        return asyncio.SelectorEventLoop(_CountingSelector())

    async def done() -> str:
        return "done"

    async def one_yield() -> str:
        await asyncio.sleep(0)
        return "yielded"

    with Runner(loop_factory=factory) as runner:
        for work, polls_each in ((done, 1), (one_yield, 2)):
            runner.run(work)  # the loop is idle and waiting again after this
            before = _CountingSelector.polls
            for _ in range(50):
                assert runner.run(work) in ("done", "yielded")
            # (A spurious wake-up or two is allowed for.)
            assert _CountingSelector.polls - before <= 50 * polls_each + 2


# -- to_thread hosts ------------------------------------------------------------


def _await_in_thread_on(loop: asyncio.AbstractEventLoop) -> list[object]:
    import greenportal

    seen: list[object] = []

    async def on_the_loop() -> object:
        await asyncio.sleep(0)
        return asyncio.current_task()

    def in_thread() -> None:
        for _ in range(20):
            seen.append(greenportal.await_(on_the_loop()))

    async def main() -> object:
        await greenportal.to_thread(in_thread)
        return asyncio.current_task()

    seen.append(loop.run_until_complete(main()))
    return seen


def test_a_to_thread_host_wakes_through_the_loops_channel(loop_factory: Any) -> None:
    loop = loop_factory()
    try:
        seen = _await_in_thread_on(loop)
        channel = _wake._by_loop.get(loop)
        assert channel is not None
        # Every await ran inside the task that started the thread.
        assert len(set(map(id, seen))) == 1
    finally:
        loop.close()
    fd = channel._read_fd
    del loop, seen, channel
    # Closed with the loop, once the worker thread, which may still be
    # returning from announcing its end to the loop, has let go of it.
    deadline = time.monotonic() + WAIT
    while True:
        gc_collect_harder()
        try:
            os.fstat(fd)
        except OSError:
            break
        assert time.monotonic() < deadline, "the channel's descriptor stayed open"
        time.sleep(0.01)


def test_a_to_thread_host_on_a_loop_without_readers() -> None:
    loop = _no_reader_loop()
    try:
        seen = _await_in_thread_on(loop)
        assert _wake._by_loop.get(loop) is None
        assert len(set(map(id, seen))) == 1
    finally:
        loop.close()


@pytest.mark.subprocess
@pytest.mark.skipif(not hasattr(os, "fork"), reason="needs os.fork")
def test_after_fork_the_child_opens_channels_of_its_own() -> None:
    script = """
import asyncio, os, sys, warnings
warnings.simplefilter("ignore", DeprecationWarning)  # forking with threads (3.12+)
import greenportal
from greenportal._backends import _wake

async def one():
    await asyncio.sleep(0)
    return os.getpid()

runner = greenportal.Runner()
assert runner.run(one()) == os.getpid()
old = runner._impl._channel
pid = os.fork()
if pid == 0:
    code = 1
    try:
        assert not _wake._by_loop
        try:
            os.fstat(old._read_fd)
        except OSError:
            pass
        else:
            raise AssertionError("the parent's Runner channel is open in the child")
        assert runner.run(one()) == os.getpid()
        assert runner._impl._channel is not old
        assert greenportal.await_(one()) == os.getpid()
        code = 0
    finally:
        os._exit(code)
_, status = os.waitpid(pid, 0)
assert os.waitstatus_to_exitcode(status) == 0, status
assert runner.run(one()) == os.getpid()  # the parent's wake-ups still arrive
runner.close()
print("ok")
"""
    out = run_python("-c", script, timeout=30)
    assert out.returncode == 0, out.stdout + out.stderr
    assert out.stdout.split() == ["ok"]


def test_a_failing_task_factory_fails_the_call(runner: Runner) -> None:
    def factory(loop: asyncio.AbstractEventLoop, coro: Any, **kwargs: Any) -> Any:
        raise ValueError("no tasks today")

    async def install(factory: Any) -> None:
        asyncio.get_running_loop().set_task_factory(factory)

    runner.run(install(factory))
    # The loop's own task for install() finished before the factory was set.
    with pytest.raises(ValueError, match="no tasks today"):
        runner.run(_one_yield(1))
    removed = threading.Event()
    runner.loop.call_soon_threadsafe(lambda: (runner.loop.set_task_factory(None), removed.set()))
    assert removed.wait(WAIT)
    assert runner.run(_one_yield(1)) == 2


_CTRL_C_SCRIPT = """
import asyncio, os, signal, sys, threading, time
import greenportal

signal.signal(signal.SIGINT, signal.default_int_handler)

class NoReaders(asyncio.SelectorEventLoop):
    def add_reader(self, *args):
        raise NotImplementedError

factory = NoReaders if sys.argv[1] == "fallback" else asyncio.new_event_loop
runner = greenportal.Runner(loop_factory=factory)
assert (runner._ensure_started()._channel is None) == (sys.argv[1] == "fallback")
started = threading.Event()

def interrupt_when(event):
    event.wait(10)
    time.sleep(0.05)  # let the main thread block in run()
    os.kill(os.getpid(), signal.SIGINT)

async def work():
    started.set()
    try:
        await asyncio.sleep(3600)
    except asyncio.CancelledError:
        print("cancelled on the loop")
        raise
    finally:
        await asyncio.sleep(0.05)  # the caller waits for this
        print("cleanup done")

threading.Thread(target=interrupt_when, args=(started,), daemon=True).start()
try:
    runner.run(work())
except KeyboardInterrupt:
    print("KeyboardInterrupt")

# Ctrl-C before the work's task could start: the loop is busy.
busy, gate = threading.Event(), threading.Event()
ran = []

async def block_loop():
    busy.set()
    gate.wait(10)

async def never():
    ran.append(True)

def release_gate():
    interrupt_when(busy)
    time.sleep(0.05)
    gate.set()

blocker = runner.submit(block_loop())
threading.Thread(target=release_gate, daemon=True).start()
try:
    runner.run(never())
except KeyboardInterrupt:
    print("KeyboardInterrupt")
blocker.result(10)
print("work ran", bool(ran))

async def answer():
    return 42

print("after", runner.run(answer()))
runner.close()
print("closed")
"""


@pytest.mark.subprocess
@pytest.mark.parametrize("path", ["channel", "fallback"])
def test_ctrl_c_on_both_wake_up_paths(path: str) -> None:
    out = run_python("-c", _CTRL_C_SCRIPT, path, timeout=30)
    assert out.returncode == 0, out.stdout + out.stderr
    assert out.stdout.splitlines() == [
        "cancelled on the loop",
        "cleanup done",
        "KeyboardInterrupt",
        "KeyboardInterrupt",
        "work ran False",
        "after 42",
        "closed",
    ]


def test_close_fails_calls_that_never_reached_the_loop(loop_factory: Any) -> None:
    runner = Runner(loop_factory=loop_factory)
    impl: Any = runner._ensure_started()
    channel = impl._channel

    async def deafen() -> None:
        # The loop stops watching the channel: posts stay in it.
        asyncio.get_running_loop().remove_reader(channel._read_fd)

    runner.run(deafen())
    errors: list[BaseException] = []

    def call() -> None:
        try:
            runner.run(_one_yield(1))
        except BaseException as error:
            errors.append(error)

    thread = threading.Thread(target=call)
    thread.start()
    deadline = time.monotonic() + WAIT
    while not channel._calls and time.monotonic() < deadline:
        time.sleep(0.001)
    impl.call_soon(lambda: None)  # a pending call that is not a job
    runner.close()
    thread.join(WAIT)
    assert len(errors) == 1
    assert isinstance(errors[0], RunnerClosedError)
