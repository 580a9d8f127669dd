"""aiohttp: run every request handler with a portal.

::

    from aiohttp import web
    import greenportal.aiohttp

    app = web.Application(middlewares=[greenportal.aiohttp.portal_middleware])
    # or: greenportal.aiohttp.setup(app)

Sync code that a handler calls, however deep, can then use
:func:`greenportal.await_`; while it waits, the server goes on serving other
requests.  Middlewares listed after this one run inside the portal too, so
put it first.
"""

from __future__ import annotations

from typing import Any

try:
    from aiohttp import web
    from aiohttp.typedefs import Handler
except ImportError as error:  # pragma: no cover - depends on the environment
    raise ImportError(
        "greenportal.aiohttp needs aiohttp, which is not installed: pip install aiohttp"
    ) from error

from ._api import with_portal_run
from ._tree import with_portal_run_tree

__all__ = ["portal_middleware", "portal_tree_middleware", "setup"]


@web.middleware
async def portal_middleware(request: web.Request, handler: Handler) -> web.StreamResponse:
    """aiohttp middleware: the rest of the chain, and the handler, run with a portal.

    Costs nothing extra when the task already has a portal.  Tasks that the
    handler starts do not get portals; see :func:`portal_tree_middleware`.
    """
    return await with_portal_run(handler, request)


@web.middleware
async def portal_tree_middleware(request: web.Request, handler: Handler) -> web.StreamResponse:
    """Like :func:`portal_middleware`, and tasks the handler starts get portals too.

    Uses :func:`greenportal.with_portal_run_tree`.
    """
    return await with_portal_run_tree(handler, request)


def setup(app: web.Application, *, tree: bool = False) -> None:
    """Make *app*'s handlers run with portals: add the middleware in front of the others.

    With *tree*, tasks started by the handlers get portals too
    (:func:`portal_tree_middleware`).  Calling it again changes nothing.
    """
    if not isinstance(app, web.Application):
        raise TypeError(
            f"greenportal.aiohttp.setup() needs an aiohttp.web.Application, not "
            f"{type(app).__name__}"
        )
    middlewares: Any = app.middlewares
    if portal_middleware in middlewares or portal_tree_middleware in middlewares:
        return
    if app.frozen:
        raise RuntimeError(
            "greenportal.aiohttp.setup() was called on an application that has already "
            "started (its middlewares are frozen); call it before running the app"
        )
    middlewares.insert(0, portal_tree_middleware if tree else portal_middleware)
