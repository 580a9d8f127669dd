"""Run each behaviour test on every event loop configuration greenportal supports.

A test that takes the ``backend`` fixture runs once per configuration:

* ``asyncio-c``: asyncio with the C Task (the default);
* ``asyncio-py``: asyncio with the pure-Python Task;
* ``asyncio-eager``: asyncio with ``eager_task_factory`` (3.12+), C Task;
* ``asyncio-py-eager``: eager tasks with the pure-Python Task (3.12+);
* ``asyncio-debug``: asyncio in debug mode;
* ``uvloop``: asyncio on uvloop;
* ``trio``.

Tests write their async code with anyio's primitives where the two
libraries differ only in spelling, and with each library's own API where the
behaviour under test is library-specific.
"""

from __future__ import annotations

import asyncio
import asyncio.tasks
import gc
import subprocess
import sys
import time
from collections.abc import Awaitable, Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest

CONFIGS = ["asyncio-c", "asyncio-py", "asyncio-debug", "uvloop", "trio"]
if sys.version_info >= (3, 12):
    CONFIGS[2:2] = ["asyncio-eager", "asyncio-py-eager"]
try:
    import trio  # noqa: F401
except ImportError:  # the asyncio-only run (scripts/test.py, dependency group "test-asyncio")
    CONFIGS.remove("trio")
try:
    import uvloop  # noqa: F401
except ImportError:  # Windows, where uvloop does not run (the wheels' tests there)
    CONFIGS.remove("uvloop")

_PyTask: Any = getattr(asyncio.tasks, "_PyTask", asyncio.Task)


def _py_task_factory(loop: asyncio.AbstractEventLoop, coro: Any, **kwargs: Any) -> Any:
    return _PyTask(coro, loop=loop, **kwargs)


@dataclass
class Backend:
    """One event loop configuration."""

    config: str

    @property
    def name(self) -> str:
        return "trio" if self.config == "trio" else "asyncio"

    @property
    def is_trio(self) -> bool:
        return self.config == "trio"

    @property
    def eager(self) -> bool:
        return self.config.endswith("eager")

    def new_loop(self) -> asyncio.AbstractEventLoop:
        if self.config == "uvloop":
            import uvloop

            loop: asyncio.AbstractEventLoop = uvloop.new_event_loop()
        else:
            loop = asyncio.new_event_loop()
        if self.config == "asyncio-debug":
            loop.set_debug(True)
        if self.config == "asyncio-py":
            loop.set_task_factory(_py_task_factory)
        elif self.config == "asyncio-eager":
            loop.set_task_factory(asyncio.eager_task_factory)  # type: ignore[attr-defined]
        elif self.config == "asyncio-py-eager":
            loop.set_task_factory(asyncio.create_eager_task_factory(_PyTask))  # type: ignore[attr-defined]
        return loop

    def run(self, fn: Callable[..., Awaitable[Any]], *args: Any) -> Any:
        """Run ``fn(*args)`` as the main task of a fresh event loop."""
        if self.is_trio:
            import trio

            return trio.run(fn, *args)
        loop = self.new_loop()
        try:
            asyncio.set_event_loop(loop)
            return loop.run_until_complete(loop.create_task(fn(*args)))
        finally:
            try:
                _cancel_all(loop)
                loop.run_until_complete(loop.shutdown_asyncgens())
            finally:
                asyncio.set_event_loop(None)
                loop.close()

    def task_type_ok(self, task: Any) -> bool:
        """Is *task* the Task implementation this configuration promises?"""
        if self.config.startswith("asyncio-py"):
            return type(task) is _PyTask
        return True


def _cancel_all(loop: asyncio.AbstractEventLoop) -> None:
    pending = [t for t in asyncio.all_tasks(loop) if not t.done()]
    for task in pending:
        task.cancel()
    if pending:
        loop.run_until_complete(asyncio.gather(*pending, return_exceptions=True))


@pytest.fixture(params=CONFIGS)
def backend(request: pytest.FixtureRequest) -> Backend:
    return Backend(request.param)


@pytest.fixture(params=[c for c in CONFIGS if c != "trio"])
def aio_backend(request: pytest.FixtureRequest) -> Backend:
    return Backend(request.param)


# Where sync code runs, for the tests of blocking APIs: a ``place`` takes a
# sync function and runs it inside a task with a portal, in a to_thread
# worker (each on every configuration), or in a program with no event loop.
Place = Callable[[Callable[[], Any]], Any]


def _in_portal(backend: Backend, fn: Callable[[], Any]) -> Any:
    import greenportal

    async def main() -> Any:
        return await greenportal.with_portal_run_sync(fn)

    return backend.run(main)


def _in_thread(backend: Backend, fn: Callable[[], Any]) -> Any:
    import greenportal

    async def main() -> Any:
        return await greenportal.to_thread(fn)

    return backend.run(main)


def _no_loop(backend: Backend, fn: Callable[[], Any]) -> Any:
    return fn()


PLACES = [
    *[(config, "portal") for config in CONFIGS],
    *[(config, "thread") for config in CONFIGS],
    ("asyncio-c", "no-loop"),  # no event loop: nothing backend-specific
]


@pytest.fixture(params=PLACES, ids=["-".join(p) for p in PLACES])
def place(request: pytest.FixtureRequest) -> Place:
    config, where = request.param
    runner = {"portal": _in_portal, "thread": _in_thread, "no-loop": _no_loop}[where]
    return lambda fn: runner(Backend(config), fn)


def pytest_collection_finish(session: pytest.Session) -> None:
    """Move what exists once the tests are collected out of the collector's way.

    The modules, test items and libraries loaded by now live until the
    session ends.  Frozen (``gc.freeze``), they are no longer walked by the
    full collections that the lifetime and leak tests make, many times each
    (measured on 3.13: ``tests/test_default_runner.py`` with
    ``tests/test_lifetime.py`` went from 30 s to 5 s), and tests still find
    any garbage that they make themselves.
    """
    gc.collect()
    gc.freeze()


def run_python(
    *args: str, timeout: float = 60, cwd: str | None = None
) -> subprocess.CompletedProcess[str]:
    """Run this interpreter with *args* in a child process, capturing its output."""
    return subprocess.run(
        [sys.executable, *args],
        capture_output=True,
        text=True,
        timeout=timeout,
        check=False,
        cwd=cwd,
    )


def gc_collect_harder() -> None:
    # Several passes: finalizers that run in one pass can free more in the next.
    # A millisecond between them lets other threads (a worker returning from
    # its last call, a loop thread finishing a callback) drop what they still
    # hold: with the heap frozen (pytest_collection_finish) a pass takes well
    # under that, too short for another thread to get the GIL in.
    for _ in range(5):
        gc.collect()
        time.sleep(0.001)


# --- a throwaway PostgreSQL server for the integration tests -------------------

_TOOLS = str(Path(__file__).resolve().parent.parent / "tools")


def _pgcluster() -> Any:
    """tools/pgcluster.py, imported from the repository (it is not part of the package)."""
    if _TOOLS not in sys.path:
        sys.path.insert(0, _TOOLS)
    import pgcluster

    return pgcluster


@pytest.fixture(scope="session")
def postgres_dsn() -> Iterator[str]:
    """``postgresql://...`` of a PostgreSQL cluster started for this test session.

    Skips, saying what to install, where the server binaries are missing.
    """
    pgcluster = _pgcluster()
    if pgcluster.find_pg_bin() is None:
        pytest.skip(pgcluster.MISSING_MESSAGE)
    with pgcluster.PostgresCluster() as cluster:
        yield cluster.dsn
