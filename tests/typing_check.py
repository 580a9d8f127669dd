"""Static type checks of the public API (run by mypy --strict; never executed).

Each ``assert_type`` pins what a caller's type checker sees: decorators and
the with_portal_run* family keep the wrapped function's parameter and return
types.  Lines marked ``type: ignore[...]`` must stay errors (mypy's
warn_unused_ignores fails the run if they stop being errors).
"""

from __future__ import annotations

import asyncio
import concurrent.futures
import contextlib
import functools
from collections.abc import AsyncGenerator, AsyncIterator, Coroutine, Generator
from typing import TYPE_CHECKING, Any

import greenportal

if TYPE_CHECKING:
    from typing_extensions import assert_type


async def fetch(user_id: int, *, verbose: bool = False) -> str:
    return str(user_id)


def load(user_id: int) -> list[int]:
    return [user_id]


async def agen() -> AsyncIterator[int]:
    yield 1


async def check() -> None:
    assert_type(greenportal.await_(fetch(1)), str)
    assert_type(await greenportal.with_portal_run(fetch, 1, verbose=True), str)
    assert_type(await greenportal.with_portal_run_sync(load, 1), list[int])
    assert_type(await greenportal.with_portal_run_tree(fetch, 2), str)
    await greenportal.with_portal_run(fetch, "x")  # type: ignore[arg-type]
    await greenportal.with_portal_run_sync(load, 1, 2)  # type: ignore[call-arg]

    sync_fetch = greenportal.autoawait(fetch)
    assert_type(sync_fetch(3, verbose=False), str)
    sync_fetch("3")  # type: ignore[arg-type]

    as_portal = greenportal.portal(load)
    assert_type(await as_portal(1), list[int])
    assert_type(await greenportal.portal(fetch)(1), str)

    cached = greenportal.decorate_as_sync(functools.lru_cache(maxsize=8))(fetch)
    _: Coroutine[Any, Any, Any] = cached(1)
    await _

    for item in greenportal.async_iter(agen()):
        assert_type(item, int)
    assert_type(greenportal.has_portal(), bool)


async def gen_with_send(start: int) -> AsyncGenerator[str, float]:
    got = yield str(start)
    yield str(got)


class Client:
    async def get(self, key: str) -> bytes:
        return key.encode()

    async def __aenter__(self) -> Client:
        return self

    async def __aexit__(self, *exc_info: object) -> None:
        return None


def check_blocking() -> None:
    sync_fetch = greenportal.blocking(fetch)
    assert_type(sync_fetch(1, verbose=True), str)
    assert_type(greenportal.await_(sync_fetch.aio(2)), str)
    sync_fetch("1")  # type: ignore[arg-type]
    sync_fetch(1, loud=True)  # type: ignore[call-arg]

    sync_gen = greenportal.blocking(gen_with_send)
    gen = sync_gen(1)
    assert_type(gen, Generator[str, float, None])
    assert_type(gen.send(2.0), str)
    gen.send("x")  # type: ignore[arg-type]
    for text in greenportal.blocking(agen)():
        assert_type(text, int)

    client_cls = greenportal.blocking(Client)
    client = client_cls()
    assert_type(client.aio, Client)
    with client as entered:
        _ = entered

    assert_type(sync_fetch.submit(1), greenportal.BlockingFuture[str])
    assert_type(sync_fetch.submit(1).result(), str)
    sync_fetch.submit("1")  # type: ignore[arg-type]
    pinned = greenportal.blocking(fetch, runner=greenportal.default_runner())
    assert_type(pinned(1), str)
    decorate = greenportal.blocking(runner=greenportal.default_runner())
    assert_type(decorate(fetch)(1), str)


def check_async_context(cm: contextlib.AbstractAsyncContextManager[int]) -> None:
    # The type parameter binds: no annotation needed on the target.
    with greenportal.async_context(cm) as value:
        assert_type(value, int)


def check_runner_and_threads(runner: greenportal.Runner) -> None:
    assert_type(runner.run(fetch(1)), str)
    assert_type(runner.run(fetch, 1, verbose=True), str)
    runner.run(fetch, "1")  # type: ignore[call-overload]
    assert_type(runner.submit(fetch, 1), concurrent.futures.Future[str])
    for item in runner.wrap_iter(agen()):
        assert_type(item, int)
    assert_type(greenportal.default_runner(), greenportal.Runner)
    assert_type(greenportal.set_default_runner(runner), greenportal.Runner | None)
    greenportal.set_default_runner("trio")  # type: ignore[arg-type]
    assert_type(runner.__exit__(None, None, None), bool)


async def check_to_thread() -> None:
    assert_type(await greenportal.to_thread(load, 1), list[int])
    await greenportal.to_thread(load, "1")  # type: ignore[arg-type]
    threaded = greenportal.asyncify(load)
    assert_type(await threaded(2), list[int])
    limited = greenportal.asyncify(limiter=greenportal.ThreadLimiter(2))(load)
    assert_type(await limited(2), list[int])
    task = asyncio.create_task(threaded(3))  # a coroutine, so tasks can run it
    assert_type(await task, list[int])
    assert_type(greenportal.default_thread_limiter(), greenportal.ThreadLimiter)
    await greenportal.to_thread(42)  # type: ignore[arg-type]
    greenportal.ThreadLimiter(1.5)  # type: ignore[arg-type]
    greenportal.asyncify(load, limiter=4)  # type: ignore[call-overload]


def check_fastapi_routes() -> None:
    from fastapi import APIRouter
    from starlette.requests import Request
    from starlette.responses import PlainTextResponse

    import greenportal.fastapi
    import greenportal.starlette

    router = APIRouter(route_class=greenportal.fastapi.PortalRoute)
    blocking_load = greenportal.fastapi.threadpool(load)  # the function itself, typed as it was
    assert_type(blocking_load(1), list[int])
    blocking_load("1")  # type: ignore[arg-type]
    router.add_api_route("/load/{user_id}", blocking_load)

    def endpoint(request: Request) -> PlainTextResponse:
        return PlainTextResponse("ok")

    route = greenportal.starlette.PortalRoute("/", endpoint)
    assert_type(route, greenportal.starlette.PortalRoute)
    greenportal.starlette.threadpool(42)  # type: ignore[type-var]
