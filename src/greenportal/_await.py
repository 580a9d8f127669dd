"""await_ in its portal: the fast path, the portal lookup and inline-portal setup.

This is the second half of the engine; ``_portal.py``'s essay is the design
document for both (how a trap travels, "Ownership", the two
implementations).  Here: :func:`await_` and its fast path (``await_box``),
the loop that drives an awaitable on the portal greenlet
(:func:`_drive_await`), finding the current task's portal, and the hooks
through which the layers above tell the engine what it cannot know itself
(imports go one way: they import us, and register).
"""

from __future__ import annotations

import weakref
from collections.abc import Awaitable, Callable
from typing import Any, TypeVar

import greenlet

from . import _accel
from ._portal import (
    _FINISHED,
    _NO_PORTAL,
    _PARKED,
    _POOL_LIMIT,
    _RAISED,
    _RETURNED,
    Portal,
    PortalGreenlet,
    _awaitable_iter,
    _CoroutineType,
    _Detach,
    _strip_own_frame,
    _worker,
    getcurrent,
)

T = TypeVar("T")


# -- what the layers above register (imports go one way: they import us) ------


# asyncio.current_task, bound by the asyncio backend when it makes its first
# portal (so that a Trio program never imports asyncio through us).
def _current_asyncio_task() -> object:
    return None


def bind_current_asyncio_task(
    current_task: Callable[..., object],
    get_running_loop: Callable[[], object],
    prepare_loop: Callable[[Any], None] | None,
) -> None:
    """Tell the fast paths how to find asyncio's running task and loop.

    *prepare_loop* is what the asyncio backend's ``prepare()`` calls on the
    running loop before a portal is made there (None: nothing).
    """
    global _current_asyncio_task
    _current_asyncio_task = current_task
    _accel.set_current_task(current_task, get_running_loop, prepare_loop)


_NOT_INITIALISED = "greenportal is not initialised: import greenportal, not only its modules"


def _no_slow_path(aw: object) -> Any:
    raise RuntimeError(_NOT_INITIALISED)


def _no_inline_slow() -> int | None:
    raise RuntimeError(_NOT_INITIALISED)


# await_ outside its portal (no portal greenlet, or another task's):
# greenportal._dispatch registers the real one.
_slow_path: Callable[[Any], Any] = _no_slow_path
# inline_task_id() when no asyncio task runs: _backends registers the real one.
_inline_slow_hook: Callable[[], int | None] = _no_inline_slow


def register_slow_path(fn: Callable[[Any], Any]) -> None:
    """Set what :func:`await_` calls when the current greenlet is not its task's portal."""
    global _slow_path
    _slow_path = fn


def register_inline_slow(fn: Callable[[], int | None]) -> None:
    """Set how :func:`inline_task_id` finds the task outside asyncio's fast path."""
    global _inline_slow_hook
    _inline_slow_hook = fn


# -- await_ --------------------------------------------------------------------


def _drive_await(ref: weakref.ref[Portal], outer: Any) -> Any:
    """Run the portal's current awaitable iterator to completion on this greenlet.

    The caller has put the iterator in ``Portal._awaiting`` (and dropped its
    own reference: see "Ownership"); *outer* is what to restore there after.
    Each trap goes to the portal's hub through ``Portal._trap``; the hub's
    answer comes back as the return value (or exception) of the switch.
    """
    portal = ref()
    assert portal is not None
    it = portal._awaiting
    value: Any = None
    exc: BaseException | None = None
    try:
        while True:
            try:
                if exc is None:
                    trap = it.send(value)
                elif isinstance(exc, GeneratorExit):
                    # As a native await does: close the awaited iterator, then
                    # raise GeneratorExit here; if closing fails (it awaited
                    # again: "coroutine ignored GeneratorExit"), that error
                    # unwinds the sync frames instead.
                    close = getattr(it, "close", None)
                    if close is not None:
                        close()
                    raise exc
                else:
                    trap = it.throw(exc)
            except StopIteration as stop:
                return stop.value
            except BaseException as error:
                _strip_own_frame(error)
                raise
            portal._trap = trap
            switch = portal._park
            # Hold nothing of the task's while suspended (see "Ownership").
            del portal, it, trap
            exc = value = None
            try:
                value = switch(_PARKED)
            except BaseException as error:
                _strip_own_frame(error)
                exc = error
            portal = ref()
            if portal is None:
                # Dropped without close() (finalized on another thread): unwind.
                if exc is None:
                    exc = greenlet.GreenletExit()
                raise exc
            it = portal._awaiting
    finally:
        portal = ref()
        if portal is not None:
            portal._awaiting = outer


_SLOW: Any = object()  # what await_box returns for "take the slow path"


def _await_box(box: list[Any]) -> Any:
    """await_'s fast path: drive ``box[0]`` here if this greenlet is its task's portal.

    Takes the awaitable out of *box* and returns its result (or raises), or
    returns ``_SLOW``, leaving *box* alone, when the current greenlet is not
    a portal greenlet of the running task.  (Compiled twin:
    ``_speedups.await_box``.)
    """
    try:
        ref = getcurrent().portal_ref  # type: ignore[attr-defined]
    except AttributeError:
        return _SLOW
    portal = ref()
    if portal is None or (
        portal.task_id is not None and id(_current_asyncio_task()) != portal.task_id
    ):
        return _SLOW
    aw = box[0]
    it = aw if type(aw) is _CoroutineType else _awaitable_iter(aw)
    del box[0], aw
    outer = portal._awaiting
    portal._awaiting = it
    del it, portal
    try:
        return _drive_await(ref, outer)
    except BaseException as error:
        _strip_own_frame(error)
        raise


def await_(aw: Awaitable[T]) -> T:
    """Wait for *aw* from synchronous code, suspending only the current task.

    ``await_(x)`` does what ``await x`` does in an async function: it returns
    the result or raises the exception, and while it waits the event loop runs
    other tasks.  It works in synchronous code called, at any depth, from a
    task that has a portal (see :func:`ensure_portal` and
    :func:`with_portal_run`).  *aw* may be a coroutine, a Future, or any
    object with ``__await__``.

    Cancellation reaches the waiting sync code as it would reach a native
    ``await``: asyncio's :exc:`~asyncio.CancelledError`, or Trio's
    ``Cancelled``, is raised out of ``await_`` and ``finally`` blocks run.

    Raises:
        TypeError: *aw* is not awaitable.
        RuntimeError: the current task has no portal, or the portal was just
            bestowed and the task has not yielded since.
    """
    # A Python frame in both builds, on purpose: a Python-to-Python call moves
    # *aw* off the caller's stack (3.11+), and the one-item list lets the fast
    # path take it out of this frame too, so nothing on the suspended portal
    # greenlet's stack holds the awaitable (see "Ownership").
    box = [aw]
    del aw
    try:
        result = await_box(box)
        if result is _SLOW:
            return _slow_path(box.pop())  # type: ignore[no-any-return]
        return result  # type: ignore[no-any-return]
    except BaseException as error:
        _strip_own_frame(error)
        raise


def portal_of_current_task() -> Portal | None:
    """The portal through which the current code runs, or None.

    Walks up from the current greenlet to the first portal greenlet whose
    portal serves the running task.  Cheap when there is none: it asks the
    event loop for the current task only if it meets an asyncio portal.
    """
    gr: greenlet.greenlet | None = getcurrent()
    task_id: int | None = None
    while gr is not None:
        ref: weakref.ref[Portal] | None = getattr(gr, "portal_ref", None)
        if ref is not None:
            portal = ref()
            if portal is not None:
                # Under Trio (task_id None) a task never steps inside another
                # task's portal greenlet, so being on the chain is proof enough.
                if portal.task_id is None:
                    return portal
                if task_id is None:
                    task_id = id(_current_asyncio_task())
                if portal.task_id == task_id:
                    return portal
        gr = gr.parent
    return None


# What inline_task_id() returns when the current task already has a portal.
_HAS_PORTAL: Any = object()


def _inline_task_id_slow() -> int | None:
    # Not asyncio's fast path (Trio, say): ask the backends (see register_inline_slow).
    return _inline_slow_hook()


def inline_task_id() -> Any:
    """For a portal made inline (``with_portal_run`` and friends) in the current task.

    Returns ``_HAS_PORTAL`` if the current task already has a portal, else the
    ``task_id`` the new portal records.  Raises RuntimeError outside a task.
    """
    if portal_of_current_task() is not None:
        return _HAS_PORTAL
    return _inline_task_id_slow()


def find_portal_in(coro: object) -> Portal | None:
    """The portal in a (suspended) task's coroutine or await chain, if any."""
    seen = 0
    while coro is not None and seen < 10_000:
        if type(coro) is Portal:
            return coro
        coro = getattr(coro, "cr_await", None) or getattr(coro, "gi_yieldfrom", None)
        seen += 1
    return None


# -- the implementation in use (see _portal.py's section of that name) ------

drive_await: Callable[[weakref.ref[Portal], Any], Any] = _accel.pick("drive_await", _drive_await)
await_box: Callable[[list[Any]], Any] = _accel.pick("await_box", _await_box)
#: The portal through which the current code runs, or None.
current_portal: Callable[[], Portal | None] = _accel.pick(
    "portal_of_current_task", portal_of_current_task
)
#: For a portal made inline: ``_HAS_PORTAL``, or the task id to record.
inline_portal_id: Callable[[], Any] = _accel.pick("inline_task_id", inline_task_id)
# (drive_coroutine's compiled twin is called by the compiled run_job only.)

_accel.configure(
    getcurrent=getcurrent,
    parked=_PARKED,
    returned=_RETURNED,
    finished=_FINISHED,
    detach=_Detach,
    greenlet_exit=greenlet.GreenletExit,
    slow=_SLOW,
    awaitable_iter=_awaitable_iter,
    greenlet_class=PortalGreenlet,
    worker=_worker,
    pool_limit=_POOL_LIMIT,
    raised=_RAISED,
    no_portal=_NO_PORTAL,
    has_portal=_HAS_PORTAL,
    inline_slow=_inline_task_id_slow,
)
