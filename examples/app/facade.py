"""The small synchronous DB facade the repositories call.

:class:`Database` turns each query into a coroutine of the async driver and
hands it to a *bridge*: a plain function that waits for a coroutine from
sync code and returns its result.  The bridges are the variants:

* ``greenportal.await_`` (the portal variant): only the calling task waits;
* :class:`LoopThread` (the blocking facade): the coroutine runs on a second
  event loop in a thread while the caller blocks, event loop and all;
* :class:`LoopHop` (the thread-pool variant): the caller is a worker thread,
  the coroutine runs on the serving loop, the worker blocks.
"""

from __future__ import annotations

import asyncio
import threading
from collections.abc import Callable, Coroutine
from typing import Any, TypeVar

from app.drivers import Driver, Row

T = TypeVar("T")
Bridge = Callable[[Coroutine[Any, Any, Any]], Any]


class Database:
    """Sync access to an async driver: every method waits through the bridge."""

    def __init__(self, driver: Driver, bridge: Bridge) -> None:
        self.driver = driver
        self._wait = bridge

    def fetch_one(self, sql: str, *params: Any) -> Row | None:
        row: Row | None = self._wait(self.driver.fetch_one(sql, params))
        return row

    def fetch_all(self, sql: str, *params: Any) -> list[Row]:
        rows: list[Row] = self._wait(self.driver.fetch_all(sql, params))
        return rows

    def execute(self, sql: str, *params: Any) -> None:
        self._wait(self.driver.execute(sql, params))


class LoopThread:
    """A second event loop in a daemon thread, and the blocking bridge to it.

    Calling the instance with a coroutine runs it on that loop and blocks the
    calling thread until it finishes: ``run_coroutine_threadsafe(...).result()``.
    """

    def __init__(self, name: str = "db-loop") -> None:
        self.loop = asyncio.new_event_loop()
        self._thread = threading.Thread(target=self._main, name=name, daemon=True)
        self._thread.start()

    def _main(self) -> None:
        asyncio.set_event_loop(self.loop)
        self.loop.run_forever()

    def __call__(self, coro: Coroutine[Any, Any, T]) -> T:
        return asyncio.run_coroutine_threadsafe(coro, self.loop).result()

    def close(self) -> None:
        if self.loop.is_closed():
            return
        self.loop.call_soon_threadsafe(self.loop.stop)
        self._thread.join()
        self.loop.close()


class LoopHop:
    """The bridge from a worker thread back to the event loop that serves requests.

    Must not be called on that loop's own thread: it would wait forever for
    itself, so that raises RuntimeError instead.
    """

    def __init__(self, loop: asyncio.AbstractEventLoop) -> None:
        self.loop = loop

    def __call__(self, coro: Coroutine[Any, Any, T]) -> T:
        try:
            running = asyncio.get_running_loop()
        except RuntimeError:
            running = None
        if running is self.loop:
            coro.close()
            raise RuntimeError("LoopHop called on its own event loop: it would deadlock")
        return asyncio.run_coroutine_threadsafe(coro, self.loop).result()
