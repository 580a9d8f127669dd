"""autoawait, decorate_as_sync, async_context and async_iter."""

from __future__ import annotations

import contextlib
import functools
import sys
from collections.abc import AsyncIterator
from typing import Any

import anyio
import pytest

from greenportal import (
    async_context,
    async_iter,
    autoawait,
    await_,
    decorate_as_sync,
    with_portal_run_sync,
)


def test_autoawait_and_property_setter(backend: Any) -> None:
    class Account:
        def __init__(self) -> None:
            self._balance = 0

        @property
        def balance(self) -> int:
            return self._balance

        @balance.setter
        @autoawait
        async def balance(self, value: int) -> None:
            await anyio.sleep(0)
            self._balance = value

    def sync_code() -> int:
        acct = Account()
        acct.balance = 42  # type: ignore[assignment]
        return acct.balance

    async def main() -> None:
        assert await with_portal_run_sync(sync_code) == 42

    backend.run(main)


def test_autoawait_init_and_del_run_in_the_portal(backend: Any) -> None:
    """An object made and dropped in a portal task awaits in __init__ and __del__."""
    events: list[str] = []

    class Resource:
        @autoawait
        async def __init__(self) -> None:
            await anyio.sleep(0)
            events.append("opened")

        @autoawait
        async def __del__(self) -> None:
            await anyio.sleep(0)
            events.append("closed")

    def use() -> None:
        Resource()  # dropped at once: __del__ runs right here, in the portal
        events.append("after")

    async def main() -> None:
        await with_portal_run_sync(use)

    backend.run(main)
    assert events == ["opened", "closed", "after"]


def test_decorate_as_sync_with_lru_cache(backend: Any) -> None:
    calls: list[int] = []

    @decorate_as_sync(functools.lru_cache(maxsize=None))
    async def square(x: int) -> int:
        calls.append(x)
        await anyio.sleep(0)
        return x * x

    async def main() -> None:
        assert [await square(3), await square(3), await square(4)] == [9, 9, 16]

    backend.run(main)
    assert calls == [3, 4]


def test_async_context_enter_exit_and_suppress(backend: Any) -> None:
    log: list[str] = []

    @contextlib.asynccontextmanager
    async def resource(suppress: bool) -> AsyncIterator[str]:
        await anyio.sleep(0)
        log.append("open")
        try:
            yield "handle"
        except ValueError:
            log.append("saw ValueError")
            if not suppress:
                raise
        finally:
            await anyio.sleep(0)
            log.append("close")

    def sync_code() -> None:
        with async_context(resource(True)) as handle:
            assert handle == "handle"
            raise ValueError("suppressed")
        with pytest.raises(ValueError, match="kept"), async_context(resource(False)):
            raise ValueError("kept")

    async def main() -> None:
        await with_portal_run_sync(sync_code)

    backend.run(main)
    assert log == ["open", "saw ValueError", "close"] * 2


def test_async_context_rejects_non_context_managers(backend: Any) -> None:
    expected = TypeError if sys.version_info >= (3, 11) else AttributeError

    def sync_code() -> None:
        with pytest.raises(expected, match="asynchronous context manager"):
            with async_context(object()):
                pass

    async def main() -> None:
        await with_portal_run_sync(sync_code)

    backend.run(main)


def test_async_iter_over_async_generator(backend: Any) -> None:
    closed: list[bool] = []

    async def agen() -> Any:
        try:
            received = None
            for i in range(100):
                await anyio.sleep(0)
                received = yield (i, received)
        finally:
            closed.append(True)

    def sync_code() -> list[Any]:
        it = async_iter(agen())
        first = [next(it), it.send("hello")]
        with pytest.raises(KeyError):
            it.throw(KeyError("boom"))
        it.close()
        out = list(async_iter(_count(3)))
        return [first, out]

    async def main() -> None:
        assert await with_portal_run_sync(sync_code) == [[(0, None), (1, "hello")], [0, 1, 2]]

    backend.run(main)
    assert closed == [True]


async def _count(n: int) -> AsyncIterator[int]:
    for i in range(n):
        await anyio.sleep(0)
        yield i


def test_async_iter_errors(backend: Any) -> None:
    class OnlyAiter:
        def __aiter__(self) -> Any:
            return object()

    class Plain:
        def __aiter__(self) -> Any:
            return self

        async def __anext__(self) -> int:
            raise StopAsyncIteration

    def sync_code() -> None:
        with pytest.raises(TypeError, match="needs an async iterable"):
            async_iter([1, 2])  # type: ignore[arg-type]
        with pytest.raises(TypeError, match="does not implement __anext__: "):
            async_iter(OnlyAiter())
        it = async_iter(Plain())
        assert list(it) == []
        with pytest.raises(AttributeError, match="needs an async generator"):
            it.send(1)

    async def main() -> None:
        await with_portal_run_sync(sync_code)

    backend.run(main)


class Ticker:
    def __aiter__(self) -> Ticker:
        return self

    async def __anext__(self) -> int:
        await anyio.sleep(0)
        return 1


def test_adapters_need_a_portal(backend: Any) -> None:
    async def main() -> None:
        with pytest.raises(RuntimeError, match="needs a portal"):
            list(async_iter(Ticker()))
        with pytest.raises(RuntimeError, match="needs a portal"):
            await_(anyio.sleep(0))

    backend.run(main)
