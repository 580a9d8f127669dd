"""ASGI: run every HTTP request and websocket session of an ASGI app with a portal.

::

    import greenportal.asgi

    app = greenportal.asgi.GreenportalMiddleware(app)

    # Starlette / FastAPI:
    app = Starlette(routes=..., middleware=[Middleware(GreenportalMiddleware)])
    app.add_middleware(GreenportalMiddleware)

Async endpoints, and the sync code they call, can then use
:func:`greenportal.await_`.  ``lifespan`` and other scope types pass through
untouched.  Works on asyncio and on Trio (Hypercorn, anyio-based apps).
Standard library only: no ASGI framework is imported.
"""

from __future__ import annotations

from collections.abc import Awaitable, Callable, Collection, MutableMapping
from typing import Any

from ._api import with_portal_run
from ._tree import with_portal_run_tree

__all__ = ["ASGIApp", "GreenportalMiddleware", "Receive", "Scope", "Send"]

Scope = MutableMapping[str, Any]
Message = MutableMapping[str, Any]
Receive = Callable[[], Awaitable[Message]]
Send = Callable[[Message], Awaitable[None]]
ASGIApp = Callable[[Scope, Receive, Send], Awaitable[None]]

_DEFAULT_SCOPES = frozenset({"http", "websocket"})


class GreenportalMiddleware:
    """ASGI middleware: *app* handles ``http`` and ``websocket`` scopes with a portal.

    *tree*: tasks that the app starts while handling a request (Starlette's
    ``BaseHTTPMiddleware`` runs the rest of the app in one, and so do task
    groups in endpoints) get portals too, through
    :func:`greenportal.with_portal_run_tree`.  Without it, put this
    middleware inside (after) any ``BaseHTTPMiddleware``.

    *scope_types*: which ASGI scope types get a portal (default ``http`` and
    ``websocket``); others, such as ``lifespan``, go straight to *app*.
    """

    def __init__(
        self,
        app: ASGIApp,
        *,
        tree: bool = False,
        scope_types: Collection[str] = _DEFAULT_SCOPES,
    ) -> None:
        if not callable(app):
            raise TypeError(
                f"GreenportalMiddleware wraps an ASGI application (a callable taking scope, "
                f"receive, send), not {type(app).__name__}"
            )
        if isinstance(scope_types, str):
            raise TypeError(
                f"scope_types must be a collection of scope type names such as "
                f"{{'http', 'websocket'}}, not the string {scope_types!r}"
            )
        self.app = app
        self.tree = tree
        self.scope_types = frozenset(scope_types)
        self._run = with_portal_run_tree if tree else with_portal_run

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] in self.scope_types:
            await self._run(self.app, scope, receive, send)
        else:
            await self.app(scope, receive, send)

    def __repr__(self) -> str:
        return f"GreenportalMiddleware({self.app!r}, tree={self.tree})"
