"""await_'s slow path: where an await goes when this greenlet is not its task's portal.

The fast path (``_await.await_box``) handles one case: the current greenlet
is the portal greenlet of the running task.  Everything else comes here:

1. a greenlet running *inside* the task's portal greenlet (SQLAlchemy's
   ``greenlet_spawn``, say): the portal is found by walking up the greenlet
   parents, and this greenlet, not the portal greenlet, is resumed with each
   answer until the await is done;
2. no asyncio or Trio task runs in this thread: a worker thread or a program
   without an event loop, which ``_threads.await_without_portal`` serves;
3. a task runs here but has no usable portal: a ``RuntimeError`` that says
   why (bestowed but not active yet, none at all, or this code runs inside an
   awaitable that the task's hub is driving for SQLAlchemy's ``await_``) and
   what to do.

Registered with the engine at import (``_await.register_slow_path``): the
engine does not import the layers above it.
"""

from __future__ import annotations

import gc
import sys
import types
import weakref
from typing import Any, NoReturn

from . import _await, _backends, _threads
from ._outcome import close_refused
from ._portal import Portal, _awaitable_iter, _PortalCommon, _strip_own_frame, getcurrent


def await_slow(aw: object) -> Any:
    """await_ when the current greenlet is not a portal greenlet of the current task."""
    try:
        it = _awaitable_iter(aw)
    except TypeError as error:
        close_refused(aw)
        _strip_own_frame(error)
        raise
    portal = _await.current_portal()
    if portal is None:
        del it
        try:
            if _backends.current_backend() is None and _backends.unsupported_library() is None:
                # No task runs in this thread: a worker thread, or a
                # program without an event loop (see _threads).
                return _threads.await_without_portal(aw)  # type: ignore[arg-type]
            raise_no_portal()
        except BaseException as error:
            close_refused(aw)
            _strip_own_frame(error)
            raise
    here = getcurrent()
    del aw
    outer = portal._awaiting
    portal._awaiting = it
    del it
    ref = weakref.ref(portal)
    drive = _await.drive_await
    try:
        if here is portal._gr:
            del portal
            return drive(ref, outer)
        # A foreign greenlet (SQLAlchemy's greenlet_spawn, say) running inside
        # the portal greenlet: resume it, not the portal greenlet, until done.
        saved = portal._target
        portal._set_target(here)
        del portal
        try:
            return drive(ref, outer)
        finally:
            restore = ref()
            if restore is not None:
                restore._set_target(saved)
    except BaseException as error:
        _strip_own_frame(error)
        raise


def native_portal_here() -> Portal | None:
    """The portal whose hub-driven awaitable (``Portal._native``) is running this code.

    For the error of an ``await_`` that finds no portal.  Nothing on the hot
    path keeps track (a mark per step cost as much as the rest of the step),
    so this searches: a portal of this hub in that state whose awaitable's
    frame is on the current stack.  Slow, and only ever on that error's path.
    """
    hub = getcurrent()
    stack = set()
    frame: types.FrameType | None = sys._getframe(1)
    while frame is not None:
        stack.add(id(frame))
        frame = frame.f_back
    for obj in gc.get_objects():
        if isinstance(obj, _PortalCommon) and obj._native is not None and obj._hub is hub:
            running = getattr(obj._native, "cr_frame", None) or getattr(
                obj._native, "gi_frame", None
            )
            if running is not None and id(running) in stack:
                return obj  # type: ignore[return-value]
    return None


def raise_no_portal() -> NoReturn:
    """Raise the RuntimeError that explains why this task has no usable portal."""
    backend, task = _backends.current_backend_and_task()
    coro = backend.get_coro(task)
    # The key phrases of greenback's messages ("must create a ... portal",
    # "must yield to the event loop"), with our name, so that tests written
    # against greenback's wording still match (tests/test_greenback_compat.py).
    if native_portal_here() is not None:
        msg = (
            "await_() was called from sync code inside an awaitable that SQLAlchemy's "
            "await_() handed to the event loop (a database driver call made by "
            "SQLAlchemy's own code, or a function SQLAlchemy awaits, such as an "
            "async_creator): greenportal drives such awaitables on the event loop "
            "itself, as SQLAlchemy's greenlet_spawn does, so there is no portal "
            "greenlet here to suspend. Use 'await' in that async code instead, or make "
            "the call that needs await_() before or after SQLAlchemy's"
        )
    elif isinstance(coro, Portal) and coro._gr is None:
        msg = (
            "this task's portal was bestowed but is not active yet: you must yield to the "
            f"event loop (try 'await {backend.sleep0}') after calling "
            "'greenportal.bestow_portal()' on the current task before using the portal"
        )
    else:
        msg = (
            "await_() needs a portal in the current task, and this task has none: you "
            "must create a greenportal portal for this task in order to use "
            "'greenportal.await_()'. It cannot simply block either, since the awaitable "
            "needs this thread's event loop to make progress. Try 'await "
            "greenportal.ensure_portal()' at the top of the task, or 'await "
            "greenportal.with_portal_run(some_fn, *args)' or 'await "
            "greenportal.with_portal_run_sync(sync_fn, *args)', or move the sync code to a "
            "worker thread with 'await greenportal.to_thread(sync_fn, *args)'"
        )
    raise RuntimeError(msg)


_await.register_slow_path(await_slow)
