"""The asyncio side of ``greenportal.nest_asyncio``: the patches and the factory.

The design, what it gives up and why, is the essay at the top of
``greenportal/nest_asyncio.py``; this module is its mechanics.  It changes
three things in asyncio, each once per process, and one thing per loop:

* ``asyncio.run`` (and ``asyncio.runners.run``) is replaced by :func:`_run`;
* ``asyncio.Runner.run`` (3.11+) is wrapped so that a Runner's loop gets the
  factory before the main task is created;
* ``run_until_complete`` is wrapped on ``asyncio.BaseEventLoop``, on
  ``uvloop.Loop`` if uvloop is loaded, and on the class of every loop the
  factory is installed on, where that class overrides it;
* each loop gets a task factory, chained in front of the one it had, that
  wraps the coroutine of every new task in a portal (``_asyncio``'s tree
  factory with a wrapping rule that says yes to every coroutine).

A wrapped call takes the *nested* path when the loop it would run is the one
running in this thread and the calling code runs in a portal of the current
task: the coroutine becomes a task on that loop and the caller waits for it
with ``await_``.  Anywhere else the original runs: with no loop running, as
asyncio would (the loop gets the factory first); on a running loop, to raise
asyncio's own RuntimeError, with a note that says why greenportal could not
nest the call and what would let it.

This module is imported by ``greenportal.nest_asyncio`` only, so it imports
asyncio at the top; uvloop it only looks up in ``sys.modules``.
"""

from __future__ import annotations

import asyncio
import functools
import sys
import warnings
import weakref
from collections.abc import Callable
from typing import Any

from .. import _await
from .._portal import Portal
from . import _asyncio

# Loop classes whose run_until_complete cannot be wrapped (warned about once).
_immutable: weakref.WeakSet[type] = weakref.WeakSet()
# Task factories this module made: never wrapped twice.
_factories: weakref.WeakSet[Callable[..., Any]] = weakref.WeakSet()
# What asyncio.run and Runner.run were before apply(); None until then.
_original_run: Callable[..., Any] | None = None
_original_runner_run: Callable[..., Any] | None = None
# Keyword arguments of asyncio.run besides debug, in this Python.
_RUN_OPTIONS = frozenset({"loop_factory"} if sys.version_info >= (3, 12) else ())
# asyncio.run takes any awaitable from 3.14 on, a coroutine only before.
_RUNS_AWAITABLES = sys.version_info >= (3, 14)
_MARK = "_greenportal_nest"
# What apply() needs of a loop (uvloop.loop.Loop is not an AbstractEventLoop).
_LOOP_METHODS = ("get_task_factory", "set_task_factory", "run_until_complete", "is_closed")

_ENABLE = "greenportal.nest_asyncio"


def apply(loop: asyncio.AbstractEventLoop | None) -> Any:
    """Patch asyncio (once) and give *loop*, or the running loop, the factory.

    Returns the current task if the loop given portals is the one running in
    this thread, for the caller to bestow a portal on; else None.
    """
    if loop is not None and not all(hasattr(loop, name) for name in _LOOP_METHODS):
        raise ValueError(f"nest_asyncio.apply() needs an asyncio event loop, got {loop!r}")
    # Portals check the running task through the hook that making the asyncio
    # backend binds; the factory makes portals before anything else may have.
    _asyncio.AsyncioBackend()
    _patch_asyncio()
    running = asyncio._get_running_loop()
    target = loop if loop is not None else running
    if target is None:
        return None
    _prepare(target)
    if target is running:
        return asyncio.current_task(running)
    return None


# -- the factory -------------------------------------------------------------------


def _wrap_every(coro: Any, context: object) -> tuple[Any, Portal | None]:
    """The factory's rule: every coroutine gets a portal (unless it is one)."""
    if type(coro) is Portal or not asyncio.iscoroutine(coro):
        return coro, None
    portal = Portal(coro)
    return portal, portal


def _has_factory(loop: asyncio.AbstractEventLoop) -> bool:
    factory = loop.get_task_factory()
    if factory in _factories:
        return True
    # Under a portals_for_children() scope opened since: ours is the scope's inner.
    state = _asyncio._tree_states.get(loop)
    return state is not None and factory is state.factory and state.inner in _factories


def _prepare(loop: asyncio.AbstractEventLoop) -> None:
    """Make *loop*'s run_until_complete nest, and give its new tasks portals."""
    _patch_class(type(loop))
    if loop.is_closed() or _has_factory(loop):
        return
    factory = _asyncio._tree_factory(loop.get_task_factory(), _wrap_every)
    _factories.add(factory)
    loop.set_task_factory(factory)


# -- the hints -------------------------------------------------------------------


def _why_not(loop: object, running: asyncio.AbstractEventLoop, what: str) -> str:
    """Why *what* could not be nested on *running*, and what would let it."""
    if loop is not running:
        return (
            f"{_ENABLE} nests calls on the event loop that is running in this thread "
            f"only; {what} was asked to run another loop"
        )
    task = asyncio.current_task(running)
    if task is None:
        return (
            f"{_ENABLE}: {what} was called from a plain callback of the running loop, "
            "outside any task, so nothing can wait for it there; schedule the coroutine "
            "with loop.create_task() instead"
        )
    coro = None if task.done() else task.get_coro()
    if type(coro) is Portal and coro._gr is None:
        return (
            f"{_ENABLE}: apply() gave this task a portal, which starts working once the "
            "task has yielded to the event loop: 'await asyncio.sleep(0)' once first "
            "(in a notebook: call it from the next cell on)"
        )
    return (
        f"{_ENABLE}: a nested {what} needs a portal in the calling task, and this task "
        "has none (it was created before nest_asyncio.apply() was called, or on a loop "
        "apply() was not given); call apply() before the task is created, or give it a "
        "portal with 'await greenportal.ensure_portal()'"
    )


def _add_hint(error: BaseException, hint: str) -> None:
    if sys.version_info >= (3, 11):
        if hint not in getattr(error, "__notes__", ()):
            error.add_note(hint)
    elif error.args and isinstance(error.args[0], str) and hint not in error.args[0]:
        error.args = (f"{error.args[0]}\n{hint}", *error.args[1:])


# -- the patches -------------------------------------------------------------------


def _run(main: Any, *, debug: bool | None = None, **options: Any) -> Any:
    """asyncio.run, nesting on the running loop inside a portal (see the module notes).

    The nested path ignores *debug* and *loop_factory*: it runs on the outer
    loop, in the outer loop's mode.
    """
    assert _original_run is not None
    running = asyncio._get_running_loop()
    if running is None or not options.keys() <= _RUN_OPTIONS:
        # A fresh loop (Runner.run gives it the factory), or asyncio's TypeError.
        _patch_known_classes()
        return _original_run(main, debug=debug, **options)
    if _await.current_portal() is None:
        try:
            return _original_run(main, debug=debug, **options)
        except RuntimeError as error:
            _add_hint(error, _why_not(running, running, "asyncio.run()"))
            raise
    if not asyncio.iscoroutine(main):
        if _RUNS_AWAITABLES:
            # 3.14+: any awaitable; else asyncio's TypeError (not tested here).
            return _await.await_(asyncio.ensure_future(main, loop=running))
        # What asyncio.run says in a thread with no loop running.
        raise ValueError(f"a coroutine was expected, got {main!r}")
    try:
        task = running.create_task(main)
    except BaseException:
        main.close()
        raise
    del main
    return _await.await_(task)


def _wrap_run_until_complete(original: Callable[..., Any]) -> Callable[..., Any]:
    @functools.wraps(original)
    def run_until_complete(self: asyncio.AbstractEventLoop, future: Any) -> Any:
        running = asyncio._get_running_loop()
        if running is None:
            _prepare(self)
            return original(self, future)
        if running is self and _await.current_portal() is not None:
            return _await.await_(asyncio.ensure_future(future, loop=self))
        try:
            return original(self, future)
        except RuntimeError as error:
            _add_hint(error, _why_not(self, running, "run_until_complete()"))
            raise

    setattr(run_until_complete, _MARK, True)
    return run_until_complete


def _wrap_runner_run(original: Callable[..., Any]) -> Callable[..., Any]:
    @functools.wraps(original)
    def run(self: Any, coro: Any, *, context: Any = None) -> Any:
        if asyncio._get_running_loop() is None:
            if asyncio.iscoroutine(coro):
                try:
                    loop = self.get_loop()
                except RuntimeError:
                    pass  # closed: the original says so
                else:
                    _prepare(loop)
            return original(self, coro, context=context)
        try:
            return original(self, coro, context=context)
        except RuntimeError as error:
            _add_hint(
                error,
                f"{_ENABLE} nests asyncio.run() and loop.run_until_complete(), not "
                "asyncio.Runner, which owns a loop of its own",
            )
            raise

    setattr(run, _MARK, True)
    return run


def _patch_class(cls: type) -> None:
    """Wrap *cls*'s run_until_complete, unless what it has is ours or cannot change."""
    original = getattr(cls, "run_until_complete", None)
    if original is None or getattr(original, _MARK, False) or cls in _immutable:
        return
    try:
        cls.run_until_complete = _wrap_run_until_complete(original)  # type: ignore[attr-defined]
    except TypeError:
        # An immutable (C) type, such as uvloop.loop.Loop itself (uvloop's
        # public uvloop.Loop is a Python subclass, which takes the patch).
        _immutable.add(cls)
        warnings.warn(
            f"{_ENABLE} cannot patch {cls.__module__}.{cls.__qualname__}, an immutable "
            "type: on its loops a nested asyncio.run() works, a nested "
            "loop.run_until_complete() raises RuntimeError; call asyncio.run() or "
            "greenportal.await_() there instead",
            RuntimeWarning,
            stacklevel=5,  # the caller of nest_asyncio.apply()
        )


def _patch_known_classes() -> None:
    _patch_class(asyncio.BaseEventLoop)
    uvloop = sys.modules.get("uvloop")
    loop_class = getattr(uvloop, "Loop", None)
    if isinstance(loop_class, type):
        _patch_class(loop_class)


def _patch_asyncio() -> None:
    global _original_run, _original_runner_run
    _patch_known_classes()
    if _original_run is None:
        _original_run = asyncio.run
        functools.update_wrapper(_run, _original_run)  # asyncio.run's name and doc
        asyncio.run = asyncio.runners.run = _run
    runner = getattr(asyncio, "Runner", None)  # 3.11+
    if runner is not None and not getattr(runner.run, _MARK, False):
        _original_runner_run = runner.run
        runner.run = _wrap_runner_run(runner.run)
