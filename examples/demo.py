"""greenportal demo: a synchronous business layer on top of an async database.

Request tasks run plain sync code (``order_summary`` -> ``load_user`` /
``load_orders`` -> ``query``) that reaches a fake async database, while a
heartbeat task ticks every 10 ms and records the longest gap between ticks.

1. greenportal: each request runs through a portal and ``query`` calls
   ``greenportal.await_``; requests overlap and the heartbeat keeps ticking.
2. Naive bridge, for contrast: ``query`` blocks on a second event loop in a
   thread; requests run one after another and the heartbeat starves.

Usage: ``python examples/demo.py [--quiet]``
"""

from __future__ import annotations

import argparse
import asyncio
import threading
import time
from collections.abc import Callable, Coroutine
from typing import Any

import greenportal

QUERY_TIME = 0.05  # seconds of simulated I/O per query
TICK = 0.01  # heartbeat period
USER_IDS = [1, 2, 3, 4, 5, 6]
QUERIES_PER_REQUEST = 2  # see order_summary

START = time.perf_counter()
QUIET = False


def log(message: str, *, summary: bool = False) -> None:
    if summary or not QUIET:
        print(f"[{time.perf_counter() - START:6.3f}s] {message}", flush=True)


# --- the fake async database -------------------------------------------------


async def fetch(table: str, user_id: int) -> list[dict[str, Any]]:
    await asyncio.sleep(QUERY_TIME)  # network round trip
    if table == "users":
        return [{"id": user_id, "name": f"user-{user_id}"}]
    return [{"user": user_id, "total": 10 * n} for n in range(1, user_id % 3 + 2)]


# --- the synchronous business layer (no async, no await) ---------------------

# How the sync layer waits for a coroutine; swapped for the naive run.
wait: Callable[[Coroutine[Any, Any, Any]], Any] = greenportal.await_


def query(table: str, user_id: int) -> list[dict[str, Any]]:
    rows: list[dict[str, Any]] = wait(fetch(table, user_id))
    return rows


def load_user(user_id: int) -> dict[str, Any]:
    return query("users", user_id)[0]


def load_orders(user_id: int) -> list[dict[str, Any]]:
    return query("orders", user_id)


def order_summary(user_id: int) -> str:
    user = load_user(user_id)
    orders = load_orders(user_id)
    return f"{user['name']}: {len(orders)} order(s), {sum(o['total'] for o in orders)} EUR"


# --- the async application ---------------------------------------------------


async def heartbeat(stats: dict[str, float]) -> None:
    while True:
        await asyncio.sleep(TICK)
        now = time.perf_counter()
        stats["ticks"] += 1
        stats["max_gap"] = max(stats["max_gap"], now - stats["last"])
        stats["last"] = now


async def request(user_id: int, stats: dict[str, float], *, use_portal: bool) -> str:
    log(f"request {user_id} start")
    if use_portal:
        result = await greenportal.with_portal_run_sync(order_summary, user_id)
    else:
        result = order_summary(user_id)  # blocks the loop inside `wait`
    log(f"request {user_id} done -> {result}  (heartbeat ticks so far: {stats['ticks']:.0f})")
    return result


async def scenario(title: str, *, use_portal: bool) -> list[str]:
    log(f"--- {title} ---", summary=True)
    t0 = time.perf_counter()
    stats = {"ticks": 0.0, "max_gap": 0.0, "last": t0}
    beat = asyncio.create_task(heartbeat(stats))
    results = await asyncio.gather(*(request(u, stats, use_portal=use_portal) for u in USER_IDS))
    end = time.perf_counter()
    elapsed = end - t0
    stats["max_gap"] = max(stats["max_gap"], end - stats["last"])
    beat.cancel()
    serial = len(USER_IDS) * QUERIES_PER_REQUEST * QUERY_TIME
    log(
        f"heartbeat: {stats['ticks']:.0f} ticks in {elapsed:.3f}s "
        f"(~{elapsed / TICK:.0f} expected), longest gap {stats['max_gap'] * 1000:.0f} ms",
        summary=True,
    )
    log(
        f"{len(USER_IDS)} requests x {QUERIES_PER_REQUEST} queries: elapsed {elapsed:.3f}s "
        f"vs serial sum {serial:.3f}s ({serial / elapsed:.1f}x)",
        summary=True,
    )
    return results


class BlockingBridge:
    """The naive way: run each coroutine on a second event loop, block until done."""

    def __init__(self) -> None:
        self.loop = asyncio.new_event_loop()
        self.thread = threading.Thread(target=self.loop.run_forever, daemon=True)
        self.thread.start()

    def __call__(self, coro: Coroutine[Any, Any, Any]) -> Any:
        return asyncio.run_coroutine_threadsafe(coro, self.loop).result()

    def close(self) -> None:
        self.loop.call_soon_threadsafe(self.loop.stop)
        self.thread.join()
        self.loop.close()


def main() -> None:
    global QUIET, wait
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quiet", action="store_true", help="print only the summary lines")
    QUIET = parser.parse_args().quiet

    good = asyncio.run(scenario("greenportal: await_ through a portal", use_portal=True))

    wait = bridge = BlockingBridge()
    bad = asyncio.run(scenario("naive: second loop in a thread, .result()", use_portal=False))
    bridge.close()
    log(f"same answers both ways: {good == bad}", summary=True)


if __name__ == "__main__":
    main()
