"""A portal's ``cr_await`` shows what the task waits for, inside await_ too."""

from __future__ import annotations

from typing import Any

import greenportal

from .conftest import Backend


def current_coro(backend: Backend) -> Any:
    if backend.is_trio:
        import trio

        return trio.lowlevel.current_task().coro
    import asyncio

    task = asyncio.current_task()
    assert task is not None
    return task.get_coro()


def test_cr_await_is_the_awaitable_await_drives(backend: Backend) -> None:
    seen: dict[str, Any] = {}

    async def leaf(portal_coro: Any) -> str:
        # Running now, inside await_: the task's coroutine is the portal, and
        # its cr_await is this very coroutine (the innermost await_ wins).
        seen["inner"] = portal_coro.cr_await
        seen["inner_frame"] = portal_coro.cr_await.cr_frame.f_code.co_name
        return "done"

    async def middle(portal_coro: Any) -> str:
        return greenportal.await_(leaf(portal_coro))  # a nested await_

    def sync_code(portal_coro: Any) -> str:
        seen["before"] = portal_coro.cr_await
        coro = middle(portal_coro)
        seen["middle"] = coro
        result = greenportal.await_(coro)
        seen["after"] = portal_coro.cr_await
        return result

    async def main() -> str:
        await greenportal.ensure_portal()
        portal_coro = current_coro(backend)
        assert type(portal_coro).__name__ == "Portal"
        return sync_code(portal_coro)

    assert backend.run(main) == "done"
    assert seen["before"] is None  # the wrapped coroutine runs sync code
    assert seen["inner_frame"] == "leaf"
    assert seen["after"] is None


def test_cr_await_while_the_task_is_suspended_in_await_(backend: Backend) -> None:
    """Seen from another task while this one waits: the awaited coroutine."""

    async def main() -> None:
        if backend.is_trio:
            import trio

            event = trio.Event()

            async def wait() -> None:
                await event.wait()

            async with trio.open_nursery() as nursery:
                waiting = wait()
                seen: list[Any] = []

                async def waiter() -> None:
                    await greenportal.ensure_portal()
                    seen.append(trio.lowlevel.current_task())
                    greenportal.await_(waiting)

                nursery.start_soon(waiter)
                await trio.sleep(0.01)
                assert seen[0].coro.cr_await is waiting
                event.set()
            return
        import asyncio

        event = asyncio.Event()
        waiting = event.wait()

        async def waiter() -> None:
            await greenportal.ensure_portal()
            greenportal.await_(waiting)

        task = asyncio.ensure_future(waiter())
        await asyncio.sleep(0.01)
        assert task.get_coro().cr_await is waiting
        event.set()
        await task
        assert task.get_coro().cr_await is None

    backend.run(main)
