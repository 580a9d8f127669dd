"""blocking(cls): the wrapper classes, and blocking() itself.

Async methods become sync methods, async generator methods sync generators,
``__aenter__``/``__aexit__`` become ``__enter__``/``__exit__``,
``__aiter__``/``__anext__`` become ``__iter__``/``__next__``; sync methods,
properties, static and class methods, class attributes and the common sync
dunders (``__len__``, ``__getitem__``, comparisons, ...) are forwarded to the
wrapped object, their results translated (``_blocking``).

Why a wrapper class and not a subclass: the async implementation calls its
own methods (``await self.connect()``); in a subclass those calls would find
the blocking overrides.  The wrapper keeps the async object whole.

The wrapper class is built from the class's *own* members, and its bases are
the wrappers of the class's bases (``blocking(Sub)`` derives
``blocking(Base)``), so ``isinstance`` and ``super()``-style overriding mirror
the async hierarchy.  Bases from the standard library's abstract layers
(``builtins``, ``abc``, ``typing``, ``collections.abc``, ``contextlib``,
``types``) are not mirrored.  ``blocking(cls)`` is cached: one class, one
wrapper, which is what lets return values be translated.  A generic class
gives a generic wrapper.

Each member of the async class becomes a descriptor of the wrapper that reads
the async object at call time (``_member`` chooses which), rather than a
copy: an attribute the async object changes later is seen, and a class
method is bound to the most derived async class.  ``blocking(cls,
runner=r)`` is a subclass of ``blocking(cls)`` whose ``__aio_runner__`` pins
its instances, so ``isinstance`` holds for both.

Known gaps: a member of the async class named ``aio`` is reachable only as
``obj.aio.aio``; metaclasses are not mirrored (the wrapper's is ``type``);
the bases of a subclass are mirrored without their type arguments
(``Sub(Base[int])`` gives ``blocking(Sub)`` deriving plain ``blocking(Base)``).
"""

from __future__ import annotations

import functools
import inspect
import threading
import types
import weakref
from collections.abc import AsyncGenerator, AsyncIterator, Callable, Coroutine
from types import TracebackType
from typing import TYPE_CHECKING, Any, Generic, ParamSpec, Protocol, TypeVar, overload

from . import _blocking, _runner
from ._blocking import (
    BlockingFunction,
    BlockingGeneratorFunction,
    BlockingObject,
    _construct,
    _drive_agen,
    _in,
    _in_call,
    _out,
    _submit,
    _wrappers,
    enter_async,
    exit_async,
)
from ._futures import BlockingFuture, run

if TYPE_CHECKING:
    from ._runner import Runner

P = ParamSpec("P")
T = TypeVar("T")
Y = TypeVar("Y")
S = TypeVar("S")
C = TypeVar("C")

# Guards writes to _blocking._wrappers (blocking() may run in many threads).
_wrappers_lock = threading.RLock()
_runner_bound: weakref.WeakKeyDictionary[Runner, dict[type, type[Any]]] = (
    weakref.WeakKeyDictionary()
)


_METADATA = frozenset({"__name__", "__qualname__", "__module__", "__annotations__"})


class _BoundMethod:
    """A blocking method bound to a wrapper; ``.aio`` is the bound async method."""

    __slots__ = ("__self__", "_fn", "_generator")

    def __init__(
        self, instance: BlockingObject[Any], fn: Callable[..., Any], generator: bool
    ) -> None:
        self.__self__ = instance
        self._fn = fn
        self._generator = generator

    def __call__(self, *args: Any, **kwargs: Any) -> Any:
        instance = self.__self__
        runner = instance._aio_runner
        if args or kwargs:
            args, kwargs = _in_call(args, kwargs)
        if self._generator:
            return _drive_agen(self._fn(instance._aio_object, *args, **kwargs), runner)
        return _out(run(runner, self._fn(instance._aio_object, *args, **kwargs)), runner)

    @property
    def aio(self) -> Any:
        return self._fn.__get__(self.__self__._aio_object)

    def submit(self, *args: Any, **kwargs: Any) -> BlockingFuture[Any]:
        """Start the call and return its future (see :meth:`BlockingFunction.submit`)."""
        if self._generator:
            raise TypeError(
                f"{self._fn.__qualname__} is an async generator method: iterate the "
                "generator it returns instead of submitting it"
            )
        instance = self.__self__
        args, kwargs = _in_call(args, kwargs)
        return _submit(instance._aio_runner, self._fn(instance._aio_object, *args, **kwargs))

    def __getattr__(self, name: str) -> Any:
        # The async function's names, not its code: to inspect, this is sync.
        if name in _METADATA:
            return getattr(self._fn, name)
        raise AttributeError(name)

    def __repr__(self) -> str:
        return f"<blocking method {self._fn.__qualname__} of {self.__self__!r}>"


class _AsyncMethod:
    """An async (generator) method of the async class, as a method of the wrapper."""

    def __init__(self, fn: Callable[..., Any], generator: bool) -> None:
        self.aio = fn
        self._generator = generator
        functools.update_wrapper(self, fn)

    def __get__(self, instance: Any, owner: type | None = None) -> Any:
        if instance is None:
            return self
        return _BoundMethod(instance, self.aio, self._generator)

    def __call__(self, instance: BlockingObject[Any], /, *args: Any, **kwargs: Any) -> Any:
        return _BoundMethod(instance, self.aio, self._generator)(*args, **kwargs)


class _SyncCallable:
    """A sync callable of the async side, with translated arguments and result."""

    __slots__ = ("__wrapped__", "_runner")

    def __init__(self, fn: Callable[..., Any], runner: Runner | None) -> None:
        self.__wrapped__ = fn
        self._runner = runner

    def __call__(self, *args: Any, **kwargs: Any) -> Any:
        args, kwargs = _in_call(args, kwargs)
        return _out(self.__wrapped__(*args, **kwargs), self._runner)

    def __getattr__(self, name: str) -> Any:
        return getattr(self.__wrapped__, name)

    def __repr__(self) -> str:
        return f"<blocking wrapper of {self.__wrapped__!r}>"


class _SyncMethod:
    """A sync method of the async class: called on the async object, result translated."""

    def __init__(self, fn: Callable[..., Any]) -> None:
        self._fn = fn
        functools.update_wrapper(self, fn)

    def __get__(self, instance: Any, owner: type | None = None) -> Any:
        if instance is None:
            return self
        return _SyncCallable(self._fn.__get__(instance._aio_object), instance._aio_runner)

    def __call__(self, instance: BlockingObject[Any], /, *args: Any, **kwargs: Any) -> Any:
        return self.__get__(instance)(*args, **kwargs)


class _ClassLevel:
    """A static or class method, bound at each access to the most derived async class."""

    def __init__(self, name: str, raw: staticmethod[..., Any] | classmethod[Any, ..., Any]) -> None:
        self._name = name
        fn = raw.__func__
        self._kind = (
            "generator"
            if inspect.isasyncgenfunction(fn)
            else "async"
            if inspect.iscoroutinefunction(fn)
            else "sync"
        )
        self.__doc__ = fn.__doc__
        self.__wrapped__ = fn

    def __get__(self, instance: Any, owner: type | None = None) -> Any:
        if owner is None:
            owner = type(instance)
        fn = getattr(owner.__aio_class__, self._name)  # type: ignore[attr-defined]
        runner = instance._aio_runner if instance is not None else owner.__aio_runner__  # type: ignore[attr-defined]
        if self._kind == "generator":
            return BlockingGeneratorFunction(fn, runner)
        if self._kind == "async":
            return BlockingFunction(fn, runner)
        return _SyncCallable(fn, runner)


class _Property:
    """A property of the async class, read from and written to the async object."""

    def __init__(self, name: str, raw: property) -> None:
        self._name = name
        self.__doc__ = raw.__doc__

    def __get__(self, instance: Any, owner: type | None = None) -> Any:
        if instance is None:
            return self
        return _out(getattr(instance._aio_object, self._name), instance._aio_runner)

    def __set__(self, instance: Any, value: Any) -> None:
        setattr(instance._aio_object, self._name, _in(value))

    def __delete__(self, instance: Any) -> None:
        delattr(instance._aio_object, self._name)


class _Forward:
    """Any other class member: read from the async object (or class), translated."""

    def __init__(self, name: str) -> None:
        self._name = name

    def __get__(self, instance: Any, owner: type | None = None) -> Any:
        if instance is None:
            return _out(getattr(owner.__aio_class__, self._name), owner.__aio_runner__)  # type: ignore[union-attr]
        return _out(getattr(instance._aio_object, self._name), instance._aio_runner)


def _enter(self: BlockingObject[Any]) -> Any:
    return enter_async(self, self._aio_object, self._aio_runner)


def _exit(
    self: BlockingObject[Any],
    exc_type: type[BaseException] | None,
    exc: BaseException | None,
    tb: TracebackType | None,
) -> Any:
    return exit_async(self._aio_object, self._aio_runner, exc_type, exc, tb)


def _iter(self: BlockingObject[Any]) -> Any:
    aio = self._aio_object
    aiter_ = type(aio).__aiter__
    if inspect.isasyncgenfunction(aiter_):
        return _drive_agen(aiter_(aio), self._aio_runner)
    iterator = aiter_(aio)
    if iterator is aio:
        return self
    return _out(iterator, self._aio_runner)


def _next(self: BlockingObject[Any]) -> Any:
    aio = self._aio_object
    try:
        return _out(run(self._aio_runner, type(aio).__anext__(aio)), self._aio_runner)
    except StopAsyncIteration:
        raise StopIteration from None


def _sync_dunder(fn: Callable[..., Any]) -> Callable[..., Any]:
    @functools.wraps(fn)
    def method(self: BlockingObject[Any], /, *args: Any) -> Any:
        return _out(fn(self._aio_object, *map(_in, args)), self._aio_runner)

    return method


def _async_dunder(fn: Callable[..., Any]) -> Callable[..., Any]:
    @functools.wraps(fn)
    def method(self: BlockingObject[Any], /, *args: Any, **kwargs: Any) -> Any:
        args, kwargs = _in_call(args, kwargs)
        runner = self._aio_runner
        return _out(run(runner, fn(self._aio_object, *args, **kwargs)), runner)

    return method


# Sync special methods forwarded to the async object (others are not: the
# wrapper's own __getattr__, __setattr__, __repr__, ... must stay ours).
_DUNDERS = frozenset(
    {
        "__len__",
        "__length_hint__",
        "__contains__",
        "__getitem__",
        "__setitem__",
        "__delitem__",
        "__bool__",
        "__str__",
        "__format__",
        "__bytes__",
        "__int__",
        "__float__",
        "__index__",
        "__complex__",
        "__eq__",
        "__ne__",
        "__lt__",
        "__le__",
        "__gt__",
        "__ge__",
        "__hash__",
        "__call__",
        "__reversed__",
        "__iter__",
        "__next__",
        "__enter__",
        "__exit__",
    }
)
# Names the wrapper itself uses; members of the async class by these names are
# reachable only through .aio.
_RESERVED = frozenset({"aio", "_aio_object", "_aio_runner", "_from_aio"})
# Modules whose classes are not mirrored as bases (see the module notes).
_ABSTRACT_MODULES = frozenset(
    {"builtins", "abc", "typing", "typing_extensions", "collections.abc", "_collections_abc"}
    | {"contextlib", "types"}
)
_ASYNC_PROTOCOL = ("__aenter__", "__aexit__", "__aiter__", "__anext__")


def _member(name: str, raw: Any) -> Any:
    """What the wrapper class holds for the async class's own member *raw*, or None."""
    dunder = name.startswith("__") and name.endswith("__")
    if dunder:
        if name in _ASYNC_PROTOCOL:
            return None
        if inspect.iscoroutinefunction(raw):
            return _async_dunder(raw)
        if name in _DUNDERS and (inspect.isfunction(raw) or raw is None):
            return raw if raw is None else _sync_dunder(raw)
        return None
    if name in _RESERVED:
        return None
    if isinstance(raw, (staticmethod, classmethod)):
        return _ClassLevel(name, raw)
    if isinstance(raw, property):
        return _Property(name, raw)
    if inspect.isasyncgenfunction(raw):
        return _AsyncMethod(raw, generator=True)
    if inspect.iscoroutinefunction(raw):
        return _AsyncMethod(raw, generator=False)
    if inspect.isfunction(raw):
        return _SyncMethod(raw)
    return _Forward(name)


def _wrap_class(cls: type[C]) -> type[BlockingObject[C]]:
    wrapper = _wrappers.get(cls)
    if wrapper is not None:
        return wrapper
    with _wrappers_lock:
        wrapper = _wrappers.get(cls)
        if wrapper is not None:
            return wrapper
        bases: list[Any] = [
            _wrap_class(base)
            for base in cls.__bases__
            if base is not object and base.__module__ not in _ABSTRACT_MODULES
        ]
        if not bases:
            bases.append(BlockingObject)
        params = cls.__dict__.get("__parameters__", ())
        if params:
            bases.append(Generic[params])  # type: ignore[index]
        namespace: dict[str, Any] = {
            "__aio_class__": cls,
            "__module__": cls.__module__,
            "__qualname__": cls.__qualname__,
            "__doc__": cls.__doc__,
            "__slots__": (),
        }
        for name, raw in vars(cls).items():
            member = _member(name, raw)
            if member is not None or (name == "__hash__" and raw is None):
                namespace[name] = member
        if "__init__" in vars(cls):
            namespace["__init__"] = _wrapper_init(cls.__init__)
        if hasattr(cls, "__aenter__") and hasattr(cls, "__aexit__"):
            namespace["__enter__"] = _enter
            namespace["__exit__"] = _exit
        if hasattr(cls, "__aiter__"):
            namespace["__iter__"] = _iter
        if hasattr(cls, "__anext__"):
            namespace["__next__"] = _next
        wrapper = types.new_class(cls.__name__, tuple(bases), {}, lambda ns: ns.update(namespace))
        _wrappers[cls] = wrapper
        return wrapper


def _wrapper_init(init: Callable[..., None]) -> Callable[..., None]:
    """The wrapper's ``__init__``: the async class's signature and docstring."""

    @functools.wraps(init)
    def __init__(self: BlockingObject[Any], *args: Any, **kwargs: Any) -> None:
        _construct(self, args, kwargs)

    return __init__


def _bind_class(wrapper: type[BlockingObject[C]], runner: Runner) -> type[BlockingObject[C]]:
    """A subclass of *wrapper* whose instances are pinned to *runner*."""
    wrapper = _wrap_class(wrapper.__aio_class__)
    with _wrappers_lock:
        per_runner = _runner_bound.setdefault(runner, {})
        bound = per_runner.get(wrapper)
        if bound is None:
            namespace = {
                "__aio_runner__": runner,
                "__module__": wrapper.__module__,
                "__qualname__": wrapper.__qualname__,
                "__doc__": wrapper.__doc__,
                "__slots__": (),
            }
            bound = per_runner[wrapper] = type(wrapper.__name__, (wrapper,), namespace)
        return bound


# ---------------------------------------------------------------- blocking()


class _Decorator(Protocol):
    @overload
    def __call__(self, obj: type[C], /) -> type[BlockingObject[C]]: ...  # type: ignore[overload-overlap]
    @overload
    def __call__(  # type: ignore[overload-overlap]
        self, obj: Callable[P, AsyncGenerator[Y, S]], /
    ) -> BlockingGeneratorFunction[P, Y, S]: ...
    @overload
    def __call__(
        self, obj: Callable[P, AsyncIterator[Y]], /
    ) -> BlockingGeneratorFunction[P, Y, None]: ...
    @overload
    def __call__(self, obj: Callable[P, Coroutine[Any, Any, T]], /) -> BlockingFunction[P, T]: ...


@overload
def blocking(obj: type[C], /, *, runner: Runner | None = None) -> type[BlockingObject[C]]: ...  # type: ignore[overload-overlap]
@overload
def blocking(  # type: ignore[overload-overlap]
    obj: Callable[P, AsyncGenerator[Y, S]], /, *, runner: Runner | None = None
) -> BlockingGeneratorFunction[P, Y, S]: ...
@overload
def blocking(
    obj: Callable[P, AsyncIterator[Y]], /, *, runner: Runner | None = None
) -> BlockingGeneratorFunction[P, Y, None]: ...
@overload
def blocking(
    obj: Callable[P, Coroutine[Any, Any, T]], /, *, runner: Runner | None = None
) -> BlockingFunction[P, T]: ...
@overload
def blocking(*, runner: Runner | None = None) -> _Decorator: ...
def blocking(obj: Any = None, /, *, runner: Runner | None = None) -> Any:
    """A blocking API for an async function, async generator function or class.

    Every blocking call runs through :func:`~greenportal.await_`, so it works
    in a task with a portal (without leaving the loop), in a worker thread
    started with :func:`~greenportal.to_thread`, and in a program with no
    event loop (on the default Runner).  The original stays reachable as
    ``.aio``: on the function, on a bound method, on the wrapper class (the
    async class) and on a wrapper instance (the async instance).

    With *runner*, every call (and a class's constructor) runs on that
    :class:`~greenportal.Runner` instead, from any thread; in a task on
    another loop it waits without blocking that loop.  ``@blocking(runner=r)``
    works as a decorator.

    Raises:
        TypeError: *obj* is a plain function or not callable, or *runner* is
            not a :class:`~greenportal.Runner`.
    """
    if runner is not None and not isinstance(runner, _runner.Runner):
        raise TypeError(
            f"blocking(runner=...) needs a greenportal.Runner or None, got "
            f"{type(runner).__qualname__!r}"
        )
    if obj is None:
        return functools.partial(blocking, runner=runner)
    if isinstance(obj, BlockingFunction):
        return obj if runner is None else BlockingFunction(obj.aio, runner)
    if isinstance(obj, BlockingGeneratorFunction):
        return obj if runner is None else BlockingGeneratorFunction(obj.aio, runner)
    if inspect.isclass(obj):
        if issubclass(obj, BlockingObject):
            return obj if runner is None else _bind_class(obj, runner)
        wrapper = _wrap_class(obj)
        return wrapper if runner is None else _bind_class(wrapper, runner)
    if inspect.isasyncgenfunction(obj):
        return BlockingGeneratorFunction(obj, runner)
    if inspect.iscoroutinefunction(obj):
        return BlockingFunction(obj, runner)
    if callable(obj):
        raise TypeError(
            f"blocking() needs an async function, an async generator function or a "
            f"class; {obj!r} is not async. If it returns an awaitable, wrap it in an "
            "async def first"
        )
    raise TypeError(
        "blocking() needs an async function, an async generator function or a class, "
        f"got {type(obj).__qualname__!r}"
    )


_blocking.wrap_class = _wrap_class
