"""greenportal.asgi: a real Starlette app behind real servers, driven by real clients.

* uvicorn on loopback with httpx (and aiohttp's websocket client), on every
  asyncio configuration;
* Hypercorn on Trio with httpx, when Hypercorn is installed;
* the ASGI app called directly, without a server, on every backend, Trio
  included (so Trio is tested where Hypercorn is not installed).
"""

from __future__ import annotations

import socket
import time
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from typing import Any

import pytest

import greenportal
from greenportal import await_

from .conftest import Backend

anyio = pytest.importorskip("anyio")
pytest.importorskip("starlette")
httpx = pytest.importorskip("httpx")

from starlette.applications import Starlette  # noqa: E402
from starlette.exceptions import HTTPException  # noqa: E402
from starlette.middleware import Middleware  # noqa: E402
from starlette.middleware.base import BaseHTTPMiddleware  # noqa: E402
from starlette.requests import Request  # noqa: E402
from starlette.responses import JSONResponse, PlainTextResponse, Response  # noqa: E402
from starlette.routing import Route, WebSocketRoute  # noqa: E402
from starlette.websockets import WebSocket  # noqa: E402

from greenportal.asgi import GreenportalMiddleware  # noqa: E402

# --- the sync layer and the app --------------------------------------------


def load_item(item_id: int) -> dict[str, Any]:
    """Plain sync code, as an application layer would have it."""
    if item_id == 404:
        raise HTTPException(status_code=404, detail=f"no item {item_id}")
    await_(anyio.sleep(0.001))
    return {"id": item_id, "portal": greenportal.has_portal()}


def slow(seconds: float) -> str:
    await_(anyio.sleep(seconds))
    return "done"


async def item_endpoint(request: Request) -> Response:
    return JSONResponse(load_item(int(request.path_params["item_id"])))


async def slow_endpoint(request: Request) -> Response:
    return PlainTextResponse(slow(float(request.query_params["s"])))


async def echo_endpoint(ws: WebSocket) -> None:
    await ws.accept()
    echo_sync(ws)
    await ws.close()


def echo_sync(ws: WebSocket) -> None:
    while True:
        text = await_(ws.receive_text())
        if text == "bye":
            return
        await_(ws.send_text(text.upper()))


class Tag(BaseHTTPMiddleware):
    """A BaseHTTPMiddleware, which runs the rest of the app in a task of its own."""

    async def dispatch(self, request: Request, call_next: Any) -> Response:
        response: Response = await call_next(request)
        response.headers["x-tag"] = "1"
        return response


def make_app(middleware: list[Middleware], lifespan_log: list[str] | None = None) -> Starlette:
    @asynccontextmanager
    async def lifespan(app: Starlette) -> AsyncIterator[None]:
        if lifespan_log is not None:
            lifespan_log.append(f"startup portal={greenportal.has_portal()}")
        yield
        if lifespan_log is not None:
            lifespan_log.append("shutdown")

    return Starlette(
        routes=[
            Route("/items/{item_id:int}", item_endpoint),
            Route("/slow", slow_endpoint),
            WebSocketRoute("/ws", echo_endpoint),
        ],
        middleware=middleware,
        lifespan=lifespan,
    )


# --- servers -------------------------------------------------------------------


def uvicorn_ws() -> str:
    """A websocket implementation uvicorn can use here ("none" if neither is installed)."""
    import importlib.util

    for name in ("wsproto", "websockets"):
        if importlib.util.find_spec(name) is not None:
            return name
    return "none"


@asynccontextmanager
async def uvicorn_server(app: Any) -> AsyncIterator[str]:
    """Serve *app* with uvicorn on a free 127.0.0.1 port, in this event loop."""
    import asyncio

    uvicorn = pytest.importorskip("uvicorn")
    config = uvicorn.Config(app, lifespan="on", log_level="warning", ws=uvicorn_ws())
    server = uvicorn.Server(config)
    sock = socket.socket()
    try:
        sock.bind(("127.0.0.1", 0))
        port = sock.getsockname()[1]
        task = asyncio.ensure_future(server.serve(sockets=[sock]))
    except BaseException:
        sock.close()
        raise
    try:
        deadline = time.monotonic() + 20
        while not server.started:
            if task.done():
                task.result()
                pytest.fail("uvicorn stopped before starting")
            if time.monotonic() > deadline:
                pytest.fail("uvicorn did not start in 20 s")
            await asyncio.sleep(0.01)
        yield f"http://127.0.0.1:{port}"
    finally:
        server.should_exit = True
        await asyncio.wait_for(task, 20)
        sock.close()


@asynccontextmanager
async def hypercorn_trio_server(app: Any) -> AsyncIterator[str]:
    """Serve *app* with Hypercorn on Trio, on a free 127.0.0.1 port."""
    import trio

    pytest.importorskip("hypercorn")
    from hypercorn.config import Config
    from hypercorn.trio import serve

    config = Config()
    config.bind = ["127.0.0.1:0"]
    config.loglevel = "WARNING"
    config.accesslog = None
    stop = trio.Event()
    async with trio.open_nursery() as nursery:
        binds = await nursery.start(
            lambda task_status: serve(
                app, config, shutdown_trigger=stop.wait, task_status=task_status
            )
        )  # type: ignore[no-untyped-call]
        try:
            yield binds[0]
        finally:
            stop.set()


# --- over a real server ---------------------------------------------------------


def test_uvicorn_starlette_endpoints_call_sync_code(aio_backend: Backend) -> None:
    log: list[str] = []

    async def main() -> None:
        app = make_app([Middleware(GreenportalMiddleware)], log)
        async with uvicorn_server(app) as url, httpx.AsyncClient(base_url=url) as client:
            resp = await client.get("/items/7")
            assert resp.status_code == 200, resp.text
            assert resp.json() == {"id": 7, "portal": True}
            resp = await client.get("/items/404")
            assert resp.status_code == 404
            assert resp.text == "no item 404"
            assert log == ["startup portal=False"]  # lifespan passed through untouched
        assert log == ["startup portal=False", "shutdown"]

    aio_backend.run(main)


def test_uvicorn_requests_overlap(aio_backend: Backend) -> None:
    n, pause = 10, 0.3

    async def main() -> None:
        import asyncio

        ticks = 0

        async def ticker() -> None:
            nonlocal ticks
            while True:
                await asyncio.sleep(0.01)
                ticks += 1

        app = GreenportalMiddleware(make_app([]))
        async with uvicorn_server(app) as url, httpx.AsyncClient(base_url=url) as client:
            tick_task = asyncio.ensure_future(ticker())
            start = time.monotonic()
            responses = await asyncio.gather(
                *(client.get("/slow", params={"s": pause}) for _ in range(n))
            )
            elapsed = time.monotonic() - start
            tick_task.cancel()
        assert [r.text for r in responses] == ["done"] * n
        assert elapsed < n * pause / 2, f"requests did not overlap ({elapsed:.2f}s)"
        assert ticks >= 10, f"the loop was blocked ({ticks} ticks)"

    aio_backend.run(main)


def test_uvicorn_websocket_session_runs_sync_code(aio_backend: Backend) -> None:
    aiohttp = pytest.importorskip("aiohttp")
    if uvicorn_ws() == "none":
        pytest.skip("uvicorn needs wsproto or websockets to serve websockets")

    async def main() -> None:
        app = make_app([])
        app.add_middleware(GreenportalMiddleware)
        async with (
            uvicorn_server(app) as url,
            aiohttp.ClientSession() as session,
            session.ws_connect(url.replace("http", "ws") + "/ws") as ws,
        ):
            for word in ["abc", "portal"]:
                await ws.send_str(word)
                assert await ws.receive_str() == word.upper()
            await ws.send_str("bye")
            assert (await ws.receive()).type == aiohttp.WSMsgType.CLOSE

    aio_backend.run(main)


@pytest.mark.parametrize("tree", [False, True])
def test_base_http_middleware_needs_tree_when_outside(aio_backend: Backend, tree: bool) -> None:
    """Starlette's BaseHTTPMiddleware runs the endpoint in another task."""

    async def main() -> None:
        outside = make_app([Middleware(GreenportalMiddleware, tree=tree), Middleware(Tag)])
        inside = make_app([Middleware(Tag), Middleware(GreenportalMiddleware)])
        async with uvicorn_server(outside) as url, httpx.AsyncClient(base_url=url) as client:
            resp = await client.get("/slow", params={"s": 0})
            if tree:
                assert (resp.status_code, resp.text, resp.headers["x-tag"]) == (200, "done", "1")
            else:
                assert resp.status_code == 500
        async with uvicorn_server(inside) as url, httpx.AsyncClient(base_url=url) as client:
            resp = await client.get("/slow", params={"s": 0})
            assert (resp.status_code, resp.text, resp.headers["x-tag"]) == (200, "done", "1")

    aio_backend.run(main)


def test_without_the_middleware_await_fails(aio_backend: Backend) -> None:
    async def main() -> None:
        async with (
            uvicorn_server(make_app([])) as url,
            httpx.AsyncClient(base_url=url) as client,
        ):
            resp = await client.get("/slow", params={"s": 0})
            assert resp.status_code == 500

    aio_backend.run(main)


def test_hypercorn_on_trio() -> None:
    trio = pytest.importorskip("trio")
    log: list[str] = []

    async def main() -> None:
        app = make_app([Middleware(GreenportalMiddleware)], log)
        async with hypercorn_trio_server(app) as url, httpx.AsyncClient(base_url=url) as client:
            resp = await client.get("/items/3")
            assert resp.status_code == 200, resp.text
            assert resp.json() == {"id": 3, "portal": True}
            assert (await client.get("/items/404")).status_code == 404
            start = time.monotonic()
            results: list[str] = []

            async def one() -> None:
                results.append((await client.get("/slow", params={"s": 0.3})).text)

            async with trio.open_nursery() as nursery:
                for _ in range(8):
                    nursery.start_soon(one)
            assert results == ["done"] * 8
            assert time.monotonic() - start < 8 * 0.3 / 2
        assert log == ["startup portal=False", "shutdown"]

    trio.run(main)


# --- the ASGI app called directly, on every backend ------------------------------


async def call_asgi(app: Any, scope: dict[str, Any], incoming: list[dict[str, Any]]) -> list[Any]:
    """Call an ASGI app as a server would; return the messages it sends."""
    sent: list[Any] = []
    inbox = list(incoming)

    async def receive() -> dict[str, Any]:
        if inbox:
            return inbox.pop(0)
        await anyio.sleep_forever()
        raise AssertionError("unreachable")

    async def send(message: Any) -> None:
        sent.append(message)

    await app(scope, receive, send)
    return sent


def http_scope(path: str, query: bytes = b"") -> dict[str, Any]:
    return {
        "type": "http",
        "asgi": {"version": "3.0"},
        "http_version": "1.1",
        "method": "GET",
        "scheme": "http",
        "path": path,
        "raw_path": path.encode(),
        "query_string": query,
        "root_path": "",
        "headers": [(b"host", b"test")],
        "client": ("127.0.0.1", 1),
        "server": ("127.0.0.1", 80),
    }


def test_direct_asgi_calls_on_every_backend(backend: Backend) -> None:
    log: list[str] = []

    async def main() -> None:
        app = GreenportalMiddleware(make_app([], log))
        lifespan_in = [{"type": "lifespan.startup"}, {"type": "lifespan.shutdown"}]
        lifespan_scope = {"type": "lifespan", "asgi": {"version": "3.0"}, "state": {}}
        request = [{"type": "http.request", "body": b"", "more_body": False}]
        sent = await call_asgi(app, lifespan_scope, lifespan_in)
        assert [m["type"] for m in sent] == [
            "lifespan.startup.complete",
            "lifespan.shutdown.complete",
        ]
        assert log == ["startup portal=False", "shutdown"]

        sent = await call_asgi(app, http_scope("/items/5"), request)
        assert sent[0]["status"] == 200
        assert sent[1]["body"] == b'{"id":5,"portal":true}'
        sent = await call_asgi(app, http_scope("/items/404"), request)
        assert sent[0]["status"] == 404

        # Concurrent requests overlap.
        start = time.monotonic()
        async with anyio.create_task_group() as tg:
            for _ in range(10):
                tg.start_soon(call_asgi, app, http_scope("/slow", b"s=0.2"), request)
        assert time.monotonic() - start < 1.0

        ws_in = [
            {"type": "websocket.connect"},
            {"type": "websocket.receive", "text": "hi"},
            {"type": "websocket.receive", "text": "bye"},
        ]
        ws_scope = {**http_scope("/ws"), "type": "websocket", "subprotocols": []}
        sent = await call_asgi(app, ws_scope, ws_in)
        assert [m["type"] for m in sent] == [
            "websocket.accept",
            "websocket.send",
            "websocket.close",
        ]
        assert sent[1]["text"] == "HI"

    backend.run(main)


def test_tree_gives_tasks_started_by_the_app_portals(backend: Backend) -> None:
    async def app(scope: Any, receive: Any, send: Any) -> None:
        async with anyio.create_task_group() as tg:
            tg.start_soon(lambda: greenportal.with_portal_run_sync(lambda: None))
            results: list[bool] = []

            async def child() -> None:
                results.append(greenportal.has_portal())

            tg.start_soon(child)
        await send({"type": "http.response.start", "status": 200, "headers": []})
        await send({"type": "http.response.body", "body": repr(results).encode()})

    async def main() -> None:
        request = [{"type": "http.request", "body": b""}]
        plain = await call_asgi(GreenportalMiddleware(app), http_scope("/"), request)
        tree = await call_asgi(GreenportalMiddleware(app, tree=True), http_scope("/"), request)
        assert plain[1]["body"] == b"[False]"
        assert tree[1]["body"] == b"[True]"

    backend.run(main)


def test_other_scope_types_pass_through_and_scope_types_is_configurable(
    backend: Backend,
) -> None:
    seen: list[tuple[str, bool]] = []

    async def app(scope: Any, receive: Any, send: Any) -> None:
        seen.append((scope["type"], greenportal.has_portal()))

    async def main() -> None:
        await call_asgi(GreenportalMiddleware(app), {"type": "lifespan"}, [])
        await call_asgi(GreenportalMiddleware(app), {"type": "http"}, [])
        await call_asgi(GreenportalMiddleware(app), {"type": "websocket"}, [])
        only_ws = GreenportalMiddleware(app, scope_types={"websocket"})
        await call_asgi(only_ws, {"type": "http"}, [])
        await call_asgi(only_ws, {"type": "websocket"}, [])

    backend.run(main)
    assert seen == [
        ("lifespan", False),
        ("http", True),
        ("websocket", True),
        ("http", False),
        ("websocket", True),
    ]


def test_bad_arguments_are_refused() -> None:
    with pytest.raises(TypeError, match=r"wraps an ASGI application .*, not int"):
        GreenportalMiddleware(42)  # type: ignore[arg-type]
    with pytest.raises(TypeError, match="not the string 'http'"):
        GreenportalMiddleware(make_app([]), scope_types="http")
    assert "tree=True" in repr(GreenportalMiddleware(make_app([]), tree=True))
