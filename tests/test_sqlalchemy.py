"""SQLAlchemy's greenlet bridge and its asyncio ORM, inside greenportal portals.

Real SQLAlchemy on a real aiosqlite database file; asyncio only, as SQLAlchemy's
asyncio extension is.
"""

from __future__ import annotations

import asyncio
from typing import Any

import pytest

from greenportal import await_, ensure_portal

pytest.importorskip("aiosqlite")
sa = pytest.importorskip("sqlalchemy")

from sqlalchemy.ext.asyncio import AsyncSession, create_async_engine  # noqa: E402
from sqlalchemy.orm import DeclarativeBase, Mapped, mapped_column  # noqa: E402
from sqlalchemy.util import await_only, greenlet_spawn  # noqa: E402


class Base(DeclarativeBase):
    pass


class Item(Base):
    __tablename__ = "items"
    id: Mapped[int] = mapped_column(primary_key=True)
    name: Mapped[str]


def test_sqlalchemy_bridge_inside_portal(aio_backend: Any) -> None:
    """SQLAlchemy's greenlet_spawn/await_only run inside a portal, and await_ runs inside them."""

    def sqlalchemy_style(x: int) -> int:
        a = await_only(asyncio.sleep(0, x))  # SQLAlchemy's own bridge
        b = await_(asyncio.sleep(0.001, x))  # ours, inside SQLAlchemy's greenlet
        return a + b

    async def portal_task() -> int:
        await ensure_portal()
        direct = await greenlet_spawn(sqlalchemy_style, 1)
        via_sync = await_(greenlet_spawn(sqlalchemy_style, 10))
        return direct + via_sync

    async def main() -> None:
        results = await asyncio.gather(*(portal_task() for _ in range(5)))
        assert results == [22] * 5

    aio_backend.run(main)


def test_sqlalchemy_orm_from_sync_code_in_portal(aio_backend: Any, tmp_path: Any) -> None:
    """A real SQLAlchemy asyncio engine on aiosqlite, driven from sync code via await_."""

    def repository_add(session: AsyncSession, names: list[str]) -> None:
        session.add_all([Item(name=n) for n in names])
        await_(session.commit())

    def repository_names(session: AsyncSession) -> list[str]:
        rows = await_(session.scalars(sa.select(Item).order_by(Item.id)))
        return [item.name for item in rows]

    async def main() -> None:
        engine = create_async_engine(f"sqlite+aiosqlite:///{tmp_path / 'db.sqlite'}")
        try:
            async with engine.begin() as conn:
                await conn.run_sync(Base.metadata.create_all)
            await ensure_portal()
            async with AsyncSession(engine, expire_on_commit=False) as session:
                repository_add(session, ["a", "b", "c"])
                assert repository_names(session) == ["a", "b", "c"]
        finally:
            await engine.dispose()

    aio_backend.run(main)


def test_cancel_reaches_await_inside_greenlet_spawn(aio_backend: Any) -> None:
    """Cancelling a portal task blocked in our await_ inside SQLAlchemy's greenlet."""
    log: list[str] = []

    def blocked() -> None:
        try:
            await_(asyncio.sleep(10))
        finally:
            log.append("sync finally")

    async def worker() -> None:
        await ensure_portal()
        await greenlet_spawn(blocked)

    async def main() -> None:
        task = asyncio.ensure_future(worker())
        await asyncio.sleep(0.01)
        task.cancel()
        with pytest.raises(asyncio.CancelledError):
            await task
        # The portal still works for other tasks afterwards.
        assert await asyncio.ensure_future(_portal_roundtrip()) == 7

    aio_backend.run(main)
    assert log == ["sync finally"]


async def _portal_roundtrip() -> int:
    await ensure_portal()
    return await_(greenlet_spawn(lambda: await_only(asyncio.sleep(0, 7))))
