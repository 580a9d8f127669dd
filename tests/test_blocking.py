"""blocking(): one async implementation, a blocking API, in every place sync code runs.

Each behaviour runs in three places: inside a task with a portal (on every
backend configuration), in a greenportal.to_thread worker (every backend),
and in a program with no event loop (the default Runner).
"""

from __future__ import annotations

import asyncio
import inspect
import threading
from collections.abc import AsyncGenerator, AsyncIterator
from typing import Any

import anyio
import pytest

import greenportal
from greenportal import blocking, with_portal_run_sync

from .conftest import Place


class Boom(Exception):
    pass


@blocking
async def add(a: int, b: int = 1) -> int:
    """Add, asynchronously."""
    await anyio.sleep(0)
    return a + b


@blocking
async def fail(exc: BaseException) -> None:
    await anyio.sleep(0)
    raise exc


closed: list[str] = []


@blocking
async def counter(limit: int) -> AsyncGenerator[Any, int | None]:
    """Count up to *limit*; a sent value jumps there; KeyError is answered."""
    i = 0
    try:
        while i < limit:
            await anyio.sleep(0)
            try:
                jump = yield i
            except KeyError:
                yield "caught"
                continue
            i = jump if jump is not None else i + 1
    finally:
        await anyio.sleep(0)
        closed.append(f"counter({limit})")


@blocking
class Store:
    """An async key-value store."""

    prefix = "k:"

    def __init__(self, name: str) -> None:
        self.name = name
        self.data: dict[str, int] = {}
        self.log: list[str] = []

    @property
    def size(self) -> int:
        return len(self.data)

    def describe(self) -> str:
        return f"store {self.name}"

    async def put(self, key: str, value: int) -> None:
        await anyio.sleep(0)
        self.data[self.prefix + key] = value

    async def get(self, key: str) -> int:
        await anyio.sleep(0)
        return await self._lookup(key)

    async def _lookup(self, key: str) -> int:
        # Calls between async methods stay async inside the implementation.
        return self.data[self.prefix + key]

    async def items(self) -> AsyncIterator[tuple[str, int]]:
        for item in sorted(self.data.items()):
            await anyio.sleep(0)
            yield item

    async def __aenter__(self) -> Any:
        await anyio.sleep(0)
        self.log.append("enter")
        return self

    async def __aexit__(self, exc_type: Any, exc: Any, tb: Any) -> bool:
        await anyio.sleep(0)
        self.log.append(f"exit {exc_type.__name__ if exc_type else None}")
        return exc_type is KeyError  # swallow KeyError only

    @staticmethod
    async def normalise(key: str) -> str:
        await anyio.sleep(0)
        return key.lower()

    @classmethod
    async def make(cls, name: str) -> Any:
        await anyio.sleep(0)
        return cls(name)


class Countdown:
    """An async iterator (not a generator)."""

    def __init__(self, start: int) -> None:
        self.n = start

    def __aiter__(self) -> Countdown:
        return self

    async def __anext__(self) -> int:
        await anyio.sleep(0)
        if self.n <= 0:
            raise StopAsyncIteration
        self.n -= 1
        return self.n + 1


BlockingCountdown = blocking(Countdown)


def test_function(place: Place) -> None:
    def layer() -> Any:
        return add(1), add(2, b=5), add(b=0, a=3)

    assert place(layer) == (2, 7, 3)


def test_function_exception(place: Place) -> None:
    err = Boom("x")

    def layer() -> None:
        with pytest.raises(Boom) as info:
            fail(err)
        assert info.value is err

    place(layer)


def test_function_keeps_original_and_metadata() -> None:
    assert inspect.iscoroutinefunction(add.aio)
    assert add.__name__ == "add"
    assert add.__doc__ == "Add, asynchronously."
    assert str(inspect.signature(add)) == "(a: 'int', b: 'int' = 1) -> 'int'"
    assert "blocking function" in repr(add)
    assert blocking(add) is add  # wrapping twice changes nothing


def test_generator(place: Place) -> None:
    def layer() -> Any:
        closed.clear()
        full = list(counter(3))
        gen = counter(10)
        steps = [next(gen), gen.send(5), next(gen), gen.throw(KeyError()), next(gen)]
        gen.close()
        return full, steps, list(closed)

    full, steps, closed_now = place(layer)
    assert full == [0, 1, 2]
    assert steps == [0, 5, 6, "caught", 6]
    assert closed_now == ["counter(3)", "counter(10)"]


def test_generator_break_closes_async_generator(place: Place) -> None:
    def layer() -> list[str]:
        closed.clear()
        gen = counter(100)
        for value in gen:
            if value == 2:
                break
        gen.close()  # what a for loop's owner does; also what GC does
        return list(closed)

    assert place(layer) == ["counter(100)"]


def test_generator_throw_unhandled_propagates(place: Place) -> None:
    def layer() -> None:
        gen = counter(5)
        next(gen)
        with pytest.raises(Boom):
            gen.throw(Boom())
        with pytest.raises(StopIteration):
            next(gen)

    place(layer)


def test_generator_function_metadata() -> None:
    assert inspect.isasyncgenfunction(counter.aio)
    assert counter.__name__ == "counter"
    assert inspect.isgenerator(counter(1))


def test_class(place: Place) -> None:
    def layer() -> Any:
        store = Store("s")
        store.put("a", 1)
        store.put("b", 2)
        out = [store.get("a"), store.size, store.describe(), store.name, list(store.items())]
        store.name = "renamed"  # attribute writes reach the async object
        out.append(store.aio.name)
        out.append(Store.normalise("KEY"))
        made = Store.make("m")
        out.append(type(made).__name__)
        with pytest.raises(KeyError):
            store.get("missing")
        return out

    assert place(layer) == [
        1,
        2,
        "store s",
        "s",
        [("k:a", 1), ("k:b", 2)],
        "renamed",
        "key",
        "Store",
    ]


def test_class_context_manager(place: Place) -> None:
    def layer() -> Any:
        store = Store("c")
        with store as entered:
            assert entered is store  # __aenter__ returning self gives the wrapper
            entered.put("x", 1)
        with store:
            raise KeyError("swallowed by __aexit__")
        with pytest.raises(Boom), store:
            raise Boom()
        return store.aio.log

    assert place(layer) == ["enter", "exit None", "enter", "exit KeyError", "enter", "exit Boom"]


def test_class_async_iterator(place: Place) -> None:
    def layer() -> list[int]:
        return list(BlockingCountdown(3))

    assert place(layer) == [3, 2, 1]


def test_class_keeps_originals() -> None:
    assert Store.aio is Store.__aio_class__
    assert Store.__name__ == "Store"
    assert Store.__doc__ == "An async key-value store."
    instance = Store("x")
    assert isinstance(instance, greenportal.BlockingObject)
    assert type(instance.aio).__name__ == "Store"
    assert not isinstance(instance.aio, greenportal.BlockingObject)
    assert inspect.iscoroutinefunction(Store.get.aio)
    # The bound blocking method carries the bound async method.
    bound_aio = instance.get.aio
    assert bound_aio.__self__ is instance.aio
    assert "blocking" in repr(instance)


def test_bound_aio_is_usable_from_async(backend: Any) -> None:
    store = Store("y")

    async def main() -> int:
        await store.put.aio("k", 7)
        return await store.get.aio("k")

    assert backend.run(main) == 7


def test_decorated_method_binds() -> None:
    class Service:
        def __init__(self) -> None:
            self.calls = 0

        @blocking
        async def ping(self, n: int) -> tuple[int, int]:
            await anyio.sleep(0)
            self.calls += 1
            return n, self.calls

    service = Service()
    assert service.ping(5) == (5, 1)
    assert asyncio.run(service.ping.aio(6)) == (6, 2)


def test_portal_call_stays_on_the_loop_thread(backend: Any) -> None:
    """In a portal the blocking call is a switch on the caller's own loop: no thread hop."""
    seen: list[Any] = []

    @blocking
    async def where() -> int:
        await anyio.sleep(0)
        return threading.get_ident()

    async def main() -> None:
        def layer() -> None:
            seen.append(where())

        await with_portal_run_sync(layer)

    backend.run(main)
    assert seen == [threading.get_ident()]


def test_cancellation_through_blocking_call(backend: Any) -> None:
    events: list[str] = []

    @blocking
    async def wait_forever() -> None:
        try:
            await anyio.sleep_forever()
        finally:
            events.append("async finally")

    def layer() -> None:
        try:
            wait_forever()
        finally:
            events.append("sync finally")

    async def main() -> None:
        with anyio.move_on_after(0.05):
            await with_portal_run_sync(layer)

    backend.run(main)
    assert events == ["async finally", "sync finally"]


def test_loop_thread_without_portal_raises(aio_backend: Any) -> None:
    async def main() -> None:
        with pytest.raises(RuntimeError, match="portal"):
            add(1)

    aio_backend.run(main)


def test_bad_input() -> None:
    def plain(x: int) -> int:
        return x

    with pytest.raises(TypeError, match="not async"):
        blocking(plain)  # type: ignore[call-overload]
    with pytest.raises(TypeError, match="got 'int'"):
        blocking(3)  # type: ignore[call-overload]
    with pytest.raises(TypeError, match=r"needs a greenportal\.Runner"):
        blocking(add.aio, runner="default")  # type: ignore[call-overload]
