"""Portals for whole task trees, on Trio and on asyncio.

The public functions here are thin: each backend's ``children_scope()``
does the work (an instrument on Trio, a task factory on asyncio; see
``_backends/_trio.py`` and ``_backends/_asyncio.py``).
"""

from __future__ import annotations

import contextlib
from collections.abc import AsyncIterator, Awaitable, Callable, Iterator
from typing import ParamSpec, TypeVar

import greenlet

from . import _backends
from ._api import with_portal_run
from ._await import current_portal
from ._backends import install_portal
from ._portal import Portal

P = ParamSpec("P")
T = TypeVar("T")


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
    try:
        backend, _ = _backends.current_backend_and_task()
    except RuntimeError as error:
        # greenback's key phrase (Trio only there), for tests written against it.
        raise RuntimeError(
            f"This function is only supported when running under Trio or asyncio: {error}"
        ) from None
    with backend.children_scope():
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
        if current_portal() is None and type(backend.get_coro(task)) is not Portal:
            installed = install_portal(backend, task)
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
