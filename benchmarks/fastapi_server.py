"""The FastAPI service that ``bench_fastapi.py`` loads: one endpoint, three ways.

Run as a child process: ``python benchmarks/fastapi_server.py [--loop L]``.
It binds 127.0.0.1 on a free port, prints one JSON line (port, event loop,
HTTP implementation, versions) and serves with uvicorn until SIGTERM.

The endpoint stands for a request of a sync application layer on an async
client: a dependency loads the user (two awaited 1 ms calls), the body makes
three more.  Mounted as

* ``/threadpool/work``: ``def`` endpoint and dependency under FastAPI's own
  ``APIRoute``, so both run in anyio's thread pool and each ``await_`` hops
  back to the loop;
* ``/portal/work``: the same two functions under
  ``greenportal.fastapi.PortalRoute``, on the loop in a portal;
* ``/async/work``: the same logic written ``async def`` (the reference).

``/_stats`` reports the process's CPU time and the requests served per
variant, so that the load generator, in another process, can compute CPU
per request.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import socket
import sys
from collections import Counter
from typing import Any

import fastapi
import uvicorn
from fastapi import APIRouter, Depends, FastAPI
from fastapi.routing import APIRoute

import greenportal
from greenportal import await_
from greenportal.fastapi import PortalRoute

CALL_SECONDS = 0.001
served: Counter[str] = Counter()


async def backend_call(value: int) -> int:
    """An async client call of about 1 ms (a database query, an HTTP call)."""
    await asyncio.sleep(CALL_SECONDS)
    return value + 1


# -- the sync layer (threadpool and portal variants) ---------------------------------


def current_user(user_id: int = 7) -> dict[str, int]:
    profile = await_(backend_call(user_id))
    roles = await_(backend_call(profile))
    return {"id": user_id, "profile": profile, "roles": roles}


def make_work(variant: str) -> Any:
    def work(user: dict[str, int] = Depends(current_user)) -> dict[str, Any]:
        total = 0
        for step in range(3):
            total += await_(backend_call(step))
        served[variant] += 1
        return {"user": user, "total": total}

    return work


# -- the same written async (the reference) -------------------------------------------


async def current_user_async(user_id: int = 7) -> dict[str, int]:
    profile = await backend_call(user_id)
    roles = await backend_call(profile)
    return {"id": user_id, "profile": profile, "roles": roles}


async def work_async(user: dict[str, int] = Depends(current_user_async)) -> dict[str, Any]:
    total = 0
    for step in range(3):
        total += await backend_call(step)
    served["async"] += 1
    return {"user": user, "total": total}


async def stats() -> dict[str, Any]:
    times = os.times()
    return {"cpu_seconds": times.user + times.system, "requests": dict(served)}


def build_app() -> FastAPI:
    app = FastAPI()
    for variant, route_class in (("threadpool", APIRoute), ("portal", PortalRoute)):
        router = APIRouter(route_class=route_class)
        router.add_api_route("/work", make_work(variant), methods=["GET"])
        app.include_router(router, prefix=f"/{variant}")
    reference = APIRouter()
    reference.add_api_route("/work", work_async, methods=["GET"])
    app.include_router(reference, prefix="/async")
    app.add_api_route("/_stats", stats, methods=["GET"])
    return app


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--loop", default="auto", help="uvicorn's --loop (auto, asyncio, uvloop)")
    parser.add_argument("--http", default="auto", help="uvicorn's --http (auto, h11, httptools)")
    args = parser.parse_args()
    config = uvicorn.Config(
        build_app(),
        loop=args.loop,
        http=args.http,
        lifespan="off",
        log_level="warning",
        access_log=False,
    )
    config.load()  # resolves "auto" to the implementations actually used
    sock = socket.socket()
    sock.bind(("127.0.0.1", 0))
    ready = {
        "port": sock.getsockname()[1],
        "loop": _loop_name(args.loop),
        "http": config.http_protocol_class.__module__.rsplit(".", 1)[-1],
        "versions": {
            "python": sys.version.split()[0],
            "fastapi": fastapi.__version__,
            "uvicorn": uvicorn.__version__,
            "greenportal": greenportal.__version__,
        },
    }
    print(json.dumps(ready), flush=True)
    uvicorn.Server(config).run(sockets=[sock])


def _loop_name(choice: str) -> str:
    if choice != "auto":
        return choice
    try:
        import uvloop  # noqa: F401
    except ImportError:
        return "asyncio"
    return "uvloop"


if __name__ == "__main__":
    main()
