"""Eager task factories (3.12+) meet portal greenlets.

With an eager task factory, ``create_task`` runs the new task's first step
right away, on the greenlet of the code that called it.  Called from inside a
portal, that is the portal greenlet, and anything the new task creates there
takes it as its parent: SQLAlchemy's ``greenlet_spawn``, for one, makes a
greenlet whose parent is the portal greenlet, and when the new task later
resumes on the event loop's greenlet, that greenlet switches to the wrong
parent and corrupts both tasks.

So on a loop with an eager factory we install an equivalent factory that
starts tasks eagerly except when called from inside a portal greenlet (or a
greenlet running under one); those start on the next loop iteration instead,
as with the default factory.  anyio's task groups already refuse eager starts
the same way, and recognise factories made by
``asyncio.create_eager_task_factory``, which is why ours is made by it too.

Known gap: a task factory that starts tasks eagerly but was not made by
``asyncio.create_eager_task_factory`` is not recognised.
"""

from __future__ import annotations

import weakref
from collections.abc import Callable
from typing import Any

import greenlet

from .._portal import Portal, PortalGreenlet

# Factories we made: never wrap them again.
_ours: weakref.WeakSet[Callable[..., Any]] = weakref.WeakSet()


def eager_constructor(factory: object) -> Callable[..., Any] | None:
    """The task constructor of a factory made by create_eager_task_factory, else None."""
    import asyncio

    eager = getattr(asyncio, "eager_task_factory", None)
    if eager is None or getattr(factory, "__code__", None) is not eager.__code__:
        return None
    ctor: Callable[..., Any] = factory.__closure__[0].cell_contents  # type: ignore[attr-defined]
    return ctor


def inside_portal() -> bool:
    """Is the current greenlet a portal greenlet, or running under one?"""
    gr: greenlet.greenlet | None = greenlet.getcurrent()
    while gr is not None:
        if isinstance(gr, PortalGreenlet):
            return True
        gr = gr.parent
    return False


def make_eager_factory(
    ctor: Callable[..., Any], wrap: Callable[[Any, Any], tuple[Any, Portal | None]] | None
) -> Callable[..., Any]:
    """An eager factory over *ctor* that is portal-safe, and wraps coroutines with *wrap*."""
    import asyncio

    def construct(coro: Any, **kwargs: Any) -> Any:
        portal = None
        if wrap is not None:
            coro, portal = wrap(coro, kwargs.get("context"))
        if kwargs.get("eager_start") and inside_portal():
            kwargs["eager_start"] = False
        task = ctor(coro, **kwargs)
        if portal is not None:
            # Set only now: an eager start ran the first step while the task
            # was being built, when it had no id to check (None = no check).
            portal.task_id = id(task)
        return task

    factory: Callable[..., Any] = asyncio.create_eager_task_factory(construct)  # type: ignore[attr-defined]
    _ours.add(factory)
    return factory


def guard_loop(loop: Any) -> None:
    """Make an eager task factory on *loop* portal-safe (see the module docstring)."""
    factory = loop.get_task_factory()
    if factory is None or factory in _ours:
        return
    ctor = eager_constructor(factory)
    if ctor is not None:
        loop.set_task_factory(make_eager_factory(ctor, None))
