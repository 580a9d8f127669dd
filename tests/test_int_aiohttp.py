"""greenportal.aiohttp: real aiohttp servers on loopback, driven by a real aiohttp client.

Every asyncio configuration (aiohttp is asyncio-only); the database calls go
to aiosqlite and to asyncpg on a throwaway PostgreSQL cluster.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import AsyncIterator, Awaitable, Callable
from contextlib import asynccontextmanager
from pathlib import Path
from typing import Any

import pytest

from greenportal import await_

from .conftest import Backend

aiohttp = pytest.importorskip("aiohttp")

from aiohttp import web  # noqa: E402
from aiohttp.test_utils import TestClient, TestServer  # noqa: E402

import greenportal.aiohttp  # noqa: E402
from greenportal.aiohttp import portal_middleware, portal_tree_middleware  # noqa: E402

# --- a sync application layer, as the handlers would call it -----------------


class Database:
    """A tiny DB facade whose methods are sync and use await_ underneath."""

    def __init__(self, fetchval: Callable[[str, int], Awaitable[Any]]) -> None:
        self._fetchval = fetchval

    def double(self, x: int) -> int:
        return int(await_(self._fetchval("double", x)))


def lookup_item(db: Database, item_id: int) -> dict[str, Any]:
    if item_id < 0:
        raise web.HTTPNotFound(text=f"no item {item_id}")
    if item_id == 13:
        raise ValueError("unlucky")
    await_(asyncio.sleep(0.01))
    return {"id": item_id, "double": db.double(item_id)}


def slow_sync_work(seconds: float) -> str:
    await_(asyncio.sleep(seconds))
    return "done"


@asynccontextmanager
async def open_database(kind: str, tmp_path: Path, dsn: str | None) -> AsyncIterator[Database]:
    if kind == "asyncpg":
        import asyncpg

        assert dsn is not None
        pool = await asyncpg.create_pool(dsn, min_size=1, max_size=5)
        try:

            async def pg_double(_: str, x: int) -> Any:
                return await pool.fetchval("SELECT $1::int * 2", x)

            yield Database(pg_double)
        finally:
            await pool.close()
    else:
        import aiosqlite

        async with aiosqlite.connect(tmp_path / "db.sqlite") as conn:

            async def sqlite_double(_: str, x: int) -> Any:
                async with conn.execute("SELECT ? * 2", (x,)) as cursor:
                    row = await cursor.fetchone()
                    assert row is not None
                    return row[0]

            yield Database(sqlite_double)


def make_app(db: Database | None, middlewares: list[Any]) -> web.Application:
    routes = web.RouteTableDef()

    @routes.get("/items/{item_id}")
    async def item(request: web.Request) -> web.Response:
        assert db is not None
        return web.json_response(lookup_item(db, int(request.match_info["item_id"])))

    @routes.get("/slow")
    async def slow(request: web.Request) -> web.Response:
        return web.Response(text=slow_sync_work(float(request.query["s"])))

    @routes.get("/spawn")
    async def spawn(request: web.Request) -> web.Response:
        # A task started by the handler: it has a portal only under the tree middleware.
        async def child() -> str:
            return slow_sync_work(0)

        try:
            return web.Response(text=await asyncio.ensure_future(child()))
        except RuntimeError as error:
            return web.Response(status=500, text=str(error))

    @routes.get("/ws")
    async def ws(request: web.Request) -> web.WebSocketResponse:
        sock = web.WebSocketResponse()
        await sock.prepare(request)
        echo_sync(sock)
        await sock.close()
        return sock

    app = web.Application(middlewares=middlewares)
    app.add_routes(routes)
    return app


def echo_sync(sock: web.WebSocketResponse) -> None:
    """Plain sync code that talks over a websocket."""
    while True:
        text = await_(sock.receive_str())
        if text == "bye":
            return
        await_(sock.send_str(text.upper()))


@asynccontextmanager
async def serve(app: web.Application, **kwargs: Any) -> AsyncIterator[str]:
    """Serve *app* on a free 127.0.0.1 port; yield its base URL."""
    runner = web.AppRunner(app, handle_signals=False, **kwargs)
    await runner.setup()
    try:
        site = web.TCPSite(runner, "127.0.0.1", 0)
        await site.start()
        host, port = runner.addresses[0][:2]
        yield f"http://{host}:{port}"
    finally:
        await runner.cleanup()


@pytest.fixture(params=["aiosqlite", "asyncpg"])
def db_kind(request: pytest.FixtureRequest) -> tuple[str, str | None]:
    if request.param == "asyncpg":
        pytest.importorskip("asyncpg")
        return "asyncpg", request.getfixturevalue("postgres_dsn")
    pytest.importorskip("aiosqlite")
    return "aiosqlite", None


# --- tests ---------------------------------------------------------------------


def test_handlers_call_sync_code_that_awaits(
    aio_backend: Backend, db_kind: tuple[str, str | None], tmp_path: Path
) -> None:
    kind, dsn = db_kind

    async def main() -> None:
        async with (
            open_database(kind, tmp_path, dsn) as db,
            serve(make_app(db, [portal_middleware])) as url,
            aiohttp.ClientSession() as client,
        ):
            async with client.get(f"{url}/items/21") as resp:
                assert resp.status == 200, await resp.text()
                assert await resp.json() == {"id": 21, "double": 42}
            async with client.get(f"{url}/items/-1") as resp:
                assert resp.status == 404
                assert await resp.text() == "no item -1"
            async with client.get(f"{url}/items/13") as resp:
                assert resp.status == 500  # ValueError from sync code: aiohttp's 500
            # Concurrent requests, each waiting in sync code, all through the DB.
            bodies = await asyncio.gather(
                *(_get_json(client, f"{url}/items/{i}") for i in range(20, 40))
            )
            assert bodies == [{"id": i, "double": 2 * i} for i in range(20, 40)]

    aio_backend.run(main)


async def _get_json(client: Any, url: str) -> Any:
    async with client.get(url) as resp:
        assert resp.status == 200, await resp.text()
        return await resp.json()


def test_requests_overlap_and_the_loop_keeps_running(aio_backend: Backend) -> None:
    n, pause = 10, 0.3

    async def main() -> None:
        ticks = 0

        async def ticker() -> None:
            nonlocal ticks
            while True:
                await asyncio.sleep(0.01)
                ticks += 1

        async with (
            serve(make_app(None, [portal_middleware])) as url,
            aiohttp.ClientSession() as client,
        ):
            tick_task = asyncio.ensure_future(ticker())
            start = time.monotonic()

            async def one() -> str:
                async with client.get(f"{url}/slow", params={"s": str(pause)}) as resp:
                    assert resp.status == 200
                    return str(await resp.text())

            results = await asyncio.gather(*(one() for _ in range(n)))
            elapsed = time.monotonic() - start
            tick_task.cancel()
        assert results == ["done"] * n
        assert elapsed < n * pause / 2, f"requests did not overlap ({elapsed:.2f}s)"
        assert ticks >= 10, f"the loop was blocked ({ticks} ticks)"

    aio_backend.run(main)


def test_without_the_middleware_await_fails_clearly(aio_backend: Backend) -> None:
    async def main() -> None:
        async with (
            serve(make_app(None, [])) as url,
            aiohttp.ClientSession() as client,
        ):
            async with client.get(f"{url}/slow", params={"s": "0"}) as resp:
                assert resp.status == 500

    aio_backend.run(main)


@pytest.mark.parametrize("tree", [False, True])
def test_tasks_started_by_handlers_get_portals_only_with_tree(
    aio_backend: Backend, tree: bool
) -> None:
    async def main() -> None:
        app = make_app(None, [])
        greenportal.aiohttp.setup(app, tree=tree)
        async with serve(app) as url, aiohttp.ClientSession() as client:
            async with client.get(f"{url}/spawn") as resp:
                text = await resp.text()
                if tree:
                    assert (resp.status, text) == (200, "done")
                else:
                    assert resp.status == 500
                    assert "needs a portal" in text

    aio_backend.run(main)


def test_websocket_handler_runs_sync_code(aio_backend: Backend) -> None:
    async def main() -> None:
        async with (
            serve(make_app(None, [portal_middleware])) as url,
            aiohttp.ClientSession() as client,
            client.ws_connect(f"{url}/ws") as ws,
        ):
            for word in ["abc", "greenportal"]:
                await ws.send_str(word)
                assert await ws.receive_str() == word.upper()
            await ws.send_str("bye")
            msg = await ws.receive()
            assert msg.type == aiohttp.WSMsgType.CLOSE

    aio_backend.run(main)


def test_with_aiohttp_test_utilities(aio_backend: Backend) -> None:
    async def main() -> None:
        app = make_app(None, [])
        greenportal.aiohttp.setup(app)
        async with TestClient(TestServer(app)) as client:
            resp = await client.get("/slow", params={"s": "0.01"})
            assert resp.status == 200
            assert await resp.text() == "done"

    aio_backend.run(main)


def test_setup_puts_the_middleware_first_once_and_checks_its_input() -> None:
    @web.middleware
    async def other(request: web.Request, handler: Any) -> web.StreamResponse:
        return await handler(request)

    app = web.Application(middlewares=[other])
    greenportal.aiohttp.setup(app)
    greenportal.aiohttp.setup(app)
    greenportal.aiohttp.setup(app, tree=True)  # already set up: unchanged
    assert list(app.middlewares) == [portal_middleware, other]

    with pytest.raises(TypeError, match=r"needs an aiohttp.web.Application, not dict"):
        greenportal.aiohttp.setup({})  # type: ignore[arg-type]

    frozen = web.Application()
    frozen.freeze()
    with pytest.raises(RuntimeError, match="already started"):
        greenportal.aiohttp.setup(frozen)


def test_middleware_is_free_when_the_task_already_has_a_portal(aio_backend: Backend) -> None:
    """Nested use (say, the middleware twice) gives the same task portal."""

    async def main() -> None:
        app = make_app(None, [portal_middleware, portal_tree_middleware])
        async with serve(app) as url, aiohttp.ClientSession() as client:
            async with client.get(f"{url}/slow", params={"s": "0"}) as resp:
                assert (resp.status, await resp.text()) == (200, "done")

    aio_backend.run(main)


def test_client_disconnect_cancels_the_sync_code(aio_backend: Backend) -> None:
    """With handler_cancellation, a dropped client cancels the handler inside await_."""
    log: list[str] = []

    def stuck() -> None:
        try:
            await_(asyncio.sleep(30))
        finally:
            log.append("sync finally")

    async def main() -> None:
        entered = asyncio.Event()

        async def handler(request: web.Request) -> web.Response:
            entered.set()
            stuck()
            return web.Response(text="unreachable")

        app = web.Application(middlewares=[portal_middleware])
        app.router.add_get("/stuck", handler)
        async with serve(app, handler_cancellation=True) as url:
            async with aiohttp.ClientSession() as client:
                request = asyncio.ensure_future(client.get(f"{url}/stuck"))
                await asyncio.wait_for(entered.wait(), 10)
                request.cancel()  # the client goes away
                with pytest.raises(asyncio.CancelledError):
                    await request
            deadline = time.monotonic() + 10
            while not log and time.monotonic() < deadline:
                await asyncio.sleep(0.01)

    aio_backend.run(main)
    assert log == ["sync finally"]
