"""Adapters that let async objects be used from synchronous code via await_.

Each adapter is a thin layer over :func:`greenportal.await_` and so works
wherever ``await_`` does.  Lookups of special methods go through the type,
as the ``async with`` and ``async for`` statements do, and a missing method
raises the same exception type the native statement raises on the running
Python.
"""

from __future__ import annotations

import contextlib
import functools
import sys
from collections.abc import (
    AsyncGenerator,
    AsyncIterable,
    AsyncIterator,
    Awaitable,
    Callable,
    Coroutine,
)
from types import TracebackType
from typing import Any, Generic, ParamSpec, TypeVar, cast

from ._api import with_portal_run_sync
from ._await import await_

P = ParamSpec("P")
P2 = ParamSpec("P2")
T = TypeVar("T")
T2 = TypeVar("T2")

# Native `async with` on an object without __aenter__ raises TypeError since
# Python 3.11 and AttributeError before; we match the running Python.
_MissingProtocolError: type[Exception] = (
    TypeError if sys.version_info >= (3, 11) else AttributeError
)


def autoawait(fn: Callable[P, Awaitable[T]]) -> Callable[P, T]:
    """Decorator: make an async function callable from sync code without ``await``.

    Each call runs ``await_(fn(*args, **kwargs))``.  Handy for the places that
    must be synchronous, such as property setters and magic methods.
    """

    @functools.wraps(fn)
    def call(*args: P.args, **kwargs: P.kwargs) -> T:
        return await_(fn(*args, **kwargs))

    return call


def decorate_as_sync(
    decorator: Callable[[Callable[P, T]], Callable[P2, T2]],
) -> Callable[[Callable[P, Awaitable[T]]], Callable[P2, Coroutine[Any, Any, T2]]]:
    """Apply a decorator written for sync functions to an async function.

    ``@decorate_as_sync(functools.lru_cache(maxsize=128))`` caches the
    *results* of an async function rather than its coroutine objects: the
    decorator wraps a sync function that awaits the original via
    :func:`await_`, and the result is async again, run under
    :func:`with_portal_run_sync`.
    """

    def apply(async_fn: Callable[P, Awaitable[T]]) -> Callable[P2, Coroutine[Any, Any, T2]]:
        @functools.wraps(async_fn)
        def as_sync(*args: P.args, **kwargs: P.kwargs) -> T:
            return await_(async_fn(*args, **kwargs))

        decorated = decorator(as_sync)

        @functools.wraps(decorated)
        async def as_async(*args: P2.args, **kwargs: P2.kwargs) -> T2:
            return await with_portal_run_sync(decorated, *args, **kwargs)

        return as_async

    return apply


def _protocol_message(tp: type, no_aenter: bool) -> str:
    # Native `async with`'s wording on the running Python, which greenback's
    # is too: 3.11+ "'X' object does not support the asynchronous context
    # manager protocol[ (missed __aexit__ method)]"; 3.10 an AttributeError,
    # which greenback words "type object 'X' has no attribute '__aexit__'".
    name = tp.__name__
    if sys.version_info >= (3, 11):
        missed = "" if no_aenter else " (missed __aexit__ method)"
        return f"{name!r} object does not support the asynchronous context manager protocol{missed}"
    method = "__aenter__" if no_aenter and hasattr(tp, "__aexit__") else "__aexit__"
    return (
        f"type object {name!r} has no attribute {method!r}: the object does not support "
        "the asynchronous context manager protocol"
    )


class async_context(Generic[T]):
    """Use an async context manager in a synchronous ``with`` statement."""

    __slots__ = ("_aexit", "_cm")

    def __init__(self, cm: contextlib.AbstractAsyncContextManager[T]) -> None:
        self._cm = cm
        self._aexit: Callable[..., Awaitable[bool | None]] | None = None

    def __enter__(self) -> T:
        tp = type(self._cm)
        aenter = getattr(tp, "__aenter__", None)
        aexit = getattr(tp, "__aexit__", None)
        if aenter is None or aexit is None:
            raise _MissingProtocolError(_protocol_message(tp, aenter is None))
        self._aexit = aexit
        return cast(T, await_(aenter(self._cm)))

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> bool | None:
        aexit = self._aexit
        if aexit is None:
            raise RuntimeError("async_context.__exit__ called without __enter__")
        self._aexit = None
        return await_(aexit(self._cm, exc_type, exc, tb))


class async_iter(Generic[T]):
    """Use an async iterable in a synchronous ``for`` loop (or ``yield from``).

    For an async generator, ``send``, ``throw`` and ``close`` map to
    ``asend``, ``athrow`` and ``aclose``.
    """

    __slots__ = ("_it",)

    def __init__(self, iterable: AsyncIterable[T]) -> None:
        tp = type(iterable)
        aiter_ = getattr(tp, "__aiter__", None)
        # greenback's wording, for tests written against it.
        if aiter_ is None:
            raise TypeError(
                f"'async_iter' requires an object with __aiter__ method, got {tp.__name__} "
                "(async_iter() needs an async iterable)"
            )
        it = aiter_(iterable)
        if getattr(type(it), "__anext__", None) is None:
            raise TypeError(
                "'async_iter' received an object from __aiter__ that does not implement "
                f"__anext__: {type(it).__name__} ({tp.__qualname__}.__aiter__() returned it)"
            )
        self._it: AsyncIterator[T] = it

    def __iter__(self) -> async_iter[T]:
        return self

    def __next__(self) -> T:
        it = self._it
        try:
            return await_(type(it).__anext__(it))
        except StopAsyncIteration as exc:
            raise StopIteration(*exc.args) from None

    def _gen(self, method: str) -> AsyncGenerator[T, Any]:
        if not isinstance(self._it, AsyncGenerator):
            raise AttributeError(
                f"{method}() needs an async generator, and {type(self._it).__qualname__!r} "
                "is not one"
            )
        return self._it

    def send(self, value: Any) -> T:
        """Resume the async generator with *value* (``asend``) and return what it yields next.

        Raises :exc:`StopIteration` when it finishes.  Needs an async
        generator (or an object with ``asend``), as ``generator.send`` would.
        """
        try:
            return await_(self._gen("send").asend(value))
        except StopAsyncIteration as exc:
            raise StopIteration(*exc.args) from None

    def throw(self, typ: Any, val: Any = None, tb: Any = None) -> T:
        """Raise an exception inside the async generator (``athrow``).

        Returns what it yields next; raises :exc:`StopIteration` if it
        finishes, or the exception if it does not catch it.
        """
        gen = self._gen("throw")
        try:
            if val is None and tb is None:
                return await_(gen.athrow(typ))
            return await_(gen.athrow(typ, val, tb))
        except StopAsyncIteration as exc:
            raise StopIteration(*exc.args) from None

    def close(self) -> None:
        """Close the async generator (``aclose``), running its ``finally`` blocks."""
        await_(self._gen("close").aclose())
