"""The aiohttp service: the same customer summary served by every variant.

``GET /<variant>/customers/<id>/summary`` returns the summary as JSON (404 for
an unknown customer); ``GET /_stats`` returns the server's CPU time, request
counts and the longest event-loop stall since the previous ``/_stats`` (the
demo and the macro benchmark read it); ``GET /`` lists the variants.

Run it on its own with ``python -m app.server`` (with ``examples/`` on
``sys.path``); it prints one JSON line ``{"port": ..., "database": ...}`` on
standard output once it is serving, and stops on SIGTERM or Ctrl-C.
"""

from __future__ import annotations

import argparse
import asyncio
import functools
import json
import os
import signal
import socket
import sys
import time
from collections.abc import AsyncIterator, Awaitable, Callable
from dataclasses import dataclass, field
from typing import Any

from aiohttp import web
from aiohttp.typedefs import Handler

import greenportal
import greenportal.aiohttp
from app.drivers import (
    DatabaseError,
    PostgresDriver,
    SqliteDriver,
    check_dsn,
    create_schema,
    new_sqlite_path,
    open_driver,
    remove_sqlite,
)
from app.facade import Database, LoopHop, LoopThread
from app.native import AsyncCustomerService
from app.services import CustomerNotFound, CustomerService

# The four ways of running the sync layer that the demo compares.
VARIANTS = ("native", "portal", "loop-thread", "threadpool")
# Other libraries' greenlet bridges, for the macro benchmark.
PEERS = ("greenback", "sqlalchemy")
DESCRIPTIONS = {
    "native": "the layer rewritten with async/await (the reference)",
    "portal": "sync layer; greenportal.aiohttp middleware, greenportal.await_ in the facade",
    "loop-thread": "sync layer on the serving loop; the facade blocks on a 2nd loop in a thread",
    "threadpool": "sync layer in the default thread pool; the facade hops back to the loop",
    "greenback": "sync layer; greenback.with_portal_run middleware, greenback.await_",
    "sqlalchemy": "sync layer; sqlalchemy.util.greenlet_spawn per request, await_only",
}

Summary = dict[str, Any]


class LagMonitor:
    """Wakes up every *period* seconds and keeps the worst lateness: the longest stall.

    A loop that is blocked (by the loop-thread variant's facade, say) cannot
    wake this task up on time; a loop that only runs tasks barely delays it.
    """

    def __init__(self, period: float = 0.005) -> None:
        self.period = period
        self.worst = 0.0

    async def run(self) -> None:
        loop = asyncio.get_running_loop()
        while True:
            due = loop.time() + self.period
            await asyncio.sleep(self.period)
            self.worst = max(self.worst, loop.time() - due)

    def take(self) -> float:
        """The worst stall since the last take(), in seconds; starts over."""
        worst, self.worst = self.worst, 0.0
        return worst


@dataclass
class State:
    """What the handlers share: the drivers and, per variant, its sync facade."""

    loop: asyncio.AbstractEventLoop
    driver: SqliteDriver | PostgresDriver
    facades: dict[str, Database] = field(default_factory=dict)
    counts: dict[str, int] = field(default_factory=dict)
    lag: LagMonitor = field(default_factory=LagMonitor)


STATE: web.AppKey[State] = web.AppKey("state")
# On each variant's sub-application: how it turns a customer id into a summary.
SUMMARY: web.AppKey[Callable[[State, int], Awaitable[Summary]]] = web.AppKey("summary")
VARIANT: web.AppKey[str] = web.AppKey("variant")


# -- the variants ---------------------------------------------------------------
#
# Each variant is a sub-application mounted at /<variant>/ with the same
# handler; what differs is its SUMMARY function and, for the portal variants,
# a middleware.  The sync variants' SUMMARY is literally the same function:
# only the facade's bridge (and the portal middleware) tells them apart.


async def native_summary(state: State, customer_id: int) -> Summary:
    return await AsyncCustomerService(state.driver).summary(customer_id)


def sync_summary(variant: str) -> Callable[[State, int], Awaitable[Summary]]:
    """Call the sync layer right here in the handler (portal, loop-thread, greenback)."""

    async def summary(state: State, customer_id: int) -> Summary:
        return CustomerService(state.facades[variant]).summary(customer_id)

    return summary


def threadpool_summary(state: State, customer_id: int) -> Awaitable[Summary]:
    service = CustomerService(state.facades["threadpool"])
    return state.loop.run_in_executor(None, service.summary, customer_id)


def sqlalchemy_summary(state: State, customer_id: int) -> Awaitable[Summary]:
    from sqlalchemy.util import greenlet_spawn

    service = CustomerService(state.facades["sqlalchemy"])
    return greenlet_spawn(service.summary, customer_id)


@web.middleware
async def greenback_middleware(request: web.Request, handler: Handler) -> web.StreamResponse:
    """greenback's equivalent of greenportal.aiohttp's middleware."""
    import greenback

    response: web.StreamResponse = await greenback.with_portal_run(handler, request)
    return response


def _greenback_await(coro: Any) -> Any:
    import greenback

    return greenback.await_(coro)


def _sqlalchemy_await(coro: Any) -> Any:
    from sqlalchemy import util as sa_util

    # await_only was renamed await_ in SQLAlchemy 2.1 (the old name stays as an alias).
    await_only = getattr(sa_util, "await_only", None) or sa_util.await_
    return await_only(coro)


def variant_app(variant: str) -> web.Application:
    """The sub-application serving *variant*."""
    sub = web.Application()
    sub[VARIANT] = variant
    if variant == "native":
        sub[SUMMARY] = native_summary
    elif variant in ("portal", "loop-thread", "greenback"):
        sub[SUMMARY] = sync_summary(variant)
    elif variant == "threadpool":
        sub[SUMMARY] = threadpool_summary
    elif variant == "sqlalchemy":
        sub[SUMMARY] = sqlalchemy_summary
    else:
        raise ValueError(f"unknown variant {variant!r}; known: {', '.join((*VARIANTS, *PEERS))}")
    if variant == "portal":
        greenportal.aiohttp.setup(sub)  # every handler of this sub-app runs with a portal
    elif variant == "greenback":
        sub.middlewares.append(greenback_middleware)
    sub.router.add_get("/customers/{customer_id}/summary", summary_handler)
    return sub


def facade_for(
    variant: str, state: State, side_driver: SqliteDriver | PostgresDriver | None, side: Any
) -> Database | None:
    """The sync facade *variant* uses (None for native, which has none)."""
    if variant == "portal":
        return Database(state.driver, greenportal.await_)
    if variant == "loop-thread":
        assert side is not None and side_driver is not None
        return Database(side_driver, side)
    if variant == "threadpool":
        return Database(state.driver, LoopHop(state.loop))
    if variant == "greenback":
        return Database(state.driver, _greenback_await)
    if variant == "sqlalchemy":
        return Database(state.driver, _sqlalchemy_await)
    return None


# -- the handlers ---------------------------------------------------------------


async def summary_handler(request: web.Request) -> web.Response:
    state = request.config_dict[STATE]
    variant = request.app[VARIANT]
    try:
        customer_id = int(request.match_info["customer_id"])
    except ValueError as error:
        raise web.HTTPBadRequest(text="customer id must be an integer\n") from error
    try:
        summary = await request.app[SUMMARY](state, customer_id)
    except CustomerNotFound as error:
        raise web.HTTPNotFound(text=f"no customer {error.args[0]}\n") from error
    state.counts[variant] = state.counts.get(variant, 0) + 1
    return web.json_response(summary)


async def stats_handler(request: web.Request) -> web.Response:
    state = request.config_dict[STATE]
    times = os.times()
    return web.json_response(
        {
            "pid": os.getpid(),
            "cpu_seconds": times.user + times.system,
            # This handler runs on the serving loop's thread: its CPU time alone.
            "loop_cpu_seconds": time.thread_time(),
            "requests": state.counts.copy(),
            "max_loop_stall_ms": state.lag.take() * 1000,
            "database": state.driver.description,
        }
    )


async def index_handler(request: web.Request) -> web.Response:
    state = request.config_dict[STATE]
    lines = [f"greenportal demo on {state.driver.description}", ""]
    for variant in request.app[VARIANTS_KEY]:
        lines.append(f"/{variant}/customers/<id>/summary  {DESCRIPTIONS[variant]}")
    return web.Response(text="\n".join(lines) + "\n")


VARIANTS_KEY: web.AppKey[list[str]] = web.AppKey("variants")


def make_app(
    *,
    dsn: str | None = None,
    sqlite_path: str | None = None,
    variants: list[str] | None = None,
    latency: float = 0.0,
    seed: bool = True,
) -> web.Application:
    """The service.  On SQLite with no path it makes (and later removes) a temp file.

    The drivers are opened and the schema seeded in the app's cleanup context,
    so a bad DSN fails the start-up of the runner with DatabaseError.
    """
    check_dsn(dsn)
    chosen = list(variants or VARIANTS)
    unknown = sorted(set(chosen) - {*VARIANTS, *PEERS})
    if unknown:
        raise ValueError(f"unknown variant(s) {unknown}; known: {', '.join((*VARIANTS, *PEERS))}")
    app = web.Application()
    app[VARIANTS_KEY] = chosen

    async def lifetime(app: web.Application) -> AsyncIterator[None]:
        own_file = dsn is None and sqlite_path is None
        path = new_sqlite_path() if own_file else sqlite_path
        side: LoopThread | None = None
        side_driver: SqliteDriver | PostgresDriver | None = None
        driver = await open_driver(dsn, sqlite_path=path, latency=latency)
        try:
            if seed:
                await create_schema(driver)
            if "loop-thread" in chosen:
                side = LoopThread()
                side_driver = side(open_driver(dsn, sqlite_path=path, latency=latency))
            state = State(asyncio.get_running_loop(), driver)
            for variant in chosen:
                facade = facade_for(variant, state, side_driver, side)
                if facade is not None:
                    state.facades[variant] = facade
            app[STATE] = state
            monitor = asyncio.ensure_future(state.lag.run())
            try:
                yield
            finally:
                monitor.cancel()
        finally:
            if side is not None:
                if side_driver is not None:
                    side(side_driver.close())
                side.close()
            await driver.close()
            if own_file and path is not None:
                remove_sqlite(path)

    app.cleanup_ctx.append(lifetime)
    app.router.add_get("/", index_handler)
    app.router.add_get("/_stats", stats_handler)
    for variant in chosen:
        app.add_subapp(f"/{variant}/", variant_app(variant))
    return app


def greenportal_build() -> str:
    """Which greenportal serves: version, where it was imported from, compiled or not."""
    from greenportal import _portal

    compiled = getattr(_portal, "SPEEDUPS", None)
    kind = {True: "C accelerator", False: "pure Python", None: "?"}[compiled]
    where = os.path.dirname(greenportal.__file__)
    return f"greenportal {greenportal.__version__} ({kind}) from {where}"


def bound_socket(host: str = "127.0.0.1", port: int = 0) -> socket.socket:
    """A listening TCP socket (port 0: a free one chosen by the system)."""
    sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    sock.bind((host, port))
    sock.listen(1024)
    sock.setblocking(False)
    return sock


async def serve(args: argparse.Namespace) -> None:
    app = make_app(
        dsn=args.dsn,
        variants=args.variants.split(",") if args.variants else None,
        latency=args.latency_ms / 1000,
    )
    runner = web.AppRunner(app, access_log=None, handle_signals=False)
    await runner.setup()
    try:
        sock = bound_socket(args.host, args.port)
        site = web.SockSite(runner, sock, shutdown_timeout=1)
        await site.start()
        stop = asyncio.Event()
        loop = asyncio.get_running_loop()
        for signum in (signal.SIGINT, signal.SIGTERM):
            loop.add_signal_handler(signum, stop.set)
        ready = {
            "port": sock.getsockname()[1],
            "database": app[STATE].driver.description,
            "greenportal": greenportal_build(),
        }
        print(json.dumps(ready), flush=True)
        await stop.wait()
    finally:
        await runner.cleanup()


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m app.server", description=__doc__)
    parser.add_argument("--host", default="127.0.0.1")
    parser.add_argument("--port", type=int, default=0, help="0 (default): a free port")
    parser.add_argument("--dsn", default=os.environ.get("DATABASE_URL") or None)
    parser.add_argument("--variants", help="comma-separated (default: the four of the demo)")
    parser.add_argument("--latency-ms", type=float, default=0.0, help="extra wait per query")
    parser.add_argument("--uvloop", action="store_true", help="serve on uvloop")
    args = parser.parse_args(argv)
    run: Callable[[Any], Any] = asyncio.run
    if args.uvloop:
        import uvloop

        run = functools.partial(uvloop.run)
    try:
        run(serve(args))
    except DatabaseError as error:
        print(f"error: {error}", file=sys.stderr, flush=True)
        return 2
    return 0


if __name__ == "__main__":
    sys.exit(main())
