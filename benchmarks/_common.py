"""Shared pieces of the benchmark suite: event loops, the bridges compared, statistics.

Each bridge ("implementation") is described by an :class:`Impl` that says how
to run sync code where its ``await_`` works and which ways of making a portal
it has; a missing way is ``None`` and its table cell reads '-'.
"""

from __future__ import annotations

import gc
import statistics
import sys
import time
from collections.abc import Awaitable, Callable, Coroutine
from dataclasses import dataclass
from typing import Any

LOOPS = ("asyncio", "uvloop", "trio")
# Column order of every table: the native baseline, the bridges, the floor.
IMPLS = ("greenportal", "greenback", "sqlalchemy", "awaitlet")
COLUMNS = ("native", *IMPLS, "floor")

AsyncFn = Callable[[], Coroutine[Any, Any, Any]]


class Loop:
    """One event loop library, behind the few operations the benchmarks need."""

    def __init__(self, name: str) -> None:
        self.name = name
        if name == "trio":
            import trio

            self._trio = trio
            self.checkpoint: Callable[[], Awaitable[None]] = trio.lowlevel.checkpoint
            self.checkpoint_text = "trio.lowlevel.checkpoint()"
            self.Event: Callable[[], Any] = trio.Event
        else:
            import asyncio

            self._asyncio = asyncio
            sleep = asyncio.sleep

            def checkpoint() -> Awaitable[None]:
                return sleep(0)

            self.checkpoint = checkpoint
            self.checkpoint_text = "asyncio.sleep(0)"
            self.Event = asyncio.Event

    def run(self, fn: AsyncFn) -> Any:
        """Run ``fn()`` on a fresh event loop of this kind and return its result."""
        if self.name == "trio":
            return self._trio.run(fn)
        if self.name == "uvloop":
            import uvloop

            return uvloop.run(fn())
        return self._asyncio.run(fn())

    async def in_new_task(self, fn: AsyncFn) -> Any:
        """Run ``fn()`` in a task of its own and return its result."""
        if self.name != "trio":
            return await self._asyncio.get_running_loop().create_task(fn())
        box: list[Any] = []

        async def keep() -> None:
            box.append(await fn())

        async with self._trio.open_nursery() as nursery:
            nursery.start_soon(keep)
        return box[0]

    async def run_all(self, fns: list[AsyncFn]) -> None:
        """Run every ``fn()`` concurrently, each in a new task, and wait for all."""
        if self.name != "trio":
            create = self._asyncio.get_running_loop().create_task
            await self._asyncio.gather(*[create(fn()) for fn in fns])
            return
        async with self._trio.open_nursery() as nursery:
            for fn in fns:
                nursery.start_soon(fn)

    def current_task(self) -> Any:
        if self.name == "trio":
            return self._trio.lowlevel.current_task()
        return self._asyncio.current_task()

    async def yield_until(self, done: Callable[[], bool]) -> None:
        """Let other tasks run until ``done()`` is true."""
        sleep = self._trio.sleep if self.name == "trio" else self._asyncio.sleep
        while not done():
            await sleep(0)


@dataclass
class Impl:
    """How one bridge does each thing the benchmarks ask of it (None: it cannot)."""

    name: str
    version: str
    await_: Callable[[Any], Any]
    # Run a sync function where await_ works, paying for a portal (greenlet) per call.
    run_sync: Callable[..., Awaitable[Any]]
    ensure_portal: Callable[[], Awaitable[None]] | None = None
    with_portal_run: Callable[..., Awaitable[Any]] | None = None
    with_portal_run_tree: Callable[..., Awaitable[Any]] | None = None
    bestow_portal: Callable[[Any], None] | None = None

    async def sync_in_portal(self, fn: Callable[[], Any]) -> Any:
        """Run *fn* where await_ works: in this task's own portal if the bridge has them."""
        if self.ensure_portal is not None:
            await self.ensure_portal()
            return fn()
        return await self.run_sync(fn)


def load_impls(loop: str) -> tuple[dict[str, Impl], dict[str, str]]:
    """The bridges usable on *loop*, and for the others why not."""
    impls: dict[str, Impl] = {}
    skipped: dict[str, str] = {}

    import greenportal

    impls["greenportal"] = Impl(
        "greenportal",
        greenportal.__version__,
        greenportal.await_,
        greenportal.with_portal_run_sync,
        greenportal.ensure_portal,
        greenportal.with_portal_run,
        greenportal.with_portal_run_tree,
        greenportal.bestow_portal,
    )
    try:
        import greenback
    except ImportError as error:
        skipped["greenback"] = f"not installed ({error})"
    else:
        impls["greenback"] = Impl(
            "greenback",
            _version_of("greenback"),
            greenback.await_,
            greenback.with_portal_run_sync,
            greenback.ensure_portal,
            greenback.with_portal_run,
            # greenback's tree portals are for Trio only.
            greenback.with_portal_run_tree if loop == "trio" else None,
            greenback.bestow_portal,
        )
    if loop == "trio":
        skipped["sqlalchemy"] = "its greenlet bridge is part of its asyncio support"
    else:
        try:
            from sqlalchemy import util as sa_util
        except ImportError as error:
            skipped["sqlalchemy"] = f"not installed ({error})"
        else:
            # await_only was renamed await_ in SQLAlchemy 2.1 (the old name stays as an alias).
            await_only = getattr(sa_util, "await_only", None) or sa_util.await_
            impls["sqlalchemy"] = Impl(
                "sqlalchemy", _version_of("sqlalchemy"), await_only, sa_util.greenlet_spawn
            )
    try:
        import awaitlet
    except Exception as error:  # any failure to import just drops its column
        skipped["awaitlet"] = f"cannot import ({type(error).__name__}: {error})"
    else:
        impls["awaitlet"] = Impl(
            "awaitlet", _version_of("awaitlet"), awaitlet.awaitlet, awaitlet.async_def
        )
    return impls, skipped


def _version_of(dist: str) -> str:
    from importlib import metadata

    try:
        return metadata.version(dist)
    except metadata.PackageNotFoundError:
        return "?"


def machine_info() -> dict[str, str]:
    import os
    import platform

    import greenlet

    return {
        "python": sys.version.split()[0],
        "implementation": platform.python_implementation(),
        "greenlet": greenlet.__version__,
        "cpus": str(os.cpu_count()),
        "platform": platform.platform(terse=True),
    }


# -- floors: raw greenlet operations ------------------------------------------


def switch_pair_seconds(n: int) -> float:
    """One greenlet switch there and back: the floor of any portal step."""
    import greenlet

    def body() -> None:
        parent = greenlet.getcurrent().parent
        assert parent is not None
        while True:
            parent.switch()

    gr = greenlet.greenlet(body)
    gr.switch()
    switch = gr.switch
    t0 = time.perf_counter()
    for _ in range(n):
        switch()
    elapsed = time.perf_counter() - t0
    gr.throw(greenlet.GreenletExit)
    return elapsed / n


class MinimalShim:
    """The least a greenlet portal can do per step, as a reference: not a portal.

    It stands in for a task's coroutine and steps it on its own greenlet, one
    switch pair per step, with nothing else: no error handling, no ownership
    rules (a task dropped while suspended would leak), no reuse, no rehoming,
    no ``await_``.  What a native checkpoint costs above native in a task
    driven by this is the in-loop floor of a portal step: the switch pair of
    :func:`switch_pair_seconds`, measured in a tight loop, is cheaper than the
    same pair between event-loop callbacks.
    """

    __slots__ = ("gr", "hub_switch")

    def __init__(self, coro: Any) -> None:
        import greenlet

        def run(value: Any) -> Any:
            send = coro.send
            while True:
                value = self.hub_switch(send(value))

        self.gr = greenlet.greenlet(run)
        self.hub_switch: Any = None

    def send(self, value: Any = None) -> Any:
        if self.hub_switch is None:
            import greenlet

            hub = greenlet.getcurrent()
            self.gr.parent = hub
            self.hub_switch = hub.switch
        return self.gr.switch(value)

    def throw(self, *exc: Any) -> Any:
        return self.gr.throw(*exc)

    def close(self) -> None:
        pass

    def __await__(self) -> MinimalShim:
        return self

    __next__ = send


def _register_shim() -> None:
    import collections.abc

    collections.abc.Coroutine.register(MinimalShim)


_register_shim()


def new_greenlet_seconds(n: int) -> float:
    """Create a greenlet, run an empty function on it to the end: the floor of a fresh portal."""
    import greenlet

    new = greenlet.greenlet
    t0 = time.perf_counter()
    for _ in range(n):
        new(_empty).switch()
    return (time.perf_counter() - t0) / n


def _empty() -> None:
    pass


# -- statistics -----------------------------------------------------------------


def median(values: list[float]) -> float:
    return statistics.median(values)


def iqr(values: list[float]) -> tuple[float, float]:
    """The interquartile range (25th and 75th percentiles) of *values*."""
    if len(values) < 2:
        return values[0], values[0]
    q1, _, q3 = statistics.quantiles(values, n=4, method="inclusive")
    return q1, q3


def collect() -> None:
    """A full collection, so that one case's garbage is not collected during the next."""
    gc.collect()
