"""Context variables, and nesting: await_ in await_, portals in portals, foreign greenlets."""

from __future__ import annotations

import contextvars
from typing import Any

import anyio
import greenlet

import greenportal
from greenportal import await_, ensure_portal, has_portal, with_portal_run, with_portal_run_sync

user: contextvars.ContextVar[str] = contextvars.ContextVar("user", default="nobody")


def test_sync_code_sees_and_sets_the_tasks_context(backend: Any) -> None:
    """Sync code reads the task's variables; its set() is seen by later native code."""

    def sync_layer() -> str:
        seen = user.get()
        await_(anyio.sleep(0))
        user.set(seen + "+sync")
        return seen

    async def task_body(name: str, results: dict[str, tuple[str, str]]) -> None:
        user.set(name)
        await ensure_portal()
        seen = sync_layer()
        await anyio.sleep(0.001)
        results[name] = (seen, user.get())

    async def main() -> None:
        results: dict[str, tuple[str, str]] = {}
        async with anyio.create_task_group() as tg:
            for name in ("alice", "bob", "carol"):
                tg.start_soon(task_body, name, results)
        assert results == {n: (n, n + "+sync") for n in ("alice", "bob", "carol")}
        assert user.get() == "nobody"  # nothing leaked into the parent

    backend.run(main)


def test_inline_portal_context(backend: Any) -> None:
    """with_portal_run_sync runs in the caller's context, both ways."""

    def body() -> str:
        before = user.get()
        user.set("changed in sync")
        await_(anyio.sleep(0))
        return before

    async def main() -> None:
        user.set("caller")
        assert await with_portal_run_sync(body) == "caller"
        assert user.get() == "changed in sync"

    backend.run(main)


def test_context_copy_run_inside_portal(backend: Any) -> None:
    """Sync code may run a copied context around await_ without disturbing the task's."""

    def in_copy() -> str:
        user.set("inside copy")
        await_(anyio.sleep(0))
        return user.get()

    def body() -> str:
        return contextvars.copy_context().run(in_copy)

    async def main() -> None:
        user.set("task")
        assert await with_portal_run_sync(body) == "inside copy"
        assert user.get() == "task"

    backend.run(main)


async def level3() -> int:
    await anyio.sleep(0)
    return 3


def sync_level2() -> int:
    return await_(level3()) * 10


async def async_level1() -> int:
    await anyio.sleep(0)
    return sync_level2() + 1


def test_nested_await(backend: Any) -> None:
    """await_ on a coroutine whose sync code calls await_ again, three levels deep."""

    def top() -> int:
        return await_(async_level1()) + await_(async_level1())

    async def main() -> None:
        assert await with_portal_run_sync(top) == 62

    backend.run(main)


def test_portals_inside_portals(backend: Any) -> None:
    """Every way of asking for a portal inside another reuses or nests cleanly."""

    async def innermost() -> str:
        assert has_portal()
        await ensure_portal()  # already has one: no new portal, still a checkpoint
        return await_(with_portal_run_sync(lambda: await_(level3()) and "deep"))

    def sync_mid() -> str:
        return await_(with_portal_run(innermost))

    async def main() -> None:
        assert not has_portal()
        assert await with_portal_run(with_portal_run_sync, sync_mid) == "deep"
        assert not has_portal()
        await ensure_portal()
        assert await with_portal_run(innermost) == "deep"

    backend.run(main)


def test_await_inside_foreign_greenlet(backend: Any) -> None:
    """A plain greenlet started inside a portal may call await_; its parent is untouched."""

    def in_greenlet() -> str:
        await_(anyio.sleep(0.001))
        return "from greenlet"

    def sync_body() -> str:
        return greenlet.greenlet(in_greenlet).switch()  # type: ignore[no-any-return]

    async def main() -> None:
        assert await with_portal_run_sync(sync_body) == "from greenlet"

    backend.run(main)


def test_greenback_style_decorated_helpers(backend: Any) -> None:
    """autoawait'd helpers compose with nesting."""

    @greenportal.autoawait
    async def fetch(x: int) -> int:
        await anyio.sleep(0)
        return x + 1

    async def main() -> None:
        await ensure_portal()
        assert fetch(fetch(1)) == 3

    backend.run(main)
