"""await_ itself: values, exceptions, tracebacks, awaitables and misuse."""

from __future__ import annotations

import asyncio
import os
import re
import sys
import traceback
import types
from typing import Any

import anyio
import pytest

import greenportal
from greenportal import await_, ensure_portal, has_portal, with_portal_run_sync

PKG_DIR = os.path.dirname(greenportal.__file__)


class Boom(Exception):
    pass


async def double(x: int) -> int:
    await anyio.sleep(0)
    return 2 * x


async def explode(exc: BaseException) -> None:
    await anyio.sleep(0)
    raise exc


def test_values_pass_through(backend: Any) -> None:
    """Results come back unchanged, including identity."""
    sentinel = object()

    async def give() -> object:
        await anyio.sleep(0)
        return sentinel

    async def main() -> None:
        await ensure_portal()
        assert await_(double(21)) == 42
        assert await_(give()) is sentinel
        assert await_(double(0)) == 0

    backend.run(main)


def test_exceptions_pass_through(backend: Any) -> None:
    """The very exception object raised by the awaitable reaches the sync caller."""
    err = Boom("x")

    def layer() -> None:
        await_(explode(err))

    async def main() -> None:
        await ensure_portal()
        with pytest.raises(Boom) as info:
            layer()
        assert info.value is err

    backend.run(main)


def _frames(exc: BaseException) -> list[traceback.FrameSummary]:
    return list(traceback.extract_tb(exc.__traceback__))


def test_traceback_shows_user_frames(backend: Any) -> None:
    """The traceback runs layer -> explode with no greenportal plumbing between."""

    def layer() -> None:
        await_(explode(Boom()))

    async def main() -> None:
        await ensure_portal()
        try:
            layer()
        except Boom as exc:
            return exc  # type: ignore[return-value]
        raise AssertionError("no exception")

    exc = backend.run(main)
    names = [f.name for f in _frames(exc) if not f.filename.startswith(PKG_DIR)]
    ours = [f for f in _frames(exc) if f.filename.startswith(PKG_DIR)]
    assert names[-2:] == ["layer", "explode"]
    # 3.10 re-raises with the traceback captured on entry to `except`, so our
    # frames cannot be trimmed there (documented in _portal's module docstring).
    if sys.version_info >= (3, 11):
        assert not ours, ours


def test_traceback_through_task_boundary(backend: Any) -> None:
    """An exception leaving a portal task carries no greenportal frames (3.11+)."""

    def layer() -> None:
        await_(explode(Boom()))

    async def worker() -> None:
        await ensure_portal()
        layer()

    async def main() -> BaseException:
        try:
            await greenportal.with_portal_run(worker)
        except Boom as exc:
            return exc
        raise AssertionError("no exception")

    exc = backend.run(main)
    names = [f.name for f in _frames(exc)]
    assert "layer" in names and "explode" in names and "worker" in names
    ours = [f for f in _frames(exc) if f.filename.startswith(PKG_DIR)]
    if sys.version_info >= (3, 11):
        assert not ours, ours


def test_other_tasks_run_while_sync_code_waits(backend: Any) -> None:
    """Only the portal task waits; the loop keeps serving the others."""
    log: list[str] = []

    async def main() -> None:
        event = anyio.Event()

        def sync_layer() -> None:
            log.append("sync waits")
            await_(event.wait())
            log.append("sync resumed")

        async def portal_task() -> None:
            await ensure_portal()
            sync_layer()

        async def other() -> None:
            for i in range(3):
                log.append(f"other {i}")
                await anyio.sleep(0)
            event.set()

        async with anyio.create_task_group() as tg:
            tg.start_soon(portal_task)
            await anyio.sleep(0.01)
            tg.start_soon(other)

    backend.run(main)
    assert log == ["sync waits", "other 0", "other 1", "other 2", "sync resumed"]


class CustomAwaitable:
    def __init__(self, value: int) -> None:
        self.value = value

    def __await__(self) -> Any:
        yield from anyio.sleep(0).__await__()
        return self.value


@types.coroutine
def generator_coroutine() -> Any:
    yield from anyio.sleep(0).__await__()
    return "gen"


def test_any_awaitable(backend: Any) -> None:
    """Coroutines, generator-based coroutines and __await__ objects all work."""

    async def main() -> None:
        await ensure_portal()
        assert await_(CustomAwaitable(7)) == 7
        assert await_(generator_coroutine()) == "gen"
        if not backend.is_trio:
            loop = asyncio.get_running_loop()
            fut = loop.create_future()
            loop.call_later(0.001, fut.set_result, "fut")
            assert await_(fut) == "fut"
            task = asyncio.ensure_future(double(4))
            assert await_(task) == 8

    backend.run(main)


def test_non_awaitable_is_a_type_error(backend: Any) -> None:
    async def main() -> None:
        await ensure_portal()
        with pytest.raises(TypeError, match="needs an awaitable, got 'int'"):
            await_(42)  # type: ignore[arg-type]
        with pytest.raises(TypeError, match=r"did you mean to call it"):
            await_(double)  # type: ignore[arg-type]

        def plain_gen() -> Any:
            yield 1

        with pytest.raises(TypeError, match=r"types\.coroutine"):
            await_(plain_gen())

    backend.run(main)


def test_no_portal_error_explains_and_closes_coroutine(backend: Any) -> None:
    """No portal: a RuntimeError that says how to get one, and no 'never awaited' warning."""

    async def main() -> None:
        coro = double(1)
        with pytest.raises(RuntimeError, match=r"ensure_portal\(\)") as info:
            await_(coro)
        assert "with_portal_run" in str(info.value)
        assert coro.cr_frame is None  # closed, so no 'never awaited' warning

    backend.run(main)


def test_outside_any_loop_uses_the_default_runner() -> None:
    """With no event loop in the thread, await_ runs on the default Runner's loop."""

    async def which_loop() -> asyncio.AbstractEventLoop:
        await anyio.sleep(0)
        return asyncio.get_running_loop()

    assert await_(double(1)) == 2
    assert await_(which_loop()) is greenportal.default_runner().loop


def test_bestowed_on_current_task_needs_a_yield(backend: Any) -> None:
    async def main() -> None:
        if backend.is_trio:
            import trio

            task: Any = trio.lowlevel.current_task()
            hint = "trio.sleep(0)"
        else:
            task = asyncio.current_task()
            hint = "asyncio.sleep(0)"
        greenportal.bestow_portal(task)
        assert not has_portal()
        assert not has_portal(task)
        with pytest.raises(RuntimeError, match=r"not active yet.*" + re.escape(hint)):
            await_(double(1))
        await anyio.sleep(0)
        assert has_portal()
        assert await_(double(2)) == 4

    backend.run(main)


def test_await_in_sync_portal_without_awaiting(backend: Any) -> None:
    """with_portal_run_sync whose function never awaits returns its value."""

    async def main() -> None:
        assert await with_portal_run_sync(lambda: 5) == 5
        with pytest.raises(Boom):
            await with_portal_run_sync(_raise_boom)

    backend.run(main)


def _raise_boom() -> None:
    raise Boom


def test_unsupported_library_is_named() -> None:
    sniffio = pytest.importorskip("sniffio")
    token = sniffio.current_async_library_cvar.set("curio")
    try:
        coro = double(1)
        with pytest.raises(RuntimeError, match="greenportal does not support curio"):
            await_(coro)
        assert coro.cr_frame is None
    finally:
        sniffio.current_async_library_cvar.reset(token)


def test_asyncio_program_never_imports_trio() -> None:
    import subprocess

    script = (
        "import sys, asyncio, greenportal\n"
        "async def main():\n"
        "    await greenportal.ensure_portal()\n"
        "    greenportal.await_(asyncio.sleep(0))\n"
        "    await greenportal.with_portal_run_tree(asyncio.sleep, 0)\n"
        "    assert not greenportal.has_portal(asyncio.ensure_future(asyncio.sleep(0)))\n"
        "asyncio.run(main())\n"
        "assert 'trio' not in sys.modules, 'trio was imported'\n"
    )
    subprocess.run([sys.executable, "-W", "error", "-c", script], check=True, timeout=60)


def test_exception_state_survives_await_in_except_block(backend: Any) -> None:
    """sys.exc_info(), bare raise and __context__ behave as around a native await."""

    def handler() -> BaseException:
        try:
            raise KeyError("handled")
        except KeyError:
            await_(anyio.sleep(0))
            assert isinstance(sys.exc_info()[1], KeyError)
            try:
                await_(explode(Boom("inner")))
            except Boom as inner:
                assert isinstance(inner.__context__, KeyError)
            try:
                raise  # still re-raises the KeyError after awaiting
            except KeyError as exc:
                return exc
        raise AssertionError("unreachable")

    async def main() -> None:
        exc = await with_portal_run_sync(handler)
        assert exc.args == ("handled",)
        assert sys.exc_info() == (None, None, None)

    backend.run(main)
