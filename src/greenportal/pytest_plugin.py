"""pytest plugin: tests with portals (registered as the ``greenportal`` plugin).

The ``greenportal`` marker:

* on an ``async def`` test, run by pytest-asyncio, anyio's plugin or
  pytest-trio: the test runs with a portal (:func:`greenportal.with_portal_run`),
  so the sync code it calls can use :func:`greenportal.await_`.  The async
  plugin still owns the event loop and the async fixtures;
* on a plain ``def`` test: the test body runs with a portal on the event loop
  of the :func:`greenportal_runner` fixture, a fresh :class:`greenportal.Runner`
  for that test (asyncio, or Trio with ``@pytest.mark.greenportal(backend="trio")``).
  Fixtures that request ``greenportal_runner`` share that loop, so what they
  create there (a connection pool, say) is usable from the test's ``await_``.
  The body runs on the Runner's thread.

Mark a module with ``pytestmark = pytest.mark.greenportal`` to mark every test.

The plugin is loaded by every pytest run where greenportal is installed; it
imports nothing but pytest until a test is marked.
"""

from __future__ import annotations

import functools
import inspect
from collections.abc import Callable, Iterator
from typing import TYPE_CHECKING, Any, Literal

import pytest

if TYPE_CHECKING:
    from ._runner import Runner

__all__ = ["greenportal_runner"]

MARKER = "greenportal"
_BACKENDS = ("asyncio", "trio")


def pytest_configure(config: pytest.Config) -> None:
    config.addinivalue_line(
        "markers",
        f"{MARKER}(backend='asyncio'): run the test with a greenportal portal, so sync code "
        "it calls can use greenportal.await_(). Async tests keep their plugin's loop "
        "(pytest-asyncio, anyio, pytest-trio); sync tests run on the greenportal_runner "
        "fixture's loop, asyncio or backend='trio'.",
    )


def _backend_of(marker: pytest.Mark | None, where: str) -> Literal["asyncio", "trio"]:
    if marker is None:
        return "asyncio"
    if marker.args or set(marker.kwargs) - {"backend"}:
        raise pytest.UsageError(
            f"{where}: @pytest.mark.{MARKER} takes only the keyword argument backend "
            f"('asyncio' or 'trio'), got args={marker.args!r} kwargs={marker.kwargs!r}"
        )
    backend = marker.kwargs.get("backend", "asyncio")
    if backend not in _BACKENDS:
        raise pytest.UsageError(
            f"{where}: @pytest.mark.{MARKER}(backend={backend!r}): backend must be "
            "'asyncio' or 'trio'"
        )
    return "trio" if backend == "trio" else "asyncio"


@pytest.fixture
def greenportal_runner(request: pytest.FixtureRequest) -> Iterator[Runner]:
    """A :class:`greenportal.Runner` for this test, closed after it.

    Its backend is the ``greenportal`` marker's (asyncio unless
    ``backend="trio"``).  A sync test marked ``greenportal`` runs on it.
    """
    from ._runner import Runner

    backend = _backend_of(request.node.get_closest_marker(MARKER), request.node.nodeid)
    runner = Runner(backend, name="greenportal-test-runner")
    try:
        yield runner
    finally:
        runner.close()


def _with_portal(fn: Callable[..., Any]) -> Callable[..., Any]:
    @functools.wraps(fn)
    async def run_with_portal(*args: Any, **kwargs: Any) -> Any:
        from ._api import with_portal_run

        return await with_portal_run(fn, *args, **kwargs)

    run_with_portal.__greenportal_wrapped__ = True  # type: ignore[attr-defined]
    return run_with_portal


def _on_runner(item: pytest.Function, fn: Callable[..., Any]) -> Callable[..., Any]:
    @functools.wraps(fn)
    def run_on_runner(*args: Any, **kwargs: Any) -> Any:
        from ._api import with_portal_run_sync

        runner: Runner = item.funcargs["greenportal_runner"]  # type: ignore[assignment]
        return runner.run(with_portal_run_sync, fn, *args, **kwargs)

    run_on_runner.__greenportal_wrapped__ = True  # type: ignore[attr-defined]
    return run_on_runner


@pytest.hookimpl(trylast=True)
def pytest_collection_modifyitems(items: list[pytest.Item]) -> None:
    # trylast: after pytest-trio's trio_mode marking; the async plugins read
    # item.obj when the test runs, so they drive our wrapper.
    for item in items:
        if not isinstance(item, pytest.Function):
            continue
        marker = item.get_closest_marker(MARKER)
        if marker is None:
            continue
        _backend_of(marker, item.nodeid)  # bad arguments fail the whole run early
        fn = item.obj
        if getattr(fn, "__greenportal_wrapped__", False):
            continue
        if inspect.iscoroutinefunction(fn):
            item.obj = _with_portal(fn)
        elif inspect.isasyncgenfunction(fn) or inspect.isgeneratorfunction(fn):
            raise pytest.UsageError(
                f"{item.nodeid}: @pytest.mark.{MARKER} applies to 'async def' and plain "
                "'def' test functions, not to generator functions"
            )
        else:
            if "greenportal_runner" not in item.fixturenames:
                item.fixturenames.append("greenportal_runner")
            item.obj = _on_runner(item, fn)
