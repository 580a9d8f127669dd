"""Refusing an async callable where a sync one is expected, before it is called.

``with_portal_run_sync``, ``to_thread`` and ``asyncify`` take a *sync*
callable.  Given an async one, calling it would only make a coroutine that
nobody awaits: the call would return the coroutine (or ``None``, after the
"coroutine ... was never awaited" warning) instead of doing the work.  So
each checks first (:func:`is_async_callable`) and raises ``TypeError`` that
names the call to use, having called nothing.

A sync callable can still return a coroutine (a lambda around an async
function, say); the callers close it and raise ``TypeError`` too
(:func:`refuse_coroutine`), so that no warning follows and the mistake is
reported where it was made.
"""

from __future__ import annotations

import functools
import inspect
import types
from typing import NoReturn

from ._outcome import close_refused

_FunctionType = types.FunctionType
_CO_COROUTINE = inspect.CO_COROUTINE


def is_async_callable(fn: object) -> bool:
    """Is *fn* async: an async function, a partial of one, an object with async ``__call__``?

    Bound methods and functions marked with ``inspect.markcoroutinefunction``
    count too (``inspect.iscoroutinefunction`` sees them).  Async generator
    functions do not: calling one makes an async generator, not a coroutine.
    """
    if type(fn) is _FunctionType and not fn.__dict__:
        # The common case, cheaply (this runs on every with_portal_run_sync
        # call): a plain function, which no markcoroutinefunction has marked.
        return bool(fn.__code__.co_flags & _CO_COROUTINE)
    while isinstance(fn, functools.partial):
        fn = fn.func
    if inspect.iscoroutinefunction(fn):
        return True
    if inspect.isfunction(fn) or inspect.ismethod(fn) or inspect.isclass(fn):
        return False
    call = inspect.getattr_static(type(fn), "__call__", None)
    return call is not None and inspect.iscoroutinefunction(call)


def describe(fn: object) -> str:
    while isinstance(fn, functools.partial):
        fn = fn.func
    name = getattr(fn, "__qualname__", None)
    return repr(name) if isinstance(name, str) else f"a {type(fn).__qualname__!r} object"


def refuse_coroutine(result: object, fn: object, where: str, instead: str) -> NoReturn:
    """Close the coroutine that sync callable *fn* returned, and raise TypeError."""
    close_refused(result)
    raise TypeError(
        f"{where} runs a sync function, but {describe(fn)} returned a coroutine "
        f"({type(result).__qualname__}), which was closed unawaited; {instead}"
    )


CoroutineType = types.CoroutineType
