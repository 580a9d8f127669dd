"""Cancellation reaches sync code blocked in await_ exactly as it reaches native awaits."""

from __future__ import annotations

import asyncio
import sys
from typing import Any

import anyio
import pytest

from greenportal import async_context, await_, ensure_portal, with_portal_run_sync


def blocked_forever(log: list[str]) -> None:
    """Sync code that waits forever; records how it was left."""
    try:
        await_(anyio.sleep_forever())
    except BaseException as exc:
        log.append(f"raised {type(exc).__name__}")
        raise
    finally:
        log.append("finally")


def test_move_on_after(backend: Any) -> None:
    """A timeout scope around sync code cancels it; finally runs; the scope swallows it."""
    log: list[str] = []

    async def main() -> None:
        with anyio.move_on_after(0.01) as scope:
            await with_portal_run_sync(blocked_forever, log)
        assert scope.cancelled_caught

    backend.run(main)
    cancelled = "Cancelled" if backend.is_trio else "CancelledError"
    assert log == [f"raised {cancelled}", "finally"]


def test_task_group_cancel(backend: Any) -> None:
    """Cancelling a task group reaches every child blocked in await_."""
    logs: list[list[str]] = [[], [], []]

    async def child(log: list[str]) -> None:
        await ensure_portal()
        blocked_forever(log)

    async def main() -> None:
        async with anyio.create_task_group() as tg:
            for log in logs:
                tg.start_soon(child, log)
            await anyio.wait_all_tasks_blocked()  # every child is in await_
            tg.cancel_scope.cancel()

    backend.run(main)
    for log in logs:
        assert log[-1] == "finally"


def test_shielded_await_completes(backend: Any) -> None:
    """A shield inside sync code protects its await_ from an outer cancel."""
    log: list[str] = []

    def shielded() -> None:
        with anyio.CancelScope(shield=True):
            await_(anyio.sleep(0.02))
            log.append("shielded sleep finished")
        await_(anyio.sleep(1))  # the outer cancel lands here
        log.append("not reached")

    async def main() -> None:
        with anyio.move_on_after(0.005):
            await with_portal_run_sync(shielded)

    backend.run(main)
    assert log == ["shielded sleep finished"]


def test_cancel_before_first_await(backend: Any) -> None:
    """A cancel requested before sync code awaits is delivered at its first await_."""
    log: list[str] = []

    def body() -> None:
        log.append("started")
        blocked_forever(log)

    async def main() -> None:
        with anyio.CancelScope() as scope:
            scope.cancel()
            await with_portal_run_sync(body)

    backend.run(main)
    assert log[0] == "started"
    assert log[-1] == "finally"


def test_trio_nursery_cancel_and_move_on() -> None:
    trio_testing = pytest.importorskip("trio.testing")
    trio = pytest.importorskip("trio")
    log: list[str] = []

    async def child() -> None:
        await ensure_portal()
        blocked_forever(log)

    async def main() -> None:
        async with trio.open_nursery() as nursery:
            nursery.start_soon(child)
            # not a fixed sleep: under the sanitizer the child may not yet
            # have reached await_ after 10 ms, and is then cancelled earlier
            await trio_testing.wait_all_tasks_blocked()
            nursery.cancel_scope.cancel()
        with trio.move_on_after(0.01) as scope:
            await with_portal_run_sync(blocked_forever, log)
        assert scope.cancelled_caught

    trio.run(main)
    assert log == ["raised Cancelled", "finally"] * 2


def test_asyncio_task_cancel(aio_backend: Any) -> None:
    """task.cancel() raises CancelledError in the sync frames and cancels the task."""
    log: list[str] = []

    async def worker() -> None:
        await ensure_portal()
        blocked_forever(log)

    async def main() -> None:
        task = asyncio.ensure_future(worker())
        await anyio.wait_all_tasks_blocked()  # the worker is in await_
        task.cancel("stop now")
        with pytest.raises(asyncio.CancelledError):
            await task
        assert task.cancelled()

    aio_backend.run(main)
    assert log == ["raised CancelledError", "finally"]


def test_asyncio_cancel_message_and_catch(aio_backend: Any) -> None:
    """Sync code may catch CancelledError and return, as native code may."""

    def stubborn() -> str:
        try:
            await_(asyncio.sleep(10))
        except asyncio.CancelledError as exc:
            return f"caught {exc.args}"
        return "slept"

    async def worker() -> str:
        await ensure_portal()
        return stubborn()

    async def main() -> None:
        task = asyncio.ensure_future(worker())
        await anyio.wait_all_tasks_blocked()  # the worker is in await_
        task.cancel("msg")
        assert await task == "caught ('msg',)"

    aio_backend.run(main)


@pytest.mark.skipif(sys.version_info < (3, 11), reason="asyncio.timeout is 3.11+")
def test_asyncio_timeout_in_async_and_sync(aio_backend: Any) -> None:
    log: list[str] = []

    def sync_timeout() -> None:
        with async_context(asyncio.timeout(0.01)):  # type: ignore[attr-defined]
            await_(asyncio.sleep(10))

    async def main() -> None:
        with pytest.raises(TimeoutError):
            async with asyncio.timeout(0.01):  # type: ignore[attr-defined]
                await with_portal_run_sync(blocked_forever, log)
        with pytest.raises(TimeoutError):
            await with_portal_run_sync(sync_timeout)
        task = asyncio.current_task()
        assert task is not None and task.cancelling() == 0

    aio_backend.run(main)
    assert log == ["raised CancelledError", "finally"]


@pytest.mark.skipif(sys.version_info < (3, 11), reason="asyncio.TaskGroup is 3.11+")
def test_asyncio_taskgroup_failure_cancels_siblings(aio_backend: Any) -> None:
    log: list[str] = []

    class Failure(Exception):
        pass

    async def sibling() -> None:
        await with_portal_run_sync(blocked_forever, log)

    async def failing() -> None:
        await anyio.wait_all_tasks_blocked()  # the sibling is in await_
        raise Failure

    async def main() -> None:
        with pytest.raises(BaseExceptionGroup) as info:  # noqa: F821
            async with asyncio.TaskGroup() as tg:  # type: ignore[attr-defined]
                tg.create_task(sibling())
                tg.create_task(failing())
        assert info.group_contains(Failure)  # type: ignore[attr-defined]

    aio_backend.run(main)
    assert log == ["raised CancelledError", "finally"]


def test_cancel_while_nested_await(backend: Any) -> None:
    """Cancellation unwinds every level of nested await_ and sync frames."""
    log: list[str] = []

    def inner_sync() -> None:
        try:
            await_(anyio.sleep_forever())
        finally:
            log.append("inner finally")

    async def middle() -> None:
        try:
            inner_sync()
        finally:
            log.append("middle finally")

    def outer_sync() -> None:
        try:
            await_(middle())
        finally:
            log.append("outer finally")

    async def main() -> None:
        with anyio.move_on_after(0.01):
            await with_portal_run_sync(outer_sync)

    backend.run(main)
    assert log == ["inner finally", "middle finally", "outer finally"]
