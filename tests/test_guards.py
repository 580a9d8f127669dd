"""Async callables refused where a sync one is expected, before they are called.

``with_portal_run_sync``, ``to_thread`` and ``asyncify`` raise ``TypeError``
naming the call to use, for an async function, a ``functools.partial`` of
one, a bound async method or an object whose ``__call__`` is async; a sync
callable that returns a coroutine gets its coroutine closed and a
``TypeError`` too.  No "coroutine ... was never awaited" warning follows
(warnings are errors in this suite, and each test collects garbage at its
end to make one appear).
"""

from __future__ import annotations

import functools
import gc
import inspect
import sys
from collections.abc import Callable, Coroutine
from typing import Any

import anyio
import pytest

import greenportal

from .conftest import Backend


async def double(x: int = 1) -> int:
    await anyio.sleep(0)
    return 2 * x


class AsyncCallable:
    async def __call__(self, x: int = 1) -> int:
        return await double(x)

    async def method(self, x: int = 1) -> int:
        return await double(x)


calls: list[str] = []


def _marked() -> Callable[..., Any]:
    # A sync function marked as a coroutine function (3.12+): calling it
    # would record the call, so the log proves that nothing was called.
    def fn(x: int = 1) -> Coroutine[Any, Any, int]:
        calls.append("called")
        return double(x)

    return inspect.markcoroutinefunction(fn)  # type: ignore[attr-defined,no-any-return]


ASYNC_CALLABLES: dict[str, Callable[[], Callable[..., Any]]] = {
    "async def": lambda: double,
    "partial": lambda: functools.partial(double, 2),
    "nested partial": lambda: functools.partial(functools.partial(double), 2),
    "async __call__": AsyncCallable,
    "partial of async __call__": lambda: functools.partial(AsyncCallable(), 2),
    "bound async method": lambda: AsyncCallable().method,
}
if sys.version_info >= (3, 12):
    ASYNC_CALLABLES["markcoroutinefunction"] = _marked


@pytest.fixture(autouse=True)
def no_never_awaited() -> Any:
    calls.clear()
    yield
    # One pass finds a coroutine left in a cycle (one without is gone already,
    # its "never awaited" warning an error by the warning filters).
    gc.collect()
    assert calls == []


@pytest.mark.parametrize("kind", sorted(ASYNC_CALLABLES))
def test_with_portal_run_sync_refuses_async(backend: Backend, kind: str) -> None:
    async def main() -> None:
        fn = ASYNC_CALLABLES[kind]()
        with pytest.raises(
            TypeError,
            match=r"with_portal_run_sync\(\) got an async function .*"
            r"'await greenportal\.with_portal_run\(async_fn, \*args\)', or await it directly",
        ):
            await greenportal.with_portal_run_sync(fn)
        # With a portal already in place too (the short path).
        await greenportal.ensure_portal()
        with pytest.raises(TypeError, match=r"with_portal_run_sync\(\) got an async function"):
            await greenportal.with_portal_run_sync(fn)

    backend.run(main)


@pytest.mark.parametrize("kind", sorted(ASYNC_CALLABLES))
def test_to_thread_refuses_async(backend: Backend, kind: str) -> None:
    async def main() -> None:
        fn = ASYNC_CALLABLES[kind]()
        with pytest.raises(TypeError, match=r"to_thread\(\) got an async function .*Await it"):
            await greenportal.to_thread(fn)

    backend.run(main)


@pytest.mark.parametrize("kind", sorted(ASYNC_CALLABLES))
def test_asyncify_refuses_async(kind: str) -> None:
    fn = ASYNC_CALLABLES[kind]()
    with pytest.raises(TypeError, match=r"asyncify\(\) got an async function .*async already"):
        greenportal.asyncify(fn)
    with pytest.raises(TypeError, match=r"asyncify\(\) got an async function"):
        greenportal.asyncify(limiter=greenportal.ThreadLimiter(2))(fn)


def test_the_name_is_in_the_message(backend: Backend) -> None:
    async def main() -> None:
        with pytest.raises(TypeError, match="'double'"):
            await greenportal.with_portal_run_sync(functools.partial(double, 3))
        with pytest.raises(TypeError, match="'AsyncCallable' object"):
            await greenportal.to_thread(AsyncCallable())

    backend.run(main)


# -------------------------------------------- a sync callable returning a coroutine


def test_with_portal_run_sync_closes_a_returned_coroutine(backend: Backend) -> None:
    made: list[Coroutine[Any, Any, int]] = []

    def sneaky() -> Coroutine[Any, Any, int]:
        made.append(double(5))
        return made[-1]

    async def main() -> None:
        for with_portal in (False, True):
            if with_portal:
                await greenportal.ensure_portal()
            with pytest.raises(
                TypeError,
                match=r"with_portal_run_sync\(\) runs a sync function, but 'test_.*sneaky' "
                r"returned a coroutine .*closed unawaited.*greenportal\.await_",
            ):
                await greenportal.with_portal_run_sync(sneaky)
            assert inspect.getcoroutinestate(made[-1]) == inspect.CORO_CLOSED

    backend.run(main)
    assert len(made) == 2


def test_portal_decorator_refuses_a_returned_coroutine(backend: Backend) -> None:
    @greenportal.portal
    def sneaky() -> Any:
        return double(1)

    async def main() -> None:
        with pytest.raises(TypeError, match="returned a coroutine"):
            await sneaky()

    backend.run(main)


def test_to_thread_and_asyncify_close_a_returned_coroutine(backend: Backend) -> None:
    made: list[Coroutine[Any, Any, int]] = []

    def sneaky() -> Coroutine[Any, Any, int]:
        made.append(double(5))
        return made[-1]

    # Under Trio, trio.to_thread.run_sync (which greenportal's to_thread uses
    # there) closes the coroutine and raises first, in its own words.
    expected = (
        "Trio expected a sync function, but .*sneaky' appears to be asynchronous"
        if backend.is_trio
        else r"to_thread\(\) runs a sync function, but .*sneaky' returned a coroutine"
    )

    async def main() -> None:
        with pytest.raises(TypeError, match=expected):
            await greenportal.to_thread(sneaky)
        with pytest.raises(TypeError, match=expected):
            await greenportal.asyncify(sneaky)()

    backend.run(main)
    assert len(made) == 2
    assert all(inspect.getcoroutinestate(c) == inspect.CORO_CLOSED for c in made)


# ------------------------------------------------------------ what still works


def test_sync_callables_still_work(backend: Backend) -> None:
    class SyncCallable:
        def __call__(self, x: int) -> int:
            return greenportal.await_(double(x))

    def plain(x: int) -> int:
        return greenportal.await_(double(x))

    async def main() -> None:
        assert await greenportal.with_portal_run_sync(plain, 1) == 2
        assert await greenportal.with_portal_run_sync(functools.partial(plain, 2)) == 4
        assert await greenportal.with_portal_run_sync(SyncCallable(), 3) == 6
        assert await greenportal.with_portal_run_sync(functools.wraps(double)(plain), 4) == 8
        assert await greenportal.to_thread(SyncCallable(), 5) == 10
        assert await greenportal.asyncify(plain)(6) == 12
        # A sync function returning an awaitable that is not a coroutine: returned as is.
        sentinel = object()
        assert await greenportal.with_portal_run_sync(lambda: sentinel) is sentinel
        # decorate_as_sync wraps a sync function made from an async one: not refused.
        cached = greenportal.decorate_as_sync(functools.lru_cache(maxsize=4))(double)
        assert await cached(7) == 14

    backend.run(main)


def test_portal_decorator_routes_async_callables_to_with_portal_run(backend: Backend) -> None:
    async def main() -> None:
        assert await greenportal.portal(functools.partial(double, 2))() == 4
        assert await greenportal.portal(AsyncCallable())(3) == 6

    backend.run(main)
