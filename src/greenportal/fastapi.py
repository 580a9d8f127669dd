"""FastAPI: ``def`` endpoints and dependencies on the event loop, in a portal.

::

    from fastapi import APIRouter, Depends, FastAPI
    from greenportal.fastapi import PortalRoute, threadpool

    router = APIRouter(route_class=PortalRoute)

    def current_user(token: str = Depends(oauth2)) -> User:      # def dependency
        return users.load(token)          # sync code that calls greenportal.await_

    @router.get("/orders/{order_id}")
    def show_order(order_id: int, user: User = Depends(current_user)) -> Order:
        return orders.load(user, order_id)

    app = FastAPI()
    app.include_router(router)

Why
---
FastAPI runs every ``def`` endpoint and every ``def`` dependency in anyio's
thread pool, 40 threads by default.  :func:`greenportal.await_` works there,
by hopping back to the loop, but each waiting request holds a thread, each
wait is two thread hand-overs, and the pool's size caps how many requests
wait at once.  Under :class:`PortalRoute` the same functions run on the
loop's thread with a portal (as :func:`greenportal.with_portal_run_sync`
runs them): while one waits in ``await_`` the loop serves the others, and
no thread is taken.  ``async def`` endpoints and dependencies are untouched.

How
---
FastAPI decides where to run user code at call time, in two functions it
looks up in its own modules' globals: ``run_in_threadpool`` (endpoints,
plain dependencies, response validation of sync endpoints) and
``contextmanager_in_threadpool`` (``yield`` dependencies).  Importing this
module replaces those two names in ``fastapi.routing`` and
``fastapi.dependencies.utils`` with versions that look at a context
variable: :class:`PortalRoute`'s request handler sets it for the duration of
its request, and while it is set the call runs on the loop, in the
request's portal; in
every other request they hand over to FastAPI's originals, so routes of
other classes behave exactly as before, at the cost of one context-variable
read per threaded call.  Everything that decides *what* runs (dependency
solving, ``Depends`` caching, ``dependency_overrides``, validation, the
OpenAPI schema, background tasks) is FastAPI's own, untouched.

The request's handler runs in one portal (:func:`greenportal.with_portal_run`),
made before the first sync call, so each sync call is then a plain call;
a route whose endpoint and dependencies are all async gets no portal (an
override that brings a sync one in still works: that call makes a portal
of its own).  Rejected: a portal per sync call, which was the first
version.  It left async code untouched, but cost a greenlet per call:
899,000 instructions per request of ``benchmarks/fastapi_server.py``
against 854,000 with a portal per request (callgrind; 715,000 written
``async def``).

Rejected too: rewriting each route's ``Dependant`` tree, replacing every sync
``call`` with an async wrapper.  FastAPI keys ``dependency_overrides`` and
its per-request cache on the original callables, rebuilds dependants for
overrides at request time, and caches its callable classification, so the
rewrite would have to track all three across versions.

A ``yield`` dependency is entered and exited in the portal as well; the exit
is shielded from cancellation, as FastAPI shields its threaded exit.

Left alone, known gaps:

* streaming endpoints (``def`` generators, JSON Lines and server-sent
  events) are iterated where FastAPI iterates them, in the thread pool;
* background tasks run where Starlette runs them (sync ones in a thread);
* websocket routes are ``APIWebSocketRoute``, not this class: their
  endpoints are async already; the ``def`` dependencies they use run in
  threads.
"""

from __future__ import annotations

import contextlib
import contextvars
import functools
import inspect
from collections.abc import AsyncIterator, Callable, Coroutine
from contextlib import AbstractAsyncContextManager, AbstractContextManager
from typing import Any, TypeVar

import anyio
import fastapi.dependencies.utils as _dependency_utils
import fastapi.routing as _routing
from fastapi.routing import APIRoute
from starlette.requests import Request
from starlette.responses import Response

from ._api import with_portal_run, with_portal_run_sync
from ._guards import is_async_callable
from .starlette import threadpool, wants_threadpool

__all__ = ["PortalRoute", "threadpool"]

T = TypeVar("T")

# True while a PortalRoute's handler runs: FastAPI's threaded calls made in
# this context then run in a portal.  Copied into tasks started meanwhile
# (FastAPI's stream producers), reset when the handler returns.
_in_portal_route: contextvars.ContextVar[bool] = contextvars.ContextVar(
    "greenportal.fastapi.in_portal_route", default=False
)


def _missing(name: str) -> ImportError:
    version = getattr(__import__("fastapi"), "__version__", "?")
    return ImportError(
        f"greenportal.fastapi needs FastAPI's {name}, which FastAPI {version} does not "
        "have; install a FastAPI from 0.110 on, or use greenportal.portal on each "
        "endpoint instead"
    )


def _original(module: Any, name: str) -> Any:
    value = getattr(module, name, None)
    if value is None:
        raise _missing(f"{module.__name__}.{name}")
    # A second import (importlib.reload) must not wrap our own wrapper.
    return getattr(value, "__greenportal_original__", value)


_threaded_call = _original(_dependency_utils, "run_in_threadpool")
_threaded_context = _original(_dependency_utils, "contextmanager_in_threadpool")
# FastAPI 0.160+ threads endpoints as _run_sync_endpoint(function=..., arguments=...).
_run_sync_endpoint = getattr(_routing, "_run_sync_endpoint", None)


def _target(fn: Callable[..., Any], kwargs: dict[str, Any]) -> object:
    """The user's function behind a threaded call (for the threadpool() mark)."""
    if fn is _run_sync_endpoint:
        return kwargs.get("function")
    return fn


async def run_in_threadpool(fn: Callable[..., T], *args: Any, **kwargs: Any) -> T:
    """FastAPI's threaded call: in a portal under PortalRoute, else in a thread."""
    if _in_portal_route.get() and not wants_threadpool(_target(fn, kwargs)):
        # In the request's portal this is a plain call.  A dependency with a
        # parameter named like with_portal_run_sync's own goes in a partial.
        if "sync_fn" in kwargs:
            return await with_portal_run_sync(functools.partial(fn, *args, **kwargs))
        return await with_portal_run_sync(fn, *args, **kwargs)
    result: T = await _threaded_call(fn, *args, **kwargs)
    return result


def contextmanager_in_threadpool(cm: AbstractContextManager[T]) -> AbstractAsyncContextManager[T]:
    """FastAPI's ``yield`` dependency wrapper: in a portal under PortalRoute."""
    if _in_portal_route.get() and not wants_threadpool(getattr(cm, "func", None)):
        return _context_in_portal(cm)
    threaded: AbstractAsyncContextManager[T] = _threaded_context(cm)
    return threaded


@contextlib.asynccontextmanager
async def _context_in_portal(cm: AbstractContextManager[T]) -> AsyncIterator[T]:
    # The exit runs only if the entry succeeded, and is shielded from
    # cancellation (a dependency's cleanup must run), as FastAPI's own is.
    value = await with_portal_run_sync(cm.__enter__)
    try:
        yield value
    except BaseException as exc:
        with anyio.CancelScope(shield=True):
            suppress = await with_portal_run_sync(cm.__exit__, type(exc), exc, exc.__traceback__)
        if not suppress:
            raise
    else:
        with anyio.CancelScope(shield=True):
            await with_portal_run_sync(cm.__exit__, None, None, None)


run_in_threadpool.__greenportal_original__ = _threaded_call  # type: ignore[attr-defined]
contextmanager_in_threadpool.__greenportal_original__ = _threaded_context  # type: ignore[attr-defined]
# setattr: FastAPI's modules do not declare these names as exported.
setattr(_routing, "run_in_threadpool", run_in_threadpool)  # noqa: B010
setattr(_dependency_utils, "run_in_threadpool", run_in_threadpool)  # noqa: B010
setattr(_dependency_utils, "contextmanager_in_threadpool", contextmanager_in_threadpool)  # noqa: B010


class PortalRoute(APIRoute):
    """A FastAPI route whose ``def`` endpoint and ``def`` dependencies run in a portal.

    Use it as ``APIRouter(route_class=PortalRoute)``, or set
    ``app.router.route_class = PortalRoute`` before adding routes to *app*;
    routers keep it through ``include_router``.  It takes ``APIRoute``'s
    arguments and builds the same route (path, schema, validation,
    dependencies); what changes is where sync code runs:

    * a ``def`` endpoint, and every ``def`` dependency of its request
      (sub-dependencies, router and app dependencies, overrides and
      ``yield`` dependencies included), runs on the event loop's thread,
      inside a portal, so it and the code it calls can use
      :func:`greenportal.await_` without holding a thread;
    * ``async def`` endpoints and dependencies run as before;
    * a function marked with :func:`threadpool` runs in the thread pool, as
      without greenportal: use that for code that really blocks.

    Like an ``async def`` endpoint, a ``def`` endpoint under this route
    blocks the loop while it computes or blocks: that is the trade.
    Combine it with another ``APIRoute`` subclass by inheriting from both,
    this one first.
    """

    def get_route_handler(self) -> Callable[[Request], Coroutine[Any, Any, Response]]:
        """FastAPI's hook for the request handler: ``APIRoute``'s, run in a portal.

        The handler that ``APIRoute`` builds, wrapped so that while it runs,
        FastAPI's threaded calls for this request (its ``def`` endpoint and
        dependencies) run in one portal, made before the first of them.  A
        subclass that overrides this too should call it through ``super()``.
        """
        handler = super().get_route_handler()
        # One portal per request, made before any sync call, rather than one
        # per call: each of those would cost a greenlet.  A route with nothing
        # sync (an override can still add some) gets none.
        in_portal = _has_sync_calls(self.dependant)

        @functools.wraps(handler)
        async def portal_route_handler(request: Request) -> Response:
            token = _in_portal_route.set(True)
            try:
                if in_portal:
                    return await with_portal_run(handler, request)
                return await handler(request)
            finally:
                _in_portal_route.reset(token)

        return portal_route_handler


def _has_sync_calls(dependant: Any) -> bool:
    """Does *dependant* or a dependency under it call a def function?"""
    pending = [dependant]
    while pending:
        node = pending.pop()
        call = getattr(node, "call", None)
        if call is not None and not _is_async(call):
            return True
        pending.extend(getattr(node, "dependencies", ()))
    return False


def _is_async(call: object) -> bool:
    if is_async_callable(call):
        return True
    while isinstance(call, functools.partial):
        call = call.func
    if not inspect.isroutine(call):  # an object: its class's __call__
        call = inspect.getattr_static(type(call), "__call__", None)
    return callable(call) and inspect.isasyncgenfunction(inspect.unwrap(call))
