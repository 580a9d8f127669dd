"""blocking(): a blocking API made from an async implementation.

One async implementation, two APIs: ``blocking(fetch)`` is a sync function
that runs ``fetch`` through :func:`~greenportal.await_`, and ``.aio`` is the
original.  Because every call goes through ``await_``, the blocking API is
right wherever sync code runs: inside a task with a portal it is a greenlet
switch on the caller's own loop (no thread hop, loop-bound objects work),
in a :func:`~greenportal.to_thread` worker it hops to the starting loop, and
in a plain sync program it uses the default Runner.  Synchronicity, by
contrast, always hops to its own loop thread.

What can be wrapped
-------------------
* an async function: a sync function (usable as a method too);
* an async generator function: a sync generator function whose generators
  support ``send``, ``throw`` and ``close``, each forwarded to the async
  generator (``asend``, ``athrow``, ``aclose``);
* a class: a wrapper class whose instances hold an instance of the original.
  Async methods become sync methods (async generator methods, sync
  generators), ``__aenter__``/``__aexit__`` become ``__enter__``/``__exit__``,
  ``__aiter__``/``__anext__`` become ``__iter__``/``__next__``.  Everything
  else (properties, plain attributes, sync methods) is read from, and
  written to, the wrapped instance as it is.

Why a wrapper class and not a subclass: the async implementation calls its
own methods (``await self.connect()``); in a subclass those calls would find
the blocking overrides.  The wrapper keeps the async object whole.

Known gaps: return values are not translated (a method returning another
async object returns it as is; wrap its class too).  Type checkers see the
methods of a wrapped class as ``Any``, since Python's type system cannot map
a class's async methods to sync ones; wrapped functions and generator
functions keep their exact signatures.
"""

from __future__ import annotations

import functools
import inspect
from collections.abc import AsyncGenerator, AsyncIterator, Callable, Coroutine, Generator
from types import TracebackType
from typing import TYPE_CHECKING, Any, Generic, ParamSpec, TypeVar, overload

from ._await import await_

P = ParamSpec("P")
T = TypeVar("T")
Y = TypeVar("Y")
S = TypeVar("S")
C = TypeVar("C")


class BlockingFunction(Generic[P, T]):
    """A sync function that runs an async function through :func:`~greenportal.await_`.

    ``.aio`` is the async original.  Used as a method, it binds like a
    function, and ``instance.method.aio`` is the bound async method.
    """

    __slots__ = ("__dict__", "__weakref__", "aio")

    def __init__(self, fn: Callable[P, Coroutine[Any, Any, T]]) -> None:
        self.aio = fn
        functools.update_wrapper(self, fn)

    def __call__(self, *args: P.args, **kwargs: P.kwargs) -> T:
        return await_(self.aio(*args, **kwargs))

    def __get__(self, instance: object, owner: type | None = None) -> Any:
        if instance is None:
            return self
        return BlockingFunction(self.aio.__get__(instance, owner))

    def __repr__(self) -> str:
        return f"<blocking function {getattr(self.aio, '__qualname__', self.aio)!r}>"


class BlockingGeneratorFunction(Generic[P, Y, S]):
    """A sync generator function that drives an async generator function.

    ``.aio`` is the async original.
    """

    __slots__ = ("__dict__", "__weakref__", "aio")

    def __init__(self, fn: Callable[P, AsyncGenerator[Y, S]]) -> None:
        self.aio = fn
        functools.update_wrapper(self, fn)

    def __call__(self, *args: P.args, **kwargs: P.kwargs) -> Generator[Y, S, None]:
        return _drive_agen(self.aio(*args, **kwargs))

    def __get__(self, instance: object, owner: type | None = None) -> Any:
        if instance is None:
            return self
        return BlockingGeneratorFunction(self.aio.__get__(instance, owner))

    def __repr__(self) -> str:
        return f"<blocking generator function {getattr(self.aio, '__qualname__', self.aio)!r}>"


def _drive_agen(agen: AsyncGenerator[Y, S]) -> Generator[Y, S, None]:
    """A sync generator that forwards next/send/throw/close to *agen*."""
    try:
        value = await_(agen.__anext__())
    except StopAsyncIteration:
        return
    while True:
        try:
            sent = yield value
        except GeneratorExit:
            await_(agen.aclose())
            raise
        except BaseException as error:
            try:
                value = await_(agen.athrow(error))
            except StopAsyncIteration:
                return
            finally:
                del error
        else:
            try:
                value = await_(agen.asend(sent))
            except StopAsyncIteration:
                return


class BlockingObject(Generic[C]):
    """Base of the classes that :func:`blocking` makes from async classes.

    An instance holds an instance of the async class, reachable as ``.aio``;
    attribute reads and writes that the wrapper does not define go to it.
    """

    __slots__ = ("_aio_object",)
    __aio_class__: type[C]

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        object.__setattr__(self, "_aio_object", self.__aio_class__(*args, **kwargs))

    @classmethod
    def _wrap(cls, obj: C) -> BlockingObject[C]:
        """A wrapper around an existing instance of the async class."""
        self = object.__new__(cls)
        object.__setattr__(self, "_aio_object", obj)
        return self

    if TYPE_CHECKING:

        @property
        def aio(self) -> C:
            """The async object this one wraps."""
            ...

    def __getattr__(self, name: str) -> Any:
        return getattr(self._aio_object, name)

    def __setattr__(self, name: str, value: Any) -> None:
        setattr(self._aio_object, name, value)

    def __delattr__(self, name: str) -> None:
        delattr(self._aio_object, name)

    def __repr__(self) -> str:
        return f"<blocking {self._aio_object!r}>"

    if TYPE_CHECKING:
        # Present on wrappers of async context managers and async iterators.
        def __enter__(self) -> Any: ...
        def __exit__(
            self,
            exc_type: type[BaseException] | None,
            exc: BaseException | None,
            tb: TracebackType | None,
        ) -> bool | None: ...
        def __iter__(self) -> Any: ...
        def __next__(self) -> Any: ...


class _Aio:
    """``Wrapper.aio`` is the async class; ``wrapper_instance.aio`` the async instance."""

    def __get__(self, instance: Any, owner: type | None = None) -> Any:
        if instance is None:
            return owner.__aio_class__  # type: ignore[union-attr]
        return instance._aio_object


BlockingObject.aio = _Aio()  # type: ignore[assignment,method-assign]


def _method(fn: Callable[..., Any]) -> Callable[..., Any]:
    """A sync method of a blocking class, for async method *fn*."""

    @functools.wraps(fn)
    def method(self: BlockingObject[Any], /, *args: Any, **kwargs: Any) -> Any:
        return await_(fn(self._aio_object, *args, **kwargs))

    method.aio = fn  # type: ignore[attr-defined]
    return method


def _generator_method(fn: Callable[..., Any]) -> Callable[..., Any]:
    @functools.wraps(fn)
    def method(self: BlockingObject[Any], /, *args: Any, **kwargs: Any) -> Any:
        return _drive_agen(fn(self._aio_object, *args, **kwargs))

    method.aio = fn  # type: ignore[attr-defined]
    return method


class _BoundAio:
    """Makes ``instance.method.aio`` the bound async method.

    A plain function's attributes do not bind, so the sync methods of a
    blocking class are wrapped in this descriptor.
    """

    __slots__ = ("fn",)

    def __init__(self, fn: Callable[..., Any]) -> None:
        self.fn = fn

    def __get__(self, instance: object, owner: type | None = None) -> Any:
        fn = self.fn
        if instance is None:
            return fn
        bound = fn.__get__(instance, owner)
        return _BoundMethod(bound, fn.aio.__get__(instance._aio_object))  # type: ignore[attr-defined]


class _BoundMethod:
    """A bound sync method of a blocking object, with ``.aio`` bound too."""

    __slots__ = ("_call", "aio")

    def __init__(self, call: Callable[..., Any], aio: Callable[..., Any]) -> None:
        self._call = call
        self.aio = aio

    def __call__(self, *args: Any, **kwargs: Any) -> Any:
        return self._call(*args, **kwargs)

    def __getattr__(self, name: str) -> Any:
        return getattr(self._call, name)

    def __repr__(self) -> str:
        return f"<blocking method {self._call!r}>"


def _enter(self: BlockingObject[Any]) -> Any:
    value = await_(self._aio_object.__aenter__())
    if value is self._aio_object:
        return self
    return value


def _exit(
    self: BlockingObject[Any],
    exc_type: type[BaseException] | None,
    exc: BaseException | None,
    tb: TracebackType | None,
) -> Any:
    return await_(self._aio_object.__aexit__(exc_type, exc, tb))


def _iter(self: BlockingObject[Any]) -> Any:
    aiter_ = type(self._aio_object).__aiter__
    if inspect.isasyncgenfunction(aiter_):
        return _drive_agen(aiter_(self._aio_object))
    iterator = aiter_(self._aio_object)
    if iterator is self._aio_object:
        return self
    return _drive_async_iterator(iterator)


def _next(self: BlockingObject[Any]) -> Any:
    try:
        return await_(self._aio_object.__anext__())
    except StopAsyncIteration:
        raise StopIteration from None


def _drive_async_iterator(iterator: AsyncIterator[Y]) -> Generator[Y, None, None]:
    if inspect.isasyncgen(iterator):
        return _drive_agen(iterator)  # type: ignore[arg-type]
    return _iterate_plain(iterator)


def _iterate_plain(iterator: AsyncIterator[Y]) -> Generator[Y, None, None]:
    while True:
        try:
            item = await_(iterator.__anext__())
        except StopAsyncIteration:
            return
        yield item


def _wrap_class(cls: type[C]) -> type[BlockingObject[C]]:
    namespace: dict[str, Any] = {
        "__aio_class__": cls,
        "__module__": cls.__module__,
        "__qualname__": cls.__qualname__,
        "__doc__": cls.__doc__,
        "__slots__": (),
    }
    wrapped_any = False
    for name in dir(cls):
        if name in ("__aenter__", "__aexit__", "__aiter__", "__anext__"):
            continue
        if name.startswith("__") and name.endswith("__"):
            continue
        if name in ("aio", "_aio_object", "_wrap"):
            continue
        raw = inspect.getattr_static(cls, name)
        if isinstance(raw, staticmethod):
            fn = raw.__func__
            if inspect.isasyncgenfunction(fn):
                namespace[name] = staticmethod(BlockingGeneratorFunction(fn))
                wrapped_any = True
            elif inspect.iscoroutinefunction(fn):
                namespace[name] = staticmethod(BlockingFunction(fn))
                wrapped_any = True
        elif isinstance(raw, classmethod):
            fn = raw.__func__
            bound = getattr(cls, name)
            if inspect.isasyncgenfunction(fn):
                namespace[name] = staticmethod(BlockingGeneratorFunction(bound))
                wrapped_any = True
            elif inspect.iscoroutinefunction(fn):
                namespace[name] = staticmethod(BlockingFunction(bound))
                wrapped_any = True
        elif inspect.isasyncgenfunction(raw):
            namespace[name] = _BoundAio(_generator_method(raw))
            wrapped_any = True
        elif inspect.iscoroutinefunction(raw):
            namespace[name] = _BoundAio(_method(raw))
            wrapped_any = True
    if hasattr(cls, "__aenter__") and hasattr(cls, "__aexit__"):
        namespace["__enter__"] = _enter
        namespace["__exit__"] = _exit
        wrapped_any = True
    if hasattr(cls, "__aiter__"):
        namespace["__iter__"] = _iter
        wrapped_any = True
    if hasattr(cls, "__anext__"):
        namespace["__next__"] = _next
        wrapped_any = True
    if not wrapped_any:
        raise TypeError(
            f"blocking() found nothing async in class {cls.__qualname__!r}: no async "
            "methods, no __aenter__/__aexit__, no __aiter__/__anext__"
        )
    return type(cls.__name__, (BlockingObject,), namespace)


@overload
def blocking(obj: type[C]) -> type[BlockingObject[C]]: ...  # type: ignore[overload-overlap]
@overload
def blocking(  # type: ignore[overload-overlap]
    obj: Callable[P, AsyncGenerator[Y, S]],
) -> BlockingGeneratorFunction[P, Y, S]: ...
@overload
def blocking(obj: Callable[P, AsyncIterator[Y]]) -> BlockingGeneratorFunction[P, Y, None]: ...
@overload
def blocking(obj: Callable[P, Coroutine[Any, Any, T]]) -> BlockingFunction[P, T]: ...
def blocking(obj: Any) -> Any:
    """A blocking API for an async function, async generator function or class.

    Every blocking call runs through :func:`~greenportal.await_`, so it works
    in a task with a portal (without leaving the loop), in a worker thread
    started with :func:`~greenportal.to_thread`, and in a program with no
    event loop (on the default Runner).  The original stays reachable as
    ``.aio``: on the function, on a bound method, on the wrapper class (the
    async class) and on a wrapper instance (the async instance).

    Raises:
        TypeError: *obj* is a plain function, or a class with nothing async.
    """
    if isinstance(obj, (BlockingFunction, BlockingGeneratorFunction)) or (
        inspect.isclass(obj) and issubclass(obj, BlockingObject)
    ):
        return obj
    if inspect.isclass(obj):
        return _wrap_class(obj)
    if inspect.isasyncgenfunction(obj):
        return BlockingGeneratorFunction(obj)
    if inspect.iscoroutinefunction(obj):
        return BlockingFunction(obj)
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
