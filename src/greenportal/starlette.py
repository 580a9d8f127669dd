"""Starlette: ``def`` endpoints on the event loop, in a portal, instead of a thread.

::

    from starlette.routing import Route, get_name
    from greenportal.starlette import PortalRoute, threadpool

    def show_order(request):                    # a plain def endpoint
        order = greenportal.await_(db.fetch_order(request.path_params["id"]))
        return JSONResponse(order)

    routes = [PortalRoute("/orders/{id}", show_order)]

Starlette runs a ``def`` endpoint in anyio's thread pool (40 threads by
default).  There, :func:`greenportal.await_` works by hopping back to the
loop, but every request holds a thread while it waits, and the pool's size
caps how many requests wait at once.  :class:`PortalRoute` runs such an
endpoint on the loop's own thread instead, with a portal (as
:func:`greenportal.with_portal_run_sync` would): while it waits in
``await_`` the loop serves everyone else, and no thread is held.

The price is the one every ``async def`` endpoint pays: code that *blocks*
(``time.sleep``, a sync driver, heavy CPU work) now blocks the loop.  Mark
such an endpoint with :func:`threadpool` and it goes back to the thread pool,
where ``await_`` still works.

Why a route class and not a middleware: where an endpoint runs is decided
when the route is built (Starlette wraps a sync endpoint in
``run_in_threadpool`` then), so a middleware, which sees only requests,
cannot change it.  The wrapping happens once, at construction, and costs a
request nothing when the endpoint is async.

Left alone: class-based endpoints (``HTTPEndpoint``), whose sync methods
Starlette dispatches to the thread pool itself (decorate such a method with
:func:`greenportal.portal` to run it on the loop), and background tasks,
which run where Starlette runs them.
"""

from __future__ import annotations

import functools
import inspect
from collections.abc import Callable
from typing import Any, TypeVar

from starlette.requests import Request
from starlette.routing import Route, get_name

from ._api import with_portal_run_sync
from ._guards import is_async_callable

__all__ = ["PortalRoute", "threadpool"]

F = TypeVar("F", bound=Callable[..., Any])

# The attribute threadpool() sets; read by this module and greenportal.fastapi.
THREADPOOL_MARK = "__greenportal_threadpool__"


def threadpool(fn: F) -> F:
    """Mark a ``def`` endpoint or dependency to run in the thread pool.

    Under :class:`PortalRoute` (here, or :class:`greenportal.fastapi.PortalRoute`),
    *fn* then runs where the framework would run it without greenportal: in
    anyio's worker threads.  Use it for code that really blocks, such as a
    sync database driver, ``time.sleep`` or a long computation, which would
    otherwise stall the event loop.  :func:`greenportal.await_` keeps working
    there: each call hops back to the loop.

    Returns *fn* itself, so signatures, names and the OpenAPI schema are
    unchanged.
    """
    if not callable(fn):
        raise TypeError(
            f"threadpool() marks a def endpoint or dependency; got {type(fn).__qualname__!r}, "
            "which is not callable"
        )
    if is_async_callable(fn):
        raise TypeError(
            f"threadpool() is for def functions, and {_name(fn)} is async: async "
            "endpoints and dependencies always run on the event loop; drop the "
            "decorator, or make it a def function"
        )
    try:
        setattr(fn, THREADPOOL_MARK, True)
    except (AttributeError, TypeError):
        raise TypeError(
            f"threadpool() cannot mark {_name(fn)}: it takes no attributes (a bound "
            "method or a type with __slots__); mark the function it calls instead"
        ) from None
    return fn


def wants_threadpool(fn: object) -> bool:
    """True if *fn* (or the function under its partials) was marked by :func:`threadpool`."""
    while isinstance(fn, functools.partial):
        if getattr(fn, THREADPOOL_MARK, False):
            return True
        fn = fn.func
    return bool(getattr(fn, THREADPOOL_MARK, False))


def _name(fn: object) -> str:
    return repr(getattr(fn, "__qualname__", None) or fn)


def _is_sync_function(endpoint: object) -> bool:
    """A plain (maybe partial) function or method that Starlette would thread."""
    inner = endpoint
    while isinstance(inner, functools.partial):
        inner = inner.func
    is_routine = inspect.isfunction(inner) or inspect.ismethod(inner)
    return is_routine and not is_async_callable(endpoint)


class PortalRoute(Route):
    """A Starlette ``Route`` that runs a ``def`` endpoint in a portal.

    Takes Starlette's ``Route`` arguments.  A sync function endpoint runs on
    the event loop's thread, so that it and the code it calls can use
    :func:`greenportal.await_` without holding a thread; an ``async def``
    endpoint, an ASGI application, and an endpoint marked with
    :func:`threadpool` are handled exactly as by ``Route``.
    ``route.endpoint`` is the function given.
    """

    def __init__(self, path: str, endpoint: Callable[..., Any], **kwargs: Any) -> None:
        handler = endpoint
        if _is_sync_function(endpoint) and not wants_threadpool(endpoint):
            handler = _in_portal(endpoint)
            if kwargs.get("name") is None:  # url_for() names, as Route would give them
                kwargs["name"] = get_name(endpoint)
        super().__init__(path, handler, **kwargs)
        self.endpoint = endpoint


def _in_portal(endpoint: Callable[[Request], Any]) -> Callable[[Request], Any]:
    @functools.wraps(endpoint)
    async def portal_endpoint(request: Request) -> Any:
        return await with_portal_run_sync(endpoint, request)

    return portal_endpoint
