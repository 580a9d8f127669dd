"""greenportal.fastapi and greenportal.starlette against real FastAPI and Starlette.

The apps are called through httpx's ASGI transport on every backend (Trio
included: FastAPI runs on anyio), and served by real uvicorn on every asyncio
configuration.  "Behaves exactly as before" is checked differentially: the
same app is built with FastAPI's ``APIRoute`` and with ``PortalRoute``, the
same requests are made, and everything observable but the thread must match.
"""

from __future__ import annotations

import functools
import threading
from collections.abc import Iterator
from typing import Any

import pytest

import greenportal
from greenportal import await_

from .conftest import Backend

anyio = pytest.importorskip("anyio")
httpx = pytest.importorskip("httpx")
pytest.importorskip("fastapi")

from fastapi import APIRouter, BackgroundTasks, Depends, FastAPI, HTTPException  # noqa: E402
from fastapi.routing import APIRoute  # noqa: E402
from pydantic import BaseModel  # noqa: E402
from starlette.applications import Starlette  # noqa: E402
from starlette.requests import Request  # noqa: E402
from starlette.responses import JSONResponse, PlainTextResponse, Response  # noqa: E402
from starlette.routing import Mount, Route  # noqa: E402

import greenportal.fastapi  # noqa: E402
import greenportal.starlette  # noqa: E402
from greenportal.fastapi import PortalRoute, threadpool  # noqa: E402

from .test_int_asgi import uvicorn_server  # noqa: E402


def where() -> dict[str, Any]:
    """Where the calling sync code runs: the loop's thread? in a portal?"""
    on_loop_thread = threading.get_ident() == LOOP_THREAD[0]
    return {"loop_thread": on_loop_thread, "portal": greenportal.has_portal()}


# The thread running the test's event loop (set by call()).
LOOP_THREAD = [0]


def nap() -> None:
    """A short await through greenportal, as the application's sync layer would make."""
    await_(anyio.sleep(0.001))


async def call(
    backend: Backend,
    app: Any,
    requests: list[tuple[str, str]],
    **client: Any,
) -> list[httpx.Response]:
    LOOP_THREAD[0] = threading.get_ident()
    transport = httpx.ASGITransport(app=app, raise_app_exceptions=False)
    async with httpx.AsyncClient(transport=transport, base_url="http://test", **client) as c:
        return [await c.request(method, url) for method, url in requests]


def run(backend: Backend, app: Any, *requests: str) -> list[httpx.Response]:
    pairs = [tuple(r.split(" ", 1)) if " " in r else ("GET", r) for r in requests]
    return backend.run(call, backend, app, pairs)  # type: ignore[no-any-return]


# --- where code runs -----------------------------------------------------------


def build_where_app(route_class: type[APIRoute]) -> tuple[FastAPI, dict[str, Any]]:
    seen: dict[str, Any] = {}

    def app_dep() -> None:
        nap()
        seen["app_dep"] = where()

    def router_dep() -> None:
        nap()
        seen["router_dep"] = where()

    def sub_dep() -> int:
        nap()
        seen["sub_dep"] = where()
        return 2

    def yield_dep(n: int = Depends(sub_dep)) -> Iterator[int]:
        nap()
        seen["yield_enter"] = where()
        yield n * 10
        nap()
        seen["yield_exit"] = where()

    async def async_dep() -> int:
        seen["async_dep"] = where()
        return 1

    router = APIRouter(route_class=route_class, dependencies=[Depends(router_dep)])

    @router.get("/where")
    def endpoint(v: int = Depends(yield_dep), a: int = Depends(async_dep)) -> dict[str, Any]:
        nap()
        seen["endpoint"] = where()
        return {"v": v + a}

    @router.get("/async")
    async def async_endpoint(a: int = Depends(async_dep)) -> dict[str, Any]:
        seen["async_endpoint"] = where()
        return {"a": a}

    app = FastAPI(dependencies=[Depends(app_dep)])
    app.include_router(router, prefix="/r")
    return app, seen


def test_def_endpoint_and_dependencies_run_on_the_loop_in_a_portal(backend: Backend) -> None:
    app, seen = build_where_app(PortalRoute)
    first, second = run(backend, app, "/r/where", "/r/async")
    assert first.status_code == 200, first.text
    assert first.json() == {"v": 21}
    assert second.json() == {"a": 1}
    on_loop = {"loop_thread": True, "portal": True}
    for name in ("app_dep", "router_dep", "sub_dep", "yield_enter", "yield_exit", "endpoint"):
        assert seen[name] == on_loop, name
    # async code runs as it would, on the loop; in a route with sync parts
    # the whole request runs in one portal, made before the first sync call
    assert seen["async_dep"] == seen["async_endpoint"] == on_loop


def test_route_with_nothing_sync_gets_no_portal(backend: Backend) -> None:
    seen: dict[str, Any] = {}

    async def async_dep() -> int:
        seen["dep"] = where()
        return 1

    async def async_yield_dep() -> Any:
        yield 2

    router = APIRouter(route_class=PortalRoute)

    @router.get("/only-async")
    async def endpoint(a: int = Depends(async_dep), b: int = Depends(async_yield_dep)) -> int:
        seen["endpoint"] = where()
        return a + b

    app = FastAPI()
    app.include_router(router)
    (response,) = run(backend, app, "/only-async")
    assert response.json() == 3
    assert seen["dep"] == seen["endpoint"] == {"loop_thread": True, "portal": False}


def test_override_with_a_def_function_runs_in_a_portal(backend: Backend) -> None:
    """A route built all-async, whose dependency is overridden by a def one."""

    async def async_dep() -> dict[str, Any]:
        return {"overridden": False}

    def sync_override() -> dict[str, Any]:
        nap()
        return {"overridden": True, **where()}

    router = APIRouter(route_class=PortalRoute)

    @router.get("/o")
    async def endpoint(d: dict[str, Any] = Depends(async_dep)) -> dict[str, Any]:
        return d

    app = FastAPI()
    app.include_router(router)
    app.dependency_overrides[async_dep] = sync_override
    (response,) = run(backend, app, "/o")
    assert response.json() == {"overridden": True, "loop_thread": True, "portal": True}


def test_plain_apiroute_still_threads_the_same_app(backend: Backend) -> None:
    app, seen = build_where_app(APIRoute)
    (response,) = run(backend, app, "/r/where")
    assert response.json() == {"v": 21}
    for name in ("app_dep", "router_dep", "sub_dep", "yield_enter", "yield_exit", "endpoint"):
        assert seen[name]["loop_thread"] is False, name


def test_route_class_set_on_the_app_router(backend: Backend) -> None:
    app = FastAPI()
    app.router.route_class = PortalRoute

    @app.get("/")
    def index() -> dict[str, Any]:
        nap()
        return where()

    (response,) = run(backend, app, "/")
    assert response.json() == {"loop_thread": True, "portal": True}
    assert any(isinstance(r, PortalRoute) for r in app.router.routes)


def test_survives_nested_include_router(backend: Backend) -> None:
    inner = APIRouter(route_class=PortalRoute)

    @inner.get("/leaf")
    def leaf() -> dict[str, Any]:
        nap()
        return where()

    middle = APIRouter()  # a default route class in between
    middle.include_router(inner, prefix="/inner")
    app = FastAPI()
    app.include_router(middle, prefix="/middle")
    (response,) = run(backend, app, "/middle/inner/leaf")
    assert response.json() == {"loop_thread": True, "portal": True}


def test_requests_wait_together_beyond_the_thread_pool(backend: Backend) -> None:
    """More requests wait in await_ at once than the thread pool has threads."""
    waiting = 60
    arrived: list[int] = []
    state: dict[str, Any] = {}

    def rendezvous() -> None:
        # Every request waits until all of them are waiting: with a thread
        # per waiting request this would need 60 threads; anyio has 40.
        arrived.append(1)
        if len(arrived) == waiting:
            state["event"].set()
        await_(state["event"].wait())

    router = APIRouter(route_class=PortalRoute)

    @router.get("/meet")
    def meet() -> str:
        rendezvous()
        return "met"

    app = FastAPI()
    app.include_router(router)

    async def main() -> list[int]:
        state["event"] = anyio.Event()
        assert waiting > anyio.to_thread.current_default_thread_limiter().total_tokens
        LOOP_THREAD[0] = threading.get_ident()
        codes: list[int] = []
        transport = httpx.ASGITransport(app=app)
        async with httpx.AsyncClient(transport=transport, base_url="http://test") as client:

            async def one() -> None:
                codes.append((await client.get("/meet")).status_code)

            with anyio.fail_after(20):
                async with anyio.create_task_group() as tg:
                    for _ in range(waiting):
                        tg.start_soon(one)
        return codes

    assert backend.run(main) == [200] * waiting


# --- the way back to the thread pool -------------------------------------------


def test_threadpool_marks_run_in_worker_threads_where_await_still_works(backend: Backend) -> None:
    seen: dict[str, Any] = {}

    @threadpool
    def blocking_dep() -> int:
        nap()  # await_ from a worker thread hops back to the loop
        seen["dep"] = where()
        return 5

    router = APIRouter(route_class=PortalRoute)

    @router.get("/blocking")
    @threadpool
    def blocking(n: int = Depends(blocking_dep)) -> int:
        nap()
        seen["endpoint"] = where()
        return n

    @router.get("/mixed")
    def mixed(n: int = Depends(blocking_dep)) -> int:
        seen["mixed"] = where()
        return n

    app = FastAPI()
    app.include_router(router)
    first, second = run(backend, app, "/blocking", "/mixed")
    assert first.json() == second.json() == 5
    assert seen["dep"] == seen["endpoint"] == {"loop_thread": False, "portal": False}
    assert seen["mixed"] == {"loop_thread": True, "portal": True}


def test_threadpool_returns_the_function_and_rejects_bad_input() -> None:
    def fn() -> None: ...

    assert threadpool(fn) is fn
    assert greenportal.starlette.wants_threadpool(functools.partial(fn))

    async def coro_fn() -> None: ...

    with pytest.raises(TypeError, match="is async"):
        threadpool(coro_fn)
    with pytest.raises(TypeError, match="not callable"):
        threadpool(42)  # type: ignore[type-var]

    class Slotted:
        __slots__ = ()

        def __call__(self) -> None: ...

    with pytest.raises(TypeError, match="takes no attributes"):
        threadpool(Slotted())


# --- behaves exactly as before -------------------------------------------------


class Item(BaseModel):
    name: str
    price: float


def build_behaviour_app(route_class: type[APIRoute]) -> tuple[FastAPI, list[str]]:
    """One app with the features whose behaviour must not change."""
    log: list[str] = []

    def counted() -> str:
        log.append("counted")
        return "c"

    def uncached() -> str:
        log.append("uncached")
        return "u"

    def overridden() -> str:
        return "original"

    def guarded(ok: bool = True) -> None:
        if not ok:
            raise HTTPException(status_code=403, detail="not ok")

    def session() -> Iterator[str]:
        log.append("session open")
        try:
            yield "s"
        except HTTPException as exc:
            log.append(f"session saw {exc.status_code}")
            raise
        finally:
            log.append("session closed")

    def note(text: str) -> None:
        log.append(f"background {text}")

    router = APIRouter(route_class=route_class)

    @router.get("/deps")
    def deps(
        *,
        a: str = Depends(counted),
        b: str = Depends(counted),
        c: str = Depends(uncached, use_cache=False),
        d: str = Depends(uncached, use_cache=False),
        e: str = Depends(overridden),
        s: str = Depends(session),
        _: None = Depends(guarded),
    ) -> str:
        return a + b + c + d + e + s

    @router.get("/fail")
    def fail(s: str = Depends(session)) -> None:
        raise HTTPException(status_code=409, detail="conflict")

    @router.post("/items", response_model=Item, status_code=201)
    def create(item: Item, tasks: BackgroundTasks, discount: float = 0) -> Any:
        tasks.add_task(note, item.name)
        return {"name": item.name, "price": item.price - discount, "secret": "dropped"}

    @router.get("/invalid", response_model=Item)
    def invalid() -> Any:
        return {"name": "x"}  # no price: a response validation error

    @router.get("/custom")
    def custom() -> Response:
        return PlainTextResponse("plain", headers={"x-custom": "1"})

    app = FastAPI()

    def override() -> str:
        return "override"

    app.dependency_overrides[overridden] = override
    app.include_router(router)
    return app, log


BEHAVIOUR_REQUESTS = [
    "/deps",
    "/deps?ok=false",
    "/deps?ok=notabool",
    "/fail",
    "/invalid",
    "/custom",
    "/missing",
]


def test_behaviour_matches_apiroute(backend: Backend) -> None:
    results = {}
    for route_class in (APIRoute, PortalRoute):
        app, log = build_behaviour_app(route_class)

        async def main(app: Any = app) -> list[Any]:
            LOOP_THREAD[0] = threading.get_ident()
            transport = httpx.ASGITransport(app=app, raise_app_exceptions=False)
            async with httpx.AsyncClient(transport=transport, base_url="http://t") as client:
                out = []
                for url in BEHAVIOUR_REQUESTS:
                    r = await client.get(url)
                    out.append((url, r.status_code, r.text, r.headers.get("x-custom")))
                r = await client.post("/items?discount=1", json={"name": "pear", "price": 3})
                out.append(("post", r.status_code, r.json()))
                r = await client.post("/items", json={"name": "pear"})
                out.append(("post bad", r.status_code, r.json()))
                return out

        results[route_class] = (backend.run(main), log, app.openapi())
    before, after = results[APIRoute], results[PortalRoute]
    assert after[0] == before[0]
    assert after[1] == before[1]
    assert after[2] == before[2]  # the OpenAPI schema
    # and what the app did is what it should do, not only the same twice:
    statuses = [entry[1] for entry in before[0]]
    assert statuses == [200, 403, 422, 409, 500, 200, 404, 201, 422]
    assert before[0][0][2] == '"ccuuoverrides"'
    # three requests reach /deps: the cached dependency runs once in each,
    # the uncached one twice in each
    assert (before[1].count("counted"), before[1].count("uncached")) == (3, 6)
    assert "session saw 409" in before[1]
    assert before[0][-2][2] == {"name": "pear", "price": 2.0}
    assert "background pear" in before[1]


# --- cancellation ----------------------------------------------------------------


def test_cancelled_request_runs_yield_dependency_cleanup(backend: Backend) -> None:
    log: list[str] = []

    def resource() -> Iterator[str]:
        log.append("open")
        try:
            yield "r"
        except BaseException as exc:
            log.append(f"saw {type(exc).__name__}")
            raise
        finally:
            nap()  # the cleanup may itself await: the exit is shielded
            log.append("closed")

    router = APIRouter(route_class=PortalRoute)

    @router.get("/slow")
    def slow(r: str = Depends(resource)) -> str:
        log.append("waiting")
        await_(anyio.sleep(30))
        log.append("not reached")
        return r

    app = FastAPI()
    app.include_router(router)

    async def main() -> None:
        transport = httpx.ASGITransport(app=app)
        async with httpx.AsyncClient(transport=transport, base_url="http://t") as client:
            with anyio.move_on_after(0.2) as scope:
                await client.get("/slow")
            assert scope.cancelled_caught

    backend.run(main)
    assert log[:2] == ["open", "waiting"]
    assert "not reached" not in log
    assert log[-1] == "closed"
    assert log[2] in {"saw CancelledError", "saw Cancelled"}


# --- a real server -----------------------------------------------------------------


def test_uvicorn_serves_portal_routes_concurrently(aio_backend: Backend) -> None:
    router = APIRouter(route_class=PortalRoute)

    def db_call() -> int:
        await_(anyio.sleep(0.2))
        return 1

    @router.get("/wait")
    def wait(n: int = Depends(db_call)) -> dict[str, Any]:
        await_(anyio.sleep(0.2))
        return {"n": n, **where()}

    app = FastAPI()
    app.include_router(router)

    async def main() -> tuple[list[Any], float]:
        LOOP_THREAD[0] = threading.get_ident()
        async with uvicorn_server(app) as url, httpx.AsyncClient(base_url=url) as client:
            start = anyio.current_time()
            results: list[Any] = []

            async def one() -> None:
                results.append((await client.get("/wait")).json())

            async with anyio.create_task_group() as tg:
                for _ in range(20):
                    tg.start_soon(one)
            return results, anyio.current_time() - start

    results, elapsed = aio_backend.run(main)
    assert results == [{"n": 1, "loop_thread": True, "portal": True}] * 20
    assert elapsed < 2.0  # 20 requests of 0.4 s each, overlapping


# --- greenportal.starlette -----------------------------------------------------------


def test_starlette_portal_route(backend: Backend) -> None:
    seen: dict[str, Any] = {}

    def sync_endpoint(request: Request) -> Response:
        nap()
        seen["sync"] = where()
        return JSONResponse({"url": str(request.url_for("sync_endpoint"))})

    async def async_endpoint(request: Request) -> Response:
        seen["async"] = where()
        return PlainTextResponse("a")

    @greenportal.starlette.threadpool
    def threaded(request: Request) -> Response:
        nap()
        seen["threaded"] = where()
        return PlainTextResponse("t")

    def with_arg(request: Request, word: str) -> Response:
        nap()
        seen["partial"] = where()
        return PlainTextResponse(word)

    partial = functools.partial(with_arg, word="hello")
    routes = [
        greenportal.starlette.PortalRoute("/sync", sync_endpoint),
        greenportal.starlette.PortalRoute("/async", async_endpoint),
        greenportal.starlette.PortalRoute("/threaded", threaded),
        Mount("/m", routes=[greenportal.starlette.PortalRoute("/partial", partial, name="p")]),
    ]
    app = Starlette(routes=routes)
    responses = run(backend, app, "/sync", "/async", "/threaded", "/m/partial")
    assert [r.status_code for r in responses] == [200] * 4
    assert responses[0].json() == {"url": "http://test/sync"}
    assert responses[3].text == "hello"
    on_loop = {"loop_thread": True, "portal": True}
    assert seen["sync"] == seen["partial"] == on_loop
    assert seen["async"] == {"loop_thread": True, "portal": False}
    assert seen["threaded"] == {"loop_thread": False, "portal": False}
    # the route is the one Route would build
    assert routes[0].endpoint is sync_endpoint
    assert routes[0].name == Route("/sync", sync_endpoint).name == "sync_endpoint"
    assert routes[0].methods == Route("/sync", sync_endpoint).methods
