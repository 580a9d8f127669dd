"""Portals for whole task trees, on Trio and on asyncio.

Trio tells instruments about every new task, so, as in greenback, an
instrument gives a portal to each task spawned into a nursery that a
registered task opened inside the scope.  We record the parent's nursery
count on entry, so that nurseries opened *before* the scope (say, the one a
task was started in) are not affected.

asyncio has no such hook, but it has the two things we need: a context that
every task copies from the code that creates it, and a per-loop task factory.
Entering the scope sets a context variable; our factory, chained in front of
whatever factory the loop already had (eager ones included), wraps the
coroutine of every task created where that variable is set.  Each such task
copies the variable into its own context, so its children get portals too,
transitively, and tasks created after the scope has exited, or outside it,
do not.  The factory is removed when the last scope on the loop exits, if
nobody has installed another factory on top of it.

Known gap: an asyncio task created with an explicit ``context=`` follows
that context, not the creating code's.
"""

from __future__ import annotations

import contextlib
import contextvars
import weakref
from collections.abc import AsyncIterator, Awaitable, Callable, Iterator
from typing import TYPE_CHECKING, Any, ParamSpec, TypeVar

import greenlet

from . import _backends, _eager
from ._api import _install, with_portal_run
from ._portal import Portal, portal_of_current_task

if TYPE_CHECKING:
    import asyncio

    import trio


P = ParamSpec("P")
T = TypeVar("T")

# True in the context of code (and of tasks created from it) inside a tree scope.
_in_tree: contextvars.ContextVar[bool] = contextvars.ContextVar("greenportal_tree", default=False)


# -- Trio ----------------------------------------------------------------------


if TYPE_CHECKING:
    from trio.abc import Instrument as _Instrument
else:
    # Trio accepts any object with the hook methods; subclassing its ABC would
    # import Trio into asyncio programs.
    _Instrument = object


class AutoPortalInstrument(_Instrument):
    """A Trio instrument that gives new tasks portals.

    :func:`portals_for_children` and :func:`with_portal_run_tree` add one for
    the duration of their scope.  Pass an instance to ``trio.run(...,
    instruments=[AutoPortalInstrument()])`` to give every task of the run a
    portal, system tasks included.
    """

    def __init__(self) -> None:
        # {task: number of child nurseries it had when its scope began};
        # children spawned into nurseries at or past that index get portals.
        self.tasks: dict[Any, int] = {}
        # How many scopes (or the trio.run() that was given us) use us.
        self.refs = 0

    def before_run(self) -> None:
        # Called only when the instrument was passed to trio.run() itself.
        self.refs = 1
        _instrument_var().set(self)

    def task_spawned(self, task: trio.lowlevel.Task) -> None:
        nursery = task.parent_nursery
        if nursery is None:  # the init task: seen only when given to trio.run()
            self._adopt(task)
            return
        parent = nursery.parent_task
        depth = self.tasks.get(parent)
        if depth is not None and parent.child_nurseries.index(nursery) >= depth:
            self._adopt(task)

    def task_exited(self, task: trio.lowlevel.Task) -> None:
        self.tasks.pop(task, None)

    def _adopt(self, task: trio.lowlevel.Task) -> None:
        backend = _backends.get_backend("trio")
        coro: object = task.coro
        if not isinstance(coro, Portal):
            _install(backend, task)
        self.tasks[task] = 0


_trio_runvar: Any = None


def _instrument_var() -> Any:
    global _trio_runvar
    if _trio_runvar is None:
        import trio.lowlevel

        _trio_runvar = trio.lowlevel.RunVar("greenportal_instrument", default=None)
    return _trio_runvar


@contextlib.contextmanager
def _trio_children() -> Iterator[None]:
    import trio.lowlevel

    task = trio.lowlevel.current_task()
    var = _instrument_var()
    instrument: AutoPortalInstrument | None = var.get()
    if instrument is None:
        instrument = AutoPortalInstrument()
        trio.lowlevel.add_instrument(instrument)
        var.set(instrument)
    elif task in instrument.tasks:
        yield  # an enclosing scope of this task already covers us
        return
    instrument.tasks[task] = len(task.child_nurseries)
    instrument.refs += 1
    try:
        yield
    finally:
        instrument.tasks.pop(task, None)
        instrument.refs -= 1
        if instrument.refs == 0:
            var.set(None)
            trio.lowlevel.remove_instrument(instrument)


# -- asyncio -------------------------------------------------------------------


def _wrap_for_tree(coro: Any, context: contextvars.Context | None) -> tuple[Any, Portal | None]:
    """Wrap *coro* in a portal if the task is being created inside a tree scope."""
    import asyncio

    active = context.get(_in_tree, False) if context is not None else _in_tree.get()
    if not active or type(coro) is Portal or not asyncio.iscoroutine(coro):
        return coro, None
    portal = Portal(coro)
    return portal, portal


def _tree_factory(inner: Callable[..., Any] | None) -> Callable[..., Any]:
    """A task factory that behaves like *inner* and gives tree tasks portals."""
    import asyncio

    ctor = _eager.eager_constructor(inner)
    if ctor is not None:
        # Made by asyncio.create_eager_task_factory(ctor): we make another one
        # around our own constructor rather than wrapping the factory, because
        # code that must not start tasks eagerly (anyio's task groups)
        # recognises such factories and calls their constructor itself.
        return _eager.make_eager_factory(ctor, _wrap_for_tree)

    def factory(loop: asyncio.AbstractEventLoop, coro: Any, **kwargs: Any) -> Any:
        coro, portal = _wrap_for_tree(coro, kwargs.get("context"))
        if inner is not None:
            task = inner(loop, coro, **kwargs)
        else:
            task = asyncio.Task(coro, loop=loop, **kwargs)
        if portal is not None:
            portal.task_id = id(task)
        return task

    return factory


class _TreeState:
    """Our task factory on one loop, and how to take it out again."""

    def __init__(self, inner: Callable[..., Any] | None) -> None:
        # The factory the loop had before us.
        self.inner = inner
        # What we installed in its place.
        self.factory = _tree_factory(inner)
        # Number of scopes on this loop that are active now; 0 => uninstall.
        self.scopes = 0


_tree_states: weakref.WeakKeyDictionary[Any, _TreeState] = weakref.WeakKeyDictionary()


@contextlib.contextmanager
def _asyncio_children() -> Iterator[None]:
    import asyncio

    loop = asyncio.get_running_loop()
    state = _tree_states.get(loop)
    if state is None or loop.get_task_factory() is not state.factory:
        state = _tree_states[loop] = _TreeState(loop.get_task_factory())
        loop.set_task_factory(state.factory)
    state.scopes += 1
    token = _in_tree.set(True)
    try:
        yield
    finally:
        _in_tree.reset(token)
        state.scopes -= 1
        if state.scopes == 0 and loop.get_task_factory() is state.factory:
            loop.set_task_factory(state.inner)
            del _tree_states[loop]


# -- public --------------------------------------------------------------------


@contextlib.contextmanager
def portals_for_children() -> Iterator[None]:
    """Give a portal to every task started inside this ``with`` block.

    The task that enters the block gets none (so the block can be
    synchronous); the tasks it starts get one, and so do theirs, recursively.
    On Trio that means tasks spawned into nurseries opened inside the block;
    on asyncio, tasks created inside the block (``create_task``,
    ``TaskGroup``...), whatever task factory the loop uses.

    .. versionchanged:: 0.1
       Works on asyncio too (greenback supports Trio only).
    """
    backend, _ = _backends.current_backend_and_task()
    scope = _trio_children() if backend.name == "trio" else _asyncio_children()
    with scope:
        yield


@contextlib.asynccontextmanager
async def portals_for_tree() -> AsyncIterator[None]:
    """Give the current task, and every task it starts, a portal in this block.

    Entering and leaving are schedule points but not cancellation points.  A
    portal that this block installed on the current task is removed on the
    way out.  Use :func:`with_portal_run_tree` to avoid the schedule points.
    """
    backend, task = _backends.current_backend_and_task()
    with portals_for_children():
        installed = None
        if portal_of_current_task() is None and type(backend.get_coro(task)) is not Portal:
            installed = _install(backend, task)
        await backend.schedule_point()
        try:
            yield
        finally:
            if (
                installed is not None
                and backend.get_coro(task) is installed
                and greenlet.getcurrent() is installed._gr
            ):
                # Step the original coroutine directly from now on, yield once
                # so that it leaves the portal greenlet, then end that greenlet.
                assert installed.coro is not None
                backend.set_coro(task, installed.coro)
                await backend.schedule_point()
                installed.detach()
            else:
                await backend.schedule_point()


async def with_portal_run_tree(
    async_fn: Callable[P, Awaitable[T]], *args: P.args, **kwargs: P.kwargs
) -> T:
    """Run ``await async_fn(*args, **kwargs)`` with portals for the whole tree.

    *async_fn* runs with a portal, as in :func:`with_portal_run`, and so does
    every task it starts, directly or through its descendants.  No checkpoint
    is added.  ``trio.run(with_portal_run_tree, main)`` or
    ``asyncio.run(with_portal_run_tree(main))`` gives a whole program portals.

    .. versionchanged:: 0.1
       Works on asyncio too (greenback supports Trio only).
    """
    with portals_for_children():
        return await with_portal_run(async_fn, *args, **kwargs)
