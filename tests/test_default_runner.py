"""Choosing the default Runner, awaitables of the wrong library, and Runner.__exit__.

* ``set_default_runner``: what ``await_`` and ``blocking()`` use in threads
  with no event loop, proven by where the awaitable runs (the Runner's loop
  thread, its asyncio loop or its Trio token);
* a Trio awaitable on an asyncio Runner (and the converse) raises a clear
  ``RuntimeError``, leaves nothing half-done, and the Runner goes on;
* ``with runner:`` passes its exception to the contexts entered with
  ``enter_context``, as ``contextlib.ExitStack`` does.
"""

from __future__ import annotations

import asyncio
import inspect
import re
import threading
from collections.abc import AsyncIterator, Awaitable, Callable, Iterator
from contextlib import asynccontextmanager
from types import TracebackType
from typing import Any

import pytest

import greenportal
from greenportal import Runner, RunnerClosedError

from .conftest import gc_collect_harder
from .test_runner import FLAVORS, WAIT, Flavor, in_thread, run_script, skip_missing

try:
    import trio
except ImportError:  # the asyncio-only run
    trio = None  # type: ignore[assignment]

needs_trio = pytest.mark.skipif(trio is None, reason="needs Trio")


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


@pytest.fixture
def automatic() -> Iterator[None]:
    """Run the test with the automatic default Runner, and restore what was chosen."""
    previous = greenportal.set_default_runner(None)
    try:
        yield
    finally:
        greenportal.set_default_runner(previous)


async def where() -> tuple[int, object]:
    """The loop thread and the loop (asyncio) or Trio token this runs on."""
    try:
        loop: object = asyncio.get_running_loop()
    except RuntimeError:
        loop = trio.lowlevel.current_trio_token()
    return threading.get_ident(), loop


# ------------------------------------------------------------ set_default_runner


def test_set_get_and_restore(automatic: None) -> None:
    auto = greenportal.default_runner()
    assert auto.backend == "asyncio"
    with Runner() as first, Runner() as second:
        assert greenportal.set_default_runner(first) is None
        assert greenportal.default_runner() is first
        assert greenportal.set_default_runner(second) is first
        assert greenportal.default_runner() is second
        assert greenportal.set_default_runner(first) is second
        assert greenportal.set_default_runner(None) is first
    # The automatic Runner was left alone, running, and is the default again.
    assert greenportal.default_runner() is auto
    assert not auto.closed
    assert auto.run(asyncio.sleep(0, "still works")) == "still works"
    assert greenportal.set_default_runner(None) is None


def test_the_automatic_runner_is_not_closed_when_one_is_chosen(automatic: None) -> None:
    auto = greenportal.default_runner()
    made_on_auto = auto.run(where())
    with Runner() as chosen:
        greenportal.set_default_runner(chosen)
        assert greenportal.await_(where()) == chosen.run(where())
        assert auto.run(where()) == made_on_auto
        greenportal.set_default_runner(None)
    assert greenportal.await_(where()) == made_on_auto


def test_bad_input(automatic: None) -> None:
    before = greenportal.default_runner()
    for wrong in ("trio", Runner, object(), 0):
        with pytest.raises(TypeError, match=r"set_default_runner\(\) needs a greenportal\.Runner"):
            greenportal.set_default_runner(wrong)  # type: ignore[arg-type]
    closed = Runner()
    closed.close()
    with pytest.raises(RunnerClosedError, match="got a closed Runner"):
        greenportal.set_default_runner(closed)
    assert isinstance(RunnerClosedError(), RuntimeError)
    # Nothing changed.
    assert greenportal.default_runner() is before


def test_a_chosen_runner_closed_later_is_not_replaced(automatic: None) -> None:
    chosen = Runner()
    greenportal.set_default_runner(chosen)
    chosen.close()
    with pytest.raises(RunnerClosedError, match=re.escape("set_default_runner(None)")):
        greenportal.default_runner()
    coro = where()
    with pytest.raises(RunnerClosedError, match="set_default_runner"):
        greenportal.await_(coro)
    assert inspect.getcoroutinestate(coro) == inspect.CORO_CLOSED  # no "never awaited"
    assert greenportal.set_default_runner(None) is chosen
    assert not greenportal.default_runner().closed


def test_await_in_plain_threads_uses_the_chosen_runner(flavor: Flavor, automatic: None) -> None:
    with flavor.make() as chosen:
        greenportal.set_default_runner(chosen)
        loop_thread, loop = chosen.run(where())
        assert loop_thread != threading.get_ident()
        if flavor.is_trio:
            assert isinstance(loop, trio.lowlevel.TrioToken)
        else:
            assert loop is chosen.loop
            if flavor.name == "uvloop":
                import uvloop

                assert isinstance(loop, uvloop.Loop)
        # In the main thread, and in other threads with no loop.
        assert greenportal.await_(where()) == (loop_thread, loop)
        assert [in_thread(lambda: greenportal.await_(where())).result(WAIT) for _ in range(3)] == [
            (loop_thread, loop)
        ] * 3


def test_blocking_uses_the_chosen_runner(flavor: Flavor, automatic: None) -> None:
    @greenportal.blocking
    async def sleep_then_where() -> tuple[int, object]:
        await flavor.sleep(0)
        return await where()

    with flavor.make() as chosen:
        greenportal.set_default_runner(chosen)
        expected = chosen.run(where())
        assert sleep_then_where() == expected
        assert in_thread(sleep_then_where).result(WAIT) == expected


def test_set_and_get_from_many_threads(automatic: None) -> None:
    auto = greenportal.default_runner()
    with Runner() as chosen:
        barrier = threading.Barrier(8)

        def toggle() -> set[Runner]:
            barrier.wait(WAIT)
            seen = set()
            for _ in range(200):
                greenportal.set_default_runner(chosen)
                seen.add(greenportal.default_runner())
                greenportal.set_default_runner(None)
                seen.add(greenportal.default_runner())
            return seen

        futures = [in_thread(toggle) for _ in range(8)]
        seen = set().union(*(f.result(WAIT) for f in futures))
        assert seen == {auto, chosen}
        assert greenportal.set_default_runner(None) is None


@pytest.mark.subprocess
@pytest.mark.skipif(not hasattr(__import__("os"), "fork"), reason="needs fork()")
@pytest.mark.parametrize("kind", ["trio", "uvloop"])
def test_a_chosen_runner_stays_chosen_after_fork(kind: str) -> None:
    skip_missing(kind)
    body = """
    import warnings
    warnings.simplefilter("ignore", DeprecationWarning)  # fork with threads, 3.12+

    async def where():
        return threading.get_native_id(), loop_identity()

    chosen = make_runner(KIND)
    greenportal.set_default_runner(chosen)
    parent = greenportal.await_(where())
    pid = os.fork()
    if pid == 0:
        status = 1
        try:
            log("child: same default", greenportal.default_runner() is chosen)
            tid, loop = greenportal.await_(where())
            log("child: fresh loop thread", tid != parent[0])
            log("child: same kind", type(loop) is type(parent[1]))
            chosen.close()
            status = 0
        finally:
            sys.stdout.flush()
            os._exit(status)
    _, status = os.waitpid(pid, 0)
    log("child exit", os.waitstatus_to_exitcode(status))
    log("parent unchanged", greenportal.await_(where()) == parent)
    """
    assert run_script(body, kind) == [
        "child: same default True",
        "child: fresh loop thread True",
        "child: same kind True",
        "child exit 0",
        "parent unchanged True",
    ]


@pytest.mark.subprocess
@pytest.mark.parametrize("kind", ["asyncio", "trio"])
def test_a_chosen_runner_is_closed_at_exit(kind: str) -> None:
    skip_missing(kind)
    body = """
    class Context:
        async def __aenter__(self):
            return self
        async def __aexit__(self, *exc_info):
            log("context exited at exit")

    chosen = make_runner(KIND)
    greenportal.set_default_runner(chosen)
    greenportal.default_runner().enter_context(Context())
    log("end of script")
    """
    assert run_script(body, kind) == ["end of script", "context exited at exit"]


# ---------------------------------------------------- awaitables of the wrong library

TRIO_HINT = re.escape('greenportal.set_default_runner(greenportal.Runner(backend="trio"))')

TRIO_AWAITABLES: dict[str, Callable[[], Awaitable[Any]]] = (
    {}
    if trio is None
    else {
        "sleep(0)": lambda: trio.sleep(0),
        "sleep(0.01)": lambda: trio.sleep(0.01),
        "Event.wait": lambda: trio.Event().wait(),
        "cancel_shielded_checkpoint": lambda: trio.lowlevel.cancel_shielded_checkpoint(),
        "nursery": lambda: _trio_nursery(),
    }
)


async def _trio_nursery() -> None:
    async with trio.open_nursery() as nursery:
        nursery.start_soon(trio.sleep, 0)


def _check_refused(aw: Awaitable[Any], error: BaseException, pattern: str) -> None:
    assert isinstance(error, RuntimeError)
    assert re.search(pattern, str(error)), str(error)
    assert error.__cause__ is not None  # the library's own error, for the record
    if inspect.iscoroutine(aw):
        assert inspect.getcoroutinestate(aw) == inspect.CORO_CLOSED
    gc_collect_harder()  # a "never awaited" warning would fail the test here


@needs_trio
@pytest.mark.parametrize("what", sorted(TRIO_AWAITABLES))
def test_trio_awaitable_on_the_default_asyncio_runner(what: str, automatic: None) -> None:
    default = greenportal.default_runner()
    for call in (greenportal.await_, lambda aw: in_thread(lambda: greenportal.await_(aw)).result()):
        aw = TRIO_AWAITABLES[what]()
        with pytest.raises(
            RuntimeError, match="a Trio awaitable reached an asyncio Runner"
        ) as info:
            call(aw)
        assert re.search(TRIO_HINT, str(info.value))
        _check_refused(aw, info.value, TRIO_HINT)
    # The Runner goes on.
    assert greenportal.await_(asyncio.sleep(0, "ok")) == "ok"
    assert greenportal.default_runner() is default and not default.closed


@needs_trio
@pytest.mark.parametrize("loop_kind", ["asyncio", "uvloop"])
@pytest.mark.parametrize("what", sorted(TRIO_AWAITABLES))
def test_trio_awaitable_on_an_explicit_asyncio_runner(what: str, loop_kind: str) -> None:
    with Flavor(loop_kind).make() as runner:
        aw = TRIO_AWAITABLES[what]()
        with pytest.raises(
            RuntimeError, match="a Trio awaitable reached an asyncio Runner"
        ) as info:
            runner.run(aw)
        _check_refused(aw, info.value, TRIO_HINT)
        # As an async function, and through submit().
        with pytest.raises(RuntimeError, match=TRIO_HINT):
            runner.run(trio.sleep, 0)
        future = runner.submit(trio.sleep, 0)
        error = future.exception(WAIT)
        assert isinstance(error, RuntimeError) and re.search(TRIO_HINT, str(error))
        assert runner.run(asyncio.sleep(0, "ok")) == "ok"


def _asyncio_future_of(other: Runner) -> asyncio.Future[None]:
    async def make() -> asyncio.Future[None]:
        return asyncio.get_running_loop().create_future()

    return other.run(make)


ASYNCIO_AWAITABLES: dict[str, Callable[[Runner], Awaitable[Any]]] = {
    "sleep(0)": lambda _: asyncio.sleep(0),
    "sleep(0.01)": lambda _: asyncio.sleep(0.01),
    "Event.wait": lambda _: asyncio.Event().wait(),
    "Future": _asyncio_future_of,
}

ASYNCIO_HINT = "an asyncio awaitable .*reached a Trio Runner.*set_default_runner\\(None\\)"


@needs_trio
@pytest.mark.parametrize("what", sorted(ASYNCIO_AWAITABLES))
def test_asyncio_awaitable_on_a_trio_runner(what: str, automatic: None) -> None:
    with Runner() as other, Runner("trio") as runner:
        aw = ASYNCIO_AWAITABLES[what](other)
        with pytest.raises(RuntimeError, match=ASYNCIO_HINT) as info:
            runner.run(aw)
        _check_refused(aw, info.value, ASYNCIO_HINT)
        # The same through await_ with the Trio Runner chosen as the default.
        greenportal.set_default_runner(runner)
        aw = ASYNCIO_AWAITABLES[what](other)
        with pytest.raises(RuntimeError, match=ASYNCIO_HINT) as info:
            greenportal.await_(aw)
        _check_refused(aw, info.value, ASYNCIO_HINT)
        assert runner.run(trio.sleep, 0) is None
        assert greenportal.await_(where())[1] == runner.run(where())[1]


def test_other_runtime_errors_are_left_alone(runner: Runner) -> None:
    async def fails() -> None:
        await asyncio.sleep(0) if runner.backend == "asyncio" else await trio.sleep(0)
        raise RuntimeError("mine")

    with pytest.raises(RuntimeError, match=r"^mine$") as info:
        runner.run(fails)
    assert info.value.__cause__ is None


# ------------------------------------------------------------- Runner.__exit__


class Ctx:
    """An async context manager that logs what its __aexit__ receives."""

    def __init__(
        self, name: str, log: list[Any], *, suppress: bool = False, raises: Any = None
    ) -> None:
        self.name = name
        self.log = log
        self.suppress = suppress
        self.raises = raises

    async def __aenter__(self) -> str:
        return self.name

    async def __aexit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> bool:
        self.log.append((self.name, exc))
        if self.raises is not None:
            raise self.raises
        return self.suppress


def test_exit_passes_the_exception_last_first(runner: Runner) -> None:
    log: list[Any] = []
    error = ValueError("in the body")
    with pytest.raises(ValueError) as info:
        with runner:
            for name in "abc":
                runner.enter_context(Ctx(name, log))
            raise error
    assert info.value is error
    assert log == [("c", error), ("b", error), ("a", error)]
    assert runner.closed


def test_exit_without_exception(runner: Runner) -> None:
    log: list[Any] = []
    with runner:
        assert runner.enter_context(Ctx("a", log)) == "a"
        runner.enter_context(Ctx("b", log))
    assert log == [("b", None), ("a", None)]


def test_a_context_suppresses_the_exception(runner: Runner) -> None:
    log: list[Any] = []
    error = KeyError("in the body")
    with runner:
        runner.enter_context(Ctx("a", log))
        runner.enter_context(Ctx("b", log, suppress=True))
        runner.enter_context(Ctx("c", log))
        raise error
    # Suppressed by b: a, exited after it, sees no exception.
    assert log == [("c", error), ("b", error), ("a", None)]


def test_exit_returns_true_when_suppressed(flavor: Flavor) -> None:
    suppressing, plain = flavor.make(), flavor.make()
    error = ValueError()
    log: list[Any] = []
    suppressing.enter_context(Ctx("s", log, suppress=True))
    plain.enter_context(Ctx("p", log))
    assert suppressing.__exit__(ValueError, error, error.__traceback__) is True
    assert plain.__exit__(ValueError, error, error.__traceback__) is False
    # A suppressing context with no exception in flight suppresses nothing.
    quiet = flavor.make()
    quiet.enter_context(Ctx("q", log, suppress=True))
    assert quiet.__exit__(None, None, None) is False
    assert log == [("s", error), ("p", error), ("q", None)]


def test_a_context_raising_a_new_exception_is_chained(runner: Runner) -> None:
    log: list[Any] = []
    body_error = ValueError("in the body")
    c_error = KeyError("from c")
    a_error = TypeError("from a")
    with pytest.raises(TypeError) as info:
        with runner:
            runner.enter_context(Ctx("a", log, raises=a_error))
            runner.enter_context(Ctx("b", log))
            runner.enter_context(Ctx("c", log, raises=c_error))
            raise body_error
    assert info.value is a_error
    # Each later context saw the exception the one before it raised.
    assert log == [("c", body_error), ("b", c_error), ("a", c_error)]
    assert a_error.__context__ is c_error
    assert c_error.__context__ is body_error
    assert runner.closed


def test_a_new_exception_after_a_suppression_propagates(runner: Runner) -> None:
    log: list[Any] = []
    new = KeyError("from a")
    with pytest.raises(KeyError) as info:
        with runner:
            runner.enter_context(Ctx("a", log, raises=new))
            runner.enter_context(Ctx("b", log, suppress=True))
            raise ValueError("suppressed by b")
    assert info.value is new
    assert new.__context__ is None  # the suppressed one is gone, as with ExitStack
    assert [name for name, _ in log] == ["b", "a"]


def test_close_raises_what_a_context_raised(runner: Runner) -> None:
    log: list[Any] = []
    error = KeyError("from b")
    runner.enter_context(Ctx("a", log))
    runner.enter_context(Ctx("b", log, raises=error))
    with pytest.raises(KeyError) as info:
        runner.close()
    assert info.value is error
    assert log == [("b", None), ("a", error)]  # a got it, as in an ExitStack
    assert runner.closed
    runner.close()  # idempotent, and quiet the second time


def test_exit_with_asynccontextmanager(runner: Runner, flavor: Flavor) -> None:
    seen: list[Any] = []

    @asynccontextmanager
    async def swallow(kind: type[BaseException]) -> AsyncIterator[None]:
        try:
            yield
        except kind as exc:
            await flavor.sleep(0)
            seen.append(exc)

    runner.enter_context(swallow(LookupError))
    error = IndexError("swallowed on the loop")
    with runner:
        raise error
    assert seen == [error]


def test_exit_chains_onto_the_exception_in_flight_in_the_caller(runner: Runner) -> None:
    # Raised from __exit__ during an except block elsewhere, the new exception
    # keeps the chain built on the loop rather than the caller's exception.
    log: list[Any] = []
    new = KeyError("from a")
    runner.enter_context(Ctx("a", log, raises=new))
    body = ValueError("body")
    try:
        raise RuntimeError("handled by the caller")
    except RuntimeError:
        with pytest.raises(KeyError):
            runner.__exit__(ValueError, body, None)
    assert new.__context__ is body
