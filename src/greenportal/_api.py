"""Giving tasks portals: the greenback-compatible functions and ``@portal``.

A task gets a portal in one of two ways:

* *Installed* (``ensure_portal``, ``bestow_portal``, tree portals): the
  task's own coroutine is replaced by a :class:`~greenportal._portal.Portal`
  that wraps it, for the rest of the task's life.
* *Inline* (``with_portal_run``, ``with_portal_run_sync``, ``@portal``): the
  calling coroutine awaits a Portal that runs just the given function; the
  portal lasts as long as that call.

Neither adds a checkpoint except :func:`ensure_portal`, which is always one
(as in greenback), so that ``await_`` works as soon as it returns.
"""

from __future__ import annotations

import functools
from collections.abc import Awaitable, Callable, Coroutine
from typing import Any, ParamSpec, TypeVar, cast, overload

from . import _await, _backends
from ._await import current_portal, find_portal_in
from ._backends import install_portal
from ._guards import CoroutineType, describe, is_async_callable, refuse_coroutine
from ._portal import Portal, _strip_own_frame

P = ParamSpec("P")
T = TypeVar("T")


async def ensure_portal() -> None:
    """Make sure the current task can use :func:`await_`.

    The first call in a task installs a portal; later calls, and calls inside
    :func:`with_portal_run`, keep the portal the task has.  Either way this is
    a checkpoint (a cancellation point and a schedule point), and when it
    returns :func:`await_` works in this task, at any depth of sync calls.

    Raises:
        RuntimeError: not called from an asyncio or Trio task.
    """
    backend, task = _backends.current_backend_and_task()
    if current_portal() is None:
        install_portal(backend, task)
    await backend.checkpoint()


def bestow_portal(task: Any) -> None:
    """Give *task* (an ``asyncio.Task`` or ``trio.lowlevel.Task``) a portal.

    Like :func:`ensure_portal` run inside *task*, without the checkpoint.  If
    *task* is the running task, the portal starts working once the task has
    yielded to the event loop (for example ``await asyncio.sleep(0)``);
    :func:`await_` before then raises :exc:`RuntimeError` saying so.  A task
    that already has a portal is left alone.

    Raises:
        TypeError: *task* is not a task of a supported library.
        RuntimeError: *task* has finished.
    """
    backend = _backends.backend_for_task(task)
    if _task_has_portal(backend, task, current=backend.current_task() is task):
        return
    install_portal(backend, task)


def _task_has_portal(backend: _backends.Backend, task: Any, *, current: bool) -> bool:
    coro = backend.get_coro(task)
    if type(coro) is Portal:
        return True
    if current:
        return current_portal() is not None
    return find_portal_in(coro) is not None


def has_portal(task: Any = None) -> bool:
    """Tell whether *task* (default: the current task) can use :func:`await_`.

    For the current task this is true only once the portal is active, so a
    portal bestowed on the running task reads false until the task yields.
    For another task, a bestowed portal counts: it is active before that task
    runs again.  Outside any task the answer is false.
    """
    backend = _backends.current_backend()
    current = backend.current_task() if backend is not None else None
    if task is None or task is current:
        return current is not None and current_portal() is not None
    backend = _backends.backend_for_task(task)
    return find_portal_in(backend.get_coro(task)) is not None


async def _adapt(aw: Awaitable[T]) -> T:
    return await aw


async def with_portal_run(
    async_fn: Callable[P, Awaitable[T]], *args: P.args, **kwargs: P.kwargs
) -> T:
    """Run ``await async_fn(*args, **kwargs)`` where :func:`await_` works.

    If the current task already has a portal, this is simply that ``await``.
    Otherwise a portal is made for the duration of the call and removed when
    it returns.  No checkpoint is added.
    """
    task_id = _await.inline_portal_id()
    if task_id is _await._HAS_PORTAL:
        return await async_fn(*args, **kwargs)
    aw = async_fn(*args, **kwargs)
    # type() first: the ABC check costs more than a call's other work here.
    coro = aw if type(aw) is CoroutineType or isinstance(aw, Coroutine) else _adapt(aw)
    try:
        return await cast(Awaitable[T], Portal(coro, None, task_id))
    except BaseException as error:
        _strip_own_frame(error)
        raise


async def with_portal_run_sync(sync_fn: Callable[P, T], *args: P.args, **kwargs: P.kwargs) -> T:
    """Run ``sync_fn(*args, **kwargs)`` where :func:`await_` works.

    If the current task already has a portal, *sync_fn* is simply called.
    Otherwise it runs on a portal made for the duration of the call.  No
    checkpoint is added beyond the ``await_`` calls *sync_fn* makes.

    Raises:
        TypeError: *sync_fn* is async (an async function, a
            ``functools.partial`` of one, or an object whose ``__call__`` is
            async): it is not called.  Or *sync_fn* returned a coroutine,
            which is closed.  (greenback returns the coroutine.)
    """
    if is_async_callable(sync_fn):
        raise TypeError(
            f"with_portal_run_sync() got an async function ({describe(sync_fn)}); use "
            "'await greenportal.with_portal_run(async_fn, *args)', or await it directly"
        )
    task_id = _await.inline_portal_id()
    if task_id is _await._HAS_PORTAL:
        result = sync_fn(*args, **kwargs)
    else:
        call = functools.partial(sync_fn, *args, **kwargs) if args or kwargs else sync_fn
        try:
            result = await cast(Awaitable[T], Portal(None, call, task_id))
        except BaseException as error:
            _strip_own_frame(error)
            raise
    if type(result) is CoroutineType:
        refuse_coroutine(result, sync_fn, "with_portal_run_sync()", _AWAIT_INSIDE)
    return result


_AWAIT_INSIDE = (
    "await it inside the function with greenportal.await_(...), or use "
    "'await greenportal.with_portal_run(async_fn, *args)'"
)


@overload
def portal(fn: Callable[P, Awaitable[T]]) -> Callable[P, Coroutine[Any, Any, T]]: ...
@overload
def portal(fn: Callable[P, T]) -> Callable[P, Coroutine[Any, Any, T]]: ...
def portal(fn: Callable[P, Any]) -> Callable[P, Coroutine[Any, Any, Any]]:
    """Decorator: run each call of *fn* with a portal.

    On an async function, each call runs as :func:`with_portal_run` would run
    it.  On a sync function, the result is an *async* function that runs it
    as :func:`with_portal_run_sync` would, so sync code becomes awaitable::

        @greenportal.portal
        def load_user(user_id):
            return greenportal.await_(db.fetch_user(user_id))

        user = await load_user(42)

    .. versionadded:: 0.1
    """
    if not callable(fn):
        raise TypeError(f"@portal needs a function, got {type(fn).__qualname__!r}")
    if is_async_callable(fn):

        @functools.wraps(fn)
        async def run_async(*args: P.args, **kwargs: P.kwargs) -> Any:
            return await with_portal_run(fn, *args, **kwargs)

        return run_async

    @functools.wraps(fn)
    async def run_sync(*args: P.args, **kwargs: P.kwargs) -> Any:
        return await with_portal_run_sync(fn, *args, **kwargs)

    return run_sync
