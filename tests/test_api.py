"""The portal-making API: has_portal, bestow_portal, checkpoints, @portal, tree portals, reprs."""

from __future__ import annotations

import asyncio
import logging
import re
from typing import Any

import anyio
import pytest

import greenportal
from greenportal import (
    await_,
    bestow_portal,
    ensure_portal,
    has_portal,
    portals_for_children,
    portals_for_tree,
    with_portal_run,
    with_portal_run_sync,
    with_portal_run_tree,
)


def current_task(backend: Any) -> Any:
    if backend.is_trio:
        import trio

        return trio.lowlevel.current_task()
    return asyncio.current_task()


def can_await() -> bool:
    """Whether await_ works here, checked by doing it."""
    try:
        await_(anyio.sleep(0))
    except RuntimeError:
        return False
    return True


def test_has_portal_lifecycle(backend: Any) -> None:
    async def main() -> None:
        assert not has_portal()
        assert await with_portal_run_sync(has_portal)
        assert not has_portal()

        async def inside() -> bool:
            return has_portal() and has_portal(current_task(backend))

        assert await with_portal_run(inside)
        await ensure_portal()
        assert has_portal() and has_portal(current_task(backend))
        assert await with_portal_run_sync(can_await)

    assert not has_portal()
    backend.run(main)


def test_bestow_portal_on_another_task(backend: Any) -> None:
    """A bestowed portal is active before the other task runs again, even if it is scheduled."""

    async def main() -> None:
        tasks: list[Any] = []
        results: list[bool] = []

        async def child(started: anyio.Event, go: anyio.Event) -> None:
            tasks.append(current_task(backend))
            started.set()
            await go.wait()
            results.append(can_await())

        async with anyio.create_task_group() as tg:
            started, go = anyio.Event(), anyio.Event()
            tg.start_soon(child, started, go)
            await started.wait()
            assert not has_portal(tasks[0])
            go.set()  # the child is now scheduled to run...
            bestow_portal(tasks[0])  # ...and must still get its portal first
            bestow_portal(tasks[0])  # idempotent
            assert has_portal(tasks[0])
        assert results == [True]

    backend.run(main)


def test_bestow_portal_rejects_bad_input(backend: Any) -> None:
    async def main() -> None:
        with pytest.raises(TypeError, match=r"expected an asyncio\.Task or a trio\.lowlevel\.Task"):
            bestow_portal(object())
        if not backend.is_trio:

            async def quick() -> None:
                pass

            task = asyncio.ensure_future(quick())
            await task
            with pytest.raises(RuntimeError, match="already finished"):
                bestow_portal(task)

    backend.run(main)


def test_ensure_portal_is_a_checkpoint_and_with_portal_run_is_not(backend: Any) -> None:
    """ensure_portal lets other tasks run (and can be cancelled); with_portal_run* add nothing."""
    order: list[str] = []

    async def other() -> None:
        order.append("other ran")

    async def main() -> None:
        async with anyio.create_task_group() as tg:
            tg.start_soon(other)
            await with_portal_run_sync(lambda: order.append("sync ran"))
            await with_portal_run(_no_op)
            order.append("no yield yet")
            await ensure_portal()
            order.append("after ensure_portal")
        with anyio.CancelScope() as scope:
            scope.cancel()
            await ensure_portal()  # already has a portal: still a cancellation point
            order.append("not reached")

    backend.run(main)
    if backend.is_trio:
        # Trio shuffles each batch of runnable tasks, so only the start is
        # fixed; test_trio_checkpoint_accounting covers the checkpoint there.
        assert order[:2] == ["sync ran", "no yield yet"]
        assert sorted(order[2:]) == ["after ensure_portal", "other ran"]
    else:
        assert order == ["sync ran", "no yield yet", "other ran", "after ensure_portal"]


async def _no_op() -> None:
    pass


def test_trio_checkpoint_accounting() -> None:
    trio = pytest.importorskip("trio")
    from trio.testing import assert_checkpoints, assert_no_checkpoints

    async def main() -> None:
        with assert_no_checkpoints():
            await with_portal_run_sync(lambda: None)
            await with_portal_run(_no_op)
            await with_portal_run_tree(_no_op)
        with assert_checkpoints():
            await ensure_portal()
        with assert_checkpoints():
            await ensure_portal()
        with assert_checkpoints():
            await_(trio.sleep(0))

    trio.run(main)


def test_portal_decorator(backend: Any) -> None:
    @greenportal.portal
    def sync_service(x: int) -> int:
        return await_(_double(x)) + 1

    @greenportal.portal
    async def async_service(x: int) -> int:
        return sync_helper(x)

    def sync_helper(x: int) -> int:
        return await_(_double(x))

    async def main() -> None:
        assert await sync_service(4) == 9
        assert await async_service(5) == 10
        assert sync_service.__name__ == "sync_service"
        assert not has_portal()

    backend.run(main)
    with pytest.raises(TypeError, match="@portal needs a function"):
        greenportal.portal(42)  # type: ignore[call-overload]


async def _double(x: int) -> int:
    await anyio.sleep(0)
    return 2 * x


def test_tree_portals_reach_grandchildren(backend: Any) -> None:
    """with_portal_run_tree: the function and every task under it, transitively."""
    seen: dict[str, bool] = {}

    async def leaf(name: str) -> None:
        seen[name] = can_await()

    async def child(name: str) -> None:
        seen[name] = can_await()
        async with anyio.create_task_group() as tg:
            tg.start_soon(leaf, name + ".leaf")

    async def tree() -> None:
        seen["root"] = can_await()
        async with anyio.create_task_group() as tg:
            tg.start_soon(child, "a")
            tg.start_soon(child, "b")

    async def main() -> None:
        await with_portal_run_tree(tree)
        async with anyio.create_task_group() as tg:  # outside the scope: no portals
            tg.start_soon(leaf, "outside")

    backend.run(main)
    assert seen == {
        "root": True,
        "a": True,
        "b": True,
        "a.leaf": True,
        "b.leaf": True,
        "outside": False,
    }


def test_portals_for_children_not_self(backend: Any) -> None:
    seen: dict[str, bool] = {}

    async def child() -> None:
        seen["child"] = can_await()

    async def main() -> None:
        with portals_for_children():
            seen["self"] = has_portal()
            async with anyio.create_task_group() as tg:
                tg.start_soon(child)

    backend.run(main)
    assert seen == {"self": False, "child": True}


def test_portals_for_tree_is_scoped(backend: Any) -> None:
    seen: list[tuple[str, bool]] = []

    async def child() -> None:
        seen.append(("child", can_await()))

    async def main() -> None:
        async with portals_for_tree():
            seen.append(("inside", can_await()))
            async with anyio.create_task_group() as tg:
                tg.start_soon(child)
        seen.append(("after", has_portal()))
        await anyio.sleep(0)  # the task still runs natively after the portal left
        async with anyio.create_task_group() as tg:
            tg.start_soon(child)
        await ensure_portal()  # and can get a new one
        seen.append(("again", can_await()))

    backend.run(main)
    assert seen == [
        ("inside", True),
        ("child", True),
        ("after", False),
        ("child", False),
        ("again", True),
    ]


def test_auto_portal_instrument_for_whole_trio_run() -> None:
    trio = pytest.importorskip("trio")
    seen: list[bool] = []

    async def child() -> None:
        seen.append(can_await())

    async def main() -> None:
        seen.append(can_await())
        async with trio.open_nursery() as nursery:
            nursery.start_soon(child)

    trio.run(main, instruments=[greenportal.AutoPortalInstrument()])
    assert seen == [True, True]


def test_asyncio_tree_chains_existing_factory(aio_backend: Any) -> None:
    """Our factory wraps the loop's factory and is removed when the scope ends."""

    async def main() -> None:
        loop = asyncio.get_running_loop()
        before = loop.get_task_factory()

        async def tree() -> None:
            assert loop.get_task_factory() is not before
            task = asyncio.ensure_future(_double(1))
            assert aio_backend.task_type_ok(task)
            assert await task == 2

        await with_portal_run_tree(tree)
        assert loop.get_task_factory() is before

    aio_backend.run(main)


def test_task_repr_and_stack_name_the_user_coroutine(aio_backend: Any) -> None:
    async def user_coroutine_name(started: asyncio.Event) -> None:
        await ensure_portal()
        started.set()
        await_(asyncio.sleep(10))

    async def main() -> None:
        started = asyncio.Event()
        task = asyncio.ensure_future(user_coroutine_name(started))
        await started.wait()
        assert re.search(r"coro=<.*user_coroutine_name\(\) running at .*test_api\.py", repr(task))
        assert "user_coroutine_name" in [f.f_code.co_name for f in task.get_stack()]
        assert task.get_coro().__name__ == "user_coroutine_name"
        task.cancel()
        with pytest.raises(asyncio.CancelledError):
            await task

    aio_backend.run(main)


def test_debug_mode_slow_callback_log_names_user_code(caplog: Any) -> None:
    """asyncio's debug log of a slow step names the user's coroutine, not ours."""
    from .conftest import Backend

    def slow_sync() -> None:
        import time

        time.sleep(0.02)
        await_(asyncio.sleep(0))

    async def blocking_coroutine() -> None:
        await ensure_portal()
        slow_sync()

    async def main() -> None:
        asyncio.get_running_loop().slow_callback_duration = 0.01
        await asyncio.ensure_future(blocking_coroutine())

    with caplog.at_level(logging.WARNING, logger="asyncio"):
        Backend("asyncio-debug").run(main)
    messages = [r.getMessage() for r in caplog.records if "Executing" in r.getMessage()]
    assert any("blocking_coroutine()" in m for m in messages), messages


def test_tasks_created_inside_a_portal_do_not_start_eagerly(aio_backend: Any) -> None:
    """Under an eager factory, only tasks created outside portal greenlets start eagerly.

    A first step run on a portal greenlet would make it the parent of any
    greenlet the new task creates (SQLAlchemy's greenlet_spawn does), which
    breaks when the task later resumes on the loop's greenlet.
    """
    started: list[str] = []

    async def mark(name: str) -> None:
        started.append(name)

    def sync_spawn() -> Any:
        task = asyncio.ensure_future(mark("from portal"))
        started.append("after create (portal)")
        return task

    async def main() -> None:
        task = asyncio.ensure_future(mark("outside"))
        started.append("after create (outside)")
        await task
        await with_portal_run_sync(lambda: await_(sync_spawn()))

    aio_backend.run(main)
    if aio_backend.eager:
        assert started[:2] == ["outside", "after create (outside)"]
    else:
        assert started[:2] == ["after create (outside)", "outside"]
    assert started[2:] == ["after create (portal)", "from portal"]


@pytest.mark.parametrize("anyio_backend", ["asyncio", "trio"])
def test_under_anyio_run(anyio_backend: str) -> None:
    """anyio.run() on either backend: portals, await_, tree portals."""
    if anyio_backend == "trio":
        pytest.importorskip("trio")

    async def child(results: list[int]) -> None:
        results.append(await_(_double(1)))

    async def main() -> list[int]:
        results: list[int] = []
        await ensure_portal()
        results.append(await_(_double(2)))
        with portals_for_children():
            async with anyio.create_task_group() as tg:
                tg.start_soon(child, results)
        return results

    assert sorted(anyio.run(main, backend=anyio_backend)) == [2, 4]


def test_tree_task_cancelled_before_its_first_step(aio_backend: Any) -> None:
    """A portal-wrapped task cancelled before it ever ran ends cancelled, body unrun."""
    ran: list[str] = []

    async def body() -> None:
        ran.append("ran")

    async def tree() -> None:
        # Created inside a portal, so not started eagerly even by an eager factory.
        task = asyncio.get_running_loop().create_task(body())
        assert not task.done()
        task.cancel()
        with pytest.raises(asyncio.CancelledError):
            await task
        assert task.cancelled()

    aio_backend.run(with_portal_run_tree, tree)
    assert ran == []


def test_trio_task_introspection_sees_user_code() -> None:
    trio = pytest.importorskip("trio")

    async def user_task_body(started: Any) -> None:
        await ensure_portal()
        started.set()
        await_(trio.sleep_forever())

    async def main() -> None:
        async with trio.open_nursery() as nursery:
            started = trio.Event()
            nursery.start_soon(user_task_body, started)
            await started.wait()
            (task,) = nursery.child_tasks
            names = [frame.f_code.co_name for frame, _ in task.iter_await_frames()]
            assert names[0] == "user_task_body"
            assert task.coro.cr_frame.f_code.co_name == "user_task_body"
            nursery.cancel_scope.cancel()

    trio.run(main)
