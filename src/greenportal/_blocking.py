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
* an async function: a sync function (usable as a method too), with
  ``.submit()`` for a future;
* an async generator function: a sync generator function whose generators
  forward ``send``, ``throw`` and ``close`` (``asend``, ``athrow``, ``aclose``);
* any class: a wrapper class whose instances hold an instance of the
  original (``.aio``); ``_classes`` builds it and tells how.

This module holds what every kind shares: the translation of values, the
wrapped functions and generators, :class:`BlockingObject` (the base of every
wrapper class) and where its instances are made.

Translation
-----------
What the async implementation returns (or yields, or an attribute holds)
is translated on the way out: an instance of a wrapped class becomes its
wrapper (an instance of an unwrapped subclass of a wrapped class gets a
wrapper made for its class), an async generator a sync generator, an async
context manager a sync one, another async iterator a sync iterator; tuples,
lists and dict values are translated item by item (copied only if an item
changed).  On the way in, wrappers and blocking functions passed as arguments
are replaced by their async originals.  Everything else passes unchanged:
translation never awaits anything, so an awaitable returned by a sync method
stays an awaitable.

Where an object lives
---------------------
The constructor runs on the loop that will serve the object, so that
objects which grab the running loop in ``__init__`` (``aiohttp.ClientSession``)
work: in a task, directly (the caller is on the loop); elsewhere, through
``await_`` (on the worker's loop, or the default Runner).  An object made on
a Runner's loop (the default Runner's, when made in a program with no loop)
is *pinned* to that Runner: its calls, and those of objects it returns, go
there from any thread, and from a task on another loop they wait without
blocking that loop.  An object made in a task on any other loop uses
``await_``'s rules, that is, the caller's loop.  ``blocking(obj,
runner=r)`` pins explicitly.  Nothing is finalised behind the user's back:
wrappers have no ``__del__``; ``with``, or the async class's own close
method, releases resources, on the object's loop like every other call.

Rejected: a wrapper per call site carrying the loop (synchronicity's one
global loop makes this question disappear; we serve many loops, and the
object, not the caller, knows where it belongs); translating every
awaitable by awaiting it (a sync method that returns a coroutine would then
run it, which hides work).

Known gaps: type checkers see the methods of a wrapped class as ``Any``; run
``python -m greenportal.stubgen`` for stubs with the blocking signatures.
mypy ignores what a class decorator returns, so ``@blocking`` on a class
needs the stubs too.  An object made in a task on a loop that is not a
Runner's is not pinned: using it from a thread with no loop sends its calls
to the default Runner, where its loop-bound parts will fail."""

from __future__ import annotations

import functools
import inspect
import types
from collections.abc import (
    AsyncGenerator,
    AsyncIterator,
    Awaitable,
    Callable,
    Coroutine,
    Generator,
)
from types import TracebackType
from typing import TYPE_CHECKING, Any, Generic, ParamSpec, TypeVar

from . import _backends, _runner, _threads
from ._await import await_
from ._futures import BlockingFuture, run, submit

if TYPE_CHECKING:
    from ._runner import Runner

P = ParamSpec("P")
T = TypeVar("T")
Y = TypeVar("Y")
S = TypeVar("S")
C = TypeVar("C")


async def _translated(coro: Awaitable[Any], runner: Runner | None) -> Any:
    return _out(await coro, runner)


def _submit(runner: Runner | None, coro: Coroutine[Any, Any, T]) -> BlockingFuture[T]:
    work = _translated(coro, runner)
    try:
        return submit(runner, work)
    except BaseException:
        coro.close()  # never started: submit closed *work*, which never awaited it
        raise


# ---------------------------------------------------------------- translation

_PLAIN: frozenset[type] = frozenset(
    {int, float, complex, str, bytes, bytearray, bool, type(None), type(NotImplemented)}
)

# Async class -> its wrapper, for every wrapper blocking() made (the
# runner-bound subclasses of blocking(cls, runner=...) excepted).  Invariant:
# _wrappers[w.__aio_class__] is w.  Written only by ``_classes``, under its lock.
_wrappers: dict[type, type[BlockingObject[Any]]] = {}


def _no_wrapper_maker(cls: type) -> type[BlockingObject[Any]]:
    raise AssertionError("greenportal._classes registers the wrapper maker at import")


# Makes (and registers) the wrapper of a class: ``_classes._wrap_class``,
# registered at import, since this module cannot import that one.
wrap_class: Callable[[type], type[BlockingObject[Any]]] = _no_wrapper_maker


def _out_items(items: Any, runner: Runner | None) -> list[Any] | None:
    out = [_out(item, runner) for item in items]
    return out if any(a is not b for a, b in zip(out, items, strict=True)) else None


def _out(value: Any, runner: Runner | None) -> Any:
    """Translate *value* on its way from the async implementation to sync code."""
    tp = type(value)
    if tp in _PLAIN:
        return value
    wrapper = _wrappers.get(tp)
    if wrapper is not None:
        return wrapper._from_aio(value, runner)
    if tp is tuple or tp is list:
        changed = _out_items(value, runner)
        return value if changed is None else tp(changed)
    if tp is dict:
        values = _out_items(value.values(), runner)
        return value if values is None else dict(zip(value, values, strict=True))
    if isinstance(value, _BLOCKING_TYPES):
        return value
    for base in tp.__mro__[1:-1]:
        if base in _wrappers:
            return wrap_class(tp)._from_aio(value, runner)
    if inspect.isasyncgen(value):
        return _drive_agen(value, runner)
    if hasattr(tp, "__aenter__") and hasattr(tp, "__aexit__"):
        return _Context(value, runner)
    if hasattr(tp, "__anext__"):
        return _iterate(value, runner)
    return value


def _in(value: Any) -> Any:
    """Translate *value* on its way from sync code into the async implementation."""
    tp = type(value)
    if tp in _PLAIN:
        return value
    if isinstance(value, BlockingObject):
        return value._aio_object
    if isinstance(value, (BlockingFunction, BlockingGeneratorFunction, _Context)):
        return value.aio
    if tp is tuple or tp is list:
        items = [_in(item) for item in value]
        return value if all(a is b for a, b in zip(items, value, strict=True)) else tp(items)
    if tp is dict:
        items = [_in(item) for item in value.values()]
        same = all(a is b for a, b in zip(items, value.values(), strict=True))
        return value if same else dict(zip(value, items, strict=True))
    return value


def _in_call(args: tuple[Any, ...], kwargs: dict[str, Any]) -> tuple[Any, dict[str, Any]]:
    for arg in args:
        if type(arg) not in _PLAIN:
            break
    else:
        if not kwargs:
            return args, kwargs
    return tuple(map(_in, args)), {name: _in(value) for name, value in kwargs.items()}


# ---------------------------------------------------------------- functions


class BlockingFunction(Generic[P, T]):
    """A sync function that runs an async function through :func:`~greenportal.await_`.

    ``.aio`` is the async original; ``.submit(...)`` starts a call and
    returns a :class:`BlockingFuture` at once.  Used as a method, it binds
    like a function, and ``instance.method.aio`` is the bound async method.
    """

    __slots__ = ("__dict__", "__weakref__", "_runner", "aio")

    def __init__(
        self, fn: Callable[P, Coroutine[Any, Any, T]], runner: Runner | None = None
    ) -> None:
        self.aio = fn
        self._runner = runner
        functools.update_wrapper(self, fn)

    def __call__(self, *args: P.args, **kwargs: P.kwargs) -> T:
        runner = self._runner
        if args or kwargs:
            args, kwargs = _in_call(args, kwargs)  # type: ignore[assignment]
        return _out(run(runner, self.aio(*args, **kwargs)), runner)  # type: ignore[no-any-return]

    def submit(self, *args: P.args, **kwargs: P.kwargs) -> BlockingFuture[T]:
        """Start the call and return its future; the work runs where a call would."""
        a, k = _in_call(args, kwargs)
        return _submit(self._runner, self.aio(*a, **k))

    def __get__(self, instance: object, owner: type | None = None) -> Any:
        if instance is None:
            return self
        return BlockingFunction(self.aio.__get__(instance, owner), self._runner)

    def __repr__(self) -> str:
        return f"<blocking function {getattr(self.aio, '__qualname__', self.aio)!r}>"


class BlockingGeneratorFunction(Generic[P, Y, S]):
    """A sync generator function that drives an async generator function.

    ``.aio`` is the async original.
    """

    __slots__ = ("__dict__", "__weakref__", "_runner", "aio")

    def __init__(self, fn: Callable[P, AsyncGenerator[Y, S]], runner: Runner | None = None) -> None:
        self.aio = fn
        self._runner = runner
        functools.update_wrapper(self, fn)

    def __call__(self, *args: P.args, **kwargs: P.kwargs) -> Generator[Y, S, None]:
        a, k = _in_call(args, kwargs)
        return _drive_agen(self.aio(*a, **k), self._runner)

    def __get__(self, instance: object, owner: type | None = None) -> Any:
        if instance is None:
            return self
        return BlockingGeneratorFunction(self.aio.__get__(instance, owner), self._runner)

    def __repr__(self) -> str:
        return f"<blocking generator function {getattr(self.aio, '__qualname__', self.aio)!r}>"


def _drive_agen(agen: AsyncGenerator[Y, S], runner: Runner | None) -> Generator[Y, S, None]:
    """A sync generator that forwards next/send/throw/close to *agen*."""
    try:
        value = run(runner, agen.__anext__())
    except StopAsyncIteration:
        return
    while True:
        try:
            sent = yield _out(value, runner)
        except GeneratorExit:
            run(runner, agen.aclose())
            raise
        except BaseException as error:
            try:
                value = run(runner, agen.athrow(error))
            except StopAsyncIteration:
                return
            finally:
                del error
        else:
            try:
                value = run(runner, agen.asend(_in(sent)))
            except StopAsyncIteration:
                return


def _iterate(iterator: AsyncIterator[Y], runner: Runner | None) -> Generator[Y, None, None]:
    if inspect.isasyncgen(iterator):
        return _drive_agen(iterator, runner)  # type: ignore[arg-type]
    return _iterate_plain(iterator, runner)


def _iterate_plain(iterator: AsyncIterator[Y], runner: Runner | None) -> Generator[Y, None, None]:
    while True:
        try:
            item = run(runner, type(iterator).__anext__(iterator))
        except StopAsyncIteration:
            return
        yield _out(item, runner)


def enter_async(wrapper: Any, cm: Any, runner: Runner | None) -> Any:
    """``wrapper.__enter__`` for a wrapper over the async context manager *cm*.

    The value of ``__aenter__`` is translated out, and is the wrapper itself
    when the manager returns itself.
    """
    value = run(runner, type(cm).__aenter__(cm))
    return wrapper if value is cm else _out(value, runner)


def exit_async(
    cm: Any,
    runner: Runner | None,
    exc_type: type[BaseException] | None,
    exc: BaseException | None,
    tb: TracebackType | None,
) -> Any:
    """``__exit__`` for a wrapper over the async context manager *cm*."""
    return run(runner, type(cm).__aexit__(cm, exc_type, exc, tb))


class _Context:
    """A sync context manager over an async one that has no wrapper class.

    Attribute reads go to the async object, so that objects which are more
    than a context manager (aiohttp's response) stay usable.
    """

    __slots__ = ("_runner", "aio")

    def __init__(self, cm: Any, runner: Runner | None) -> None:
        self.aio = cm
        self._runner = runner

    def __enter__(self) -> Any:
        return enter_async(self, self.aio, self._runner)

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> bool | None:
        return exit_async(self.aio, self._runner, exc_type, exc, tb)  # type: ignore[no-any-return]

    def __getattr__(self, name: str) -> Any:
        return _out(getattr(self.aio, name), self._runner)

    def __repr__(self) -> str:
        return f"<blocking context {self.aio!r}>"


_BLOCKING_TYPES: tuple[type, ...] = (
    BlockingFunction,
    BlockingGeneratorFunction,
    _Context,
    types.GeneratorType,
)


# ---------------------------------------------------------------- classes


class BlockingObject(Generic[C]):
    """Base of the classes that :func:`blocking` makes from classes.

    An instance holds an instance of the async class, reachable as ``.aio``;
    attribute reads and writes that the wrapper does not define go to it.
    Wrappers compare and hash as the objects they wrap (unless the async
    class defines its own ``__eq__``/``__hash__``, which are forwarded).
    """

    # Invariant: both are set once, when the wrapper is made, and never
    # change; _aio_runner is the Runner the object is pinned to, or None.
    __slots__ = ("_aio_object", "_aio_runner")
    __aio_class__: type[C]
    __aio_runner__: Runner | None = None

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        _construct(self, args, kwargs)

    @classmethod
    def _from_aio(cls, obj: Any, runner: Runner | None) -> Any:
        """A wrapper around an existing instance of the async class."""
        self = object.__new__(cls)
        object.__setattr__(self, "_aio_object", obj)
        if runner is None:
            runner = cls.__aio_runner__ or _threads.home_runner()
        object.__setattr__(self, "_aio_runner", runner)
        return self

    if TYPE_CHECKING:

        @property
        def aio(self) -> C:
            """The async object this one wraps."""
            ...

    def __getattr__(self, name: str) -> Any:
        return _out(getattr(self._aio_object, name), self._aio_runner)

    def __setattr__(self, name: str, value: Any) -> None:
        if name == "__orig_class__":
            return  # what Wrapper[int]() records; the async object has no use for it
        setattr(self._aio_object, name, _in(value))

    def __delattr__(self, name: str) -> None:
        delattr(self._aio_object, name)

    def __eq__(self, other: object) -> bool:
        if isinstance(other, BlockingObject):
            return bool(self._aio_object == other._aio_object)
        return NotImplemented

    def __hash__(self) -> int:
        return hash(self._aio_object)

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


async def _make(cls: type[Any], args: tuple[Any, ...], kwargs: dict[str, Any]) -> Any:
    return cls(*args, **kwargs)


def _construct(self: BlockingObject[Any], args: tuple[Any, ...], kwargs: dict[str, Any]) -> None:
    """Make the async object on the loop that will serve it (see the module notes)."""
    wrapper = type(self)
    aio_cls = wrapper.__aio_class__
    args, kwargs = _in_call(args, kwargs)
    runner = wrapper.__aio_runner__
    if runner is not None and not runner.in_loop_thread():
        obj = run(runner, _make(aio_cls, args, kwargs))
    elif (
        runner is not None
        or _backends.current_backend() is not None
        or _backends.running_loop_name() is not None
    ):
        obj = aio_cls(*args, **kwargs)  # already on the loop
        if runner is None:
            runner = _runner.runner_of_this_thread()
    else:
        obj = await_(_make(aio_cls, args, kwargs))
        runner = _threads.home_runner()
    object.__setattr__(self, "_aio_object", obj)
    object.__setattr__(self, "_aio_runner", runner)
