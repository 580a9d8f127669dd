"""greenportal.sqlalchemy: SQLAlchemy's asyncio ORM from sync code inside portals.

Real SQLAlchemy on aiosqlite (a database file) and on asyncpg (a throwaway
PostgreSQL cluster), on every asyncio configuration; SQLAlchemy's greenlet
protocol itself also on Trio.  Nothing here reaches into SQLAlchemy: the sync
code uses the ORM's ordinary sync API (``AsyncSession.sync_session``,
attribute access), as a sync application layer would.
"""

from __future__ import annotations

import asyncio
import time
import warnings
from collections.abc import Awaitable, Callable
from pathlib import Path
from typing import Any

import pytest

import greenportal
from greenportal import await_, ensure_portal, with_portal_run_sync

from .conftest import Backend, gc_collect_harder

pytest.importorskip("aiosqlite")
sa = pytest.importorskip("sqlalchemy")

from sqlalchemy import ForeignKey, select  # noqa: E402
from sqlalchemy.exc import IntegrityError, MissingGreenlet  # noqa: E402
from sqlalchemy.ext.asyncio import AsyncEngine, AsyncSession, create_async_engine  # noqa: E402
from sqlalchemy.orm import (  # noqa: E402
    DeclarativeBase,
    Mapped,
    Session,
    mapped_column,
    relationship,
)
from sqlalchemy.util import await_only, greenlet_spawn  # noqa: E402


class Base(DeclarativeBase):
    pass


class Author(Base):
    __tablename__ = "authors"
    id: Mapped[int] = mapped_column(primary_key=True)
    name: Mapped[str] = mapped_column(unique=True)
    books: Mapped[list[Book]] = relationship(back_populates="author", order_by="Book.id")


class Book(Base):
    __tablename__ = "books"
    id: Mapped[int] = mapped_column(primary_key=True)
    title: Mapped[str]
    author_id: Mapped[int] = mapped_column(ForeignKey("authors.id"))
    author: Mapped[Author] = relationship(back_populates="books")


# --- the sync application layer under test -----------------------------------


def add_author(session: Session, name: str, titles: list[str]) -> int:
    author = Author(name=name, books=[Book(title=t) for t in titles])
    session.add(author)
    session.commit()
    return author.id


def titles_by(session: Session, name: str) -> list[str]:
    author = session.execute(select(Author).where(Author.name == name)).scalar_one()
    # A lazy load: outside SQLAlchemy's greenlet this raised MissingGreenlet.
    return [book.title for book in author.books]


def author_of_first_book(session: Session) -> str:
    book = session.execute(select(Book).order_by(Book.id).limit(1)).scalar_one()
    session.expire(book)  # the next access reloads the row, then lazy loads author
    return book.author.name


# --- engines -------------------------------------------------------------------


def sqlite_url(tmp_path: Path) -> str:
    return f"sqlite+aiosqlite:///{tmp_path / 'orm.sqlite'}"


def asyncpg_url(dsn: str) -> str:
    pytest.importorskip("asyncpg")
    return dsn.replace("postgresql://", "postgresql+asyncpg://", 1)


@pytest.fixture(params=["aiosqlite", "asyncpg"])
def db_url(request: pytest.FixtureRequest, tmp_path: Path) -> str:
    if request.param == "aiosqlite":
        return sqlite_url(tmp_path)
    return asyncpg_url(request.getfixturevalue("postgres_dsn"))


async def fresh_engine(url: str) -> AsyncEngine:
    engine = create_async_engine(url, pool_size=10) if "asyncpg" in url else None
    engine = engine or create_async_engine(url)
    async with engine.begin() as conn:
        await conn.run_sync(Base.metadata.drop_all)
        await conn.run_sync(Base.metadata.create_all)
    return engine


def run_with_engine(
    backend: Backend, url: str, body: Callable[[AsyncEngine], Awaitable[Any]]
) -> Any:
    async def main() -> Any:
        engine = await fresh_engine(url)
        try:
            return await body(engine)
        finally:
            await engine.dispose()

    return backend.run(main)


# --- the ORM from sync code ------------------------------------------------------


def test_enabled_by_default() -> None:
    assert greenportal.sqlalchemy.is_enabled()


def test_orm_with_lazy_loads_from_sync_code(aio_backend: Backend, db_url: str) -> None:
    def application(session: AsyncSession) -> tuple[list[str], str, list[str]]:
        sync = session.sync_session
        add_author(sync, "Le Guin", ["Earthsea", "The Dispossessed"])
        add_author(sync, "Lem", ["Solaris"])
        sync.expire_all()
        return titles_by(sync, "Le Guin"), author_of_first_book(sync), titles_by(sync, "Lem")

    async def body(engine: AsyncEngine) -> Any:
        async with AsyncSession(engine) as session:
            return await with_portal_run_sync(application, session)

    result = run_with_engine(aio_backend, db_url, body)
    assert result == (["Earthsea", "The Dispossessed"], "Le Guin", ["Solaris"])


def test_errors_and_rollback_from_sync_code(aio_backend: Backend, db_url: str) -> None:
    def application(session: AsyncSession) -> list[str]:
        sync = session.sync_session
        add_author(sync, "Borges", ["Ficciones"])
        with pytest.raises(IntegrityError):
            add_author(sync, "Borges", ["A duplicate"])  # unique name: the driver's error
        sync.rollback()
        sync.expire_all()
        return titles_by(sync, "Borges")

    async def body(engine: AsyncEngine) -> Any:
        await ensure_portal()
        async with AsyncSession(engine) as session:
            return application(session)

    assert run_with_engine(aio_backend, db_url, body) == ["Ficciones"]


def test_concurrent_sessions_do_not_block_the_loop(aio_backend: Backend, db_url: str) -> None:
    """Many tasks run sync ORM code at once; a ticker keeps ticking meanwhile."""
    n = 6

    def application(session: AsyncSession, i: int) -> list[str]:
        sync = session.sync_session
        add_author(sync, f"author{i}", [f"book{i}a", f"book{i}b"])
        sync.expire_all()
        if "asyncpg" in db_url:
            sync.execute(sa.text("SELECT pg_sleep(0.3)"))
        else:
            await_(asyncio.sleep(0.3))  # aiosqlite's thread serializes SQL anyway
        return titles_by(sync, f"author{i}")

    async def body(engine: AsyncEngine) -> tuple[list[Any], float, int]:
        ticks = 0

        async def ticker() -> None:
            nonlocal ticks
            while True:
                await asyncio.sleep(0.01)
                ticks += 1

        async def worker(i: int) -> list[str]:
            async with AsyncSession(engine) as session:
                return await with_portal_run_sync(application, session, i)

        tick_task = asyncio.ensure_future(ticker())
        start = time.monotonic()
        results = await asyncio.gather(*(worker(i) for i in range(n)))
        elapsed = time.monotonic() - start
        tick_task.cancel()
        return results, elapsed, ticks

    results, elapsed, ticks = run_with_engine(aio_backend, db_url, body)
    assert results == [[f"book{i}a", f"book{i}b"] for i in range(n)]
    assert elapsed < n * 0.3 * 0.7, f"the sessions did not overlap ({elapsed:.2f}s)"
    assert ticks >= 10, f"the loop was blocked (ticker ran {ticks} times)"


def test_run_sync_and_greenlet_spawn_still_work_inside_a_portal(
    aio_backend: Backend, db_url: str
) -> None:
    """SQLAlchemy's own greenlet (AsyncSession.run_sync), entered from a portal."""

    def inside_sqlalchemy_greenlet(sync: Session) -> list[str]:
        add_author(sync, "Calvino", ["Invisible Cities"])
        sync.expire_all()
        titles = titles_by(sync, "Calvino")
        # greenportal's await_ inside SQLAlchemy's greenlet, too.
        await_(asyncio.sleep(0))
        return titles

    def application(session: AsyncSession) -> list[str]:
        return await_(session.run_sync(inside_sqlalchemy_greenlet))

    async def body(engine: AsyncEngine) -> Any:
        async with AsyncSession(engine) as session:
            return await with_portal_run_sync(application, session)

    assert run_with_engine(aio_backend, db_url, body) == ["Invisible Cities"]


def assert_missing_greenlet(fn: Callable[[], object]) -> None:
    """*fn* fails with SQLAlchemy's MissingGreenlet (maybe wrapped in a StatementError)."""
    # aiosqlite's cursor() is an awaitable wrapper, not a coroutine, which
    # SQLAlchemy cannot close when it refuses it: its "never awaited" warning
    # is SQLAlchemy's and aiosqlite's business, not this test's.
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", RuntimeWarning)
        try:
            fn()
        except (MissingGreenlet, sa.exc.StatementError) as error:
            assert isinstance(getattr(error, "orig", error), MissingGreenlet), error
        else:
            pytest.fail("no MissingGreenlet")
        gc_collect_harder()


def test_missing_greenlet_outside_portals(aio_backend: Backend, tmp_path: Path) -> None:
    """Without a portal, and with the bridge disabled, SQLAlchemy refuses as before."""

    async def body(engine: AsyncEngine) -> None:
        async with AsyncSession(engine) as session:
            await session.run_sync(add_author, "Ende", ["Momo"])
            session.expire_all()
            author = (await session.execute(select(Author))).scalar_one()
            # A lazy load on the loop, outside any portal.
            assert_missing_greenlet(lambda: author.books)
            await session.rollback()

            greenportal.sqlalchemy.disable()
            try:
                assert not greenportal.sqlalchemy.is_enabled()
                in_portal = with_portal_run_sync(
                    lambda: assert_missing_greenlet(lambda: author.books)
                )
                await in_portal
            finally:
                greenportal.sqlalchemy.enable()
            await session.rollback()
            assert greenportal.sqlalchemy.is_enabled()
            books = await with_portal_run_sync(lambda: [b.title for b in author.books])
            assert books == ["Momo"]

    run_with_engine(aio_backend, sqlite_url(tmp_path), body)


def test_missing_greenlet_in_a_thread_without_loop_and_in_a_plain_greenlet() -> None:
    import greenlet

    def attempt() -> None:
        assert_missing_greenlet(lambda: await_only(asyncio.sleep(0)))

    attempt()
    greenlet.greenlet(attempt).switch()


# --- SQLAlchemy's greenlet protocol, on every backend -------------------------


def test_sqlalchemy_await_in_portal_on_every_backend(backend: Backend) -> None:
    """SQLAlchemy's await_ of any awaitable, nested, raising, in many tasks at once."""
    import anyio

    log: list[str] = []

    async def inner(x: int) -> int:
        await anyio.sleep(0.2)
        # sync code called from the awaitable uses SQLAlchemy's await_ again
        return sync_again(x) + 1

    def sync_again(x: int) -> int:
        return await_only(_value_after_sleep(x))

    async def fails() -> None:
        await anyio.sleep(0)
        raise KeyError("from the awaitable")

    def sync_layer(i: int) -> int:
        value = await_only(inner(i))
        try:
            await_only(fails())
        except KeyError:
            log.append("caught")
        value += await_(_value_after_sleep(100))  # ours, mixed in
        return value

    async def one(i: int) -> int:
        return await with_portal_run_sync(sync_layer, i)

    async def main() -> list[int]:
        results: list[int] = [0] * 5

        async def put(i: int) -> None:
            results[i] = await one(i)

        start = time.monotonic()
        async with anyio.create_task_group() as tg:
            for i in range(5):
                tg.start_soon(put, i)
        elapsed = time.monotonic() - start
        assert elapsed < 5 * 0.2 * 0.6, f"the tasks did not overlap ({elapsed:.2f}s)"
        return results

    assert backend.run(main) == [101 + i for i in range(5)]
    assert log == ["caught"] * 5


async def _value_after_sleep(x: int) -> int:
    import anyio

    await anyio.sleep(0)
    return x


def test_cancelled_while_in_sqlalchemy_await(aio_backend: Backend) -> None:
    log: list[str] = []

    def blocked() -> None:
        try:
            await_only(asyncio.sleep(10))
        finally:
            log.append("sync finally")

    async def worker() -> None:
        await with_portal_run_sync(blocked)

    async def main() -> None:
        task = asyncio.ensure_future(worker())
        await asyncio.sleep(0.01)
        task.cancel()
        with pytest.raises(asyncio.CancelledError):
            await task
        # The portal machinery is intact afterwards, bridge included.
        assert await with_portal_run_sync(lambda: await_only(_value_after_sleep(7))) == 7

    aio_backend.run(main)
    assert log == ["sync finally"]


def test_in_greenlet_reports_portals(aio_backend: Backend) -> None:
    from sqlalchemy.util.concurrency import in_greenlet

    async def main() -> tuple[bool, bool, bool]:
        outside = in_greenlet()
        inside = await with_portal_run_sync(in_greenlet)
        spawned = await greenlet_spawn(in_greenlet)
        return outside, inside, spawned

    assert aio_backend.run(main) == (False, True, True)


def test_driver_greenlets_are_not_left_behind(aio_backend: Backend) -> None:
    import gc

    import greenlet

    def sync_layer() -> int:
        return sum(await_only(_value_after_sleep(i)) for i in range(50))

    async def main() -> int:
        return await with_portal_run_sync(sync_layer)

    assert aio_backend.run(main) == sum(range(50))
    gc.collect()
    drivers = [
        o
        for o in gc.get_objects()
        if isinstance(o, greenlet.greenlet) and type(o).__name__ == "_Driver" and not o.dead
    ]
    assert drivers == []


def test_cancel_scope_reaches_sqlalchemy_await_on_every_backend(backend: Backend) -> None:
    import anyio

    log: list[str] = []

    def blocked() -> None:
        try:
            await_only(anyio.sleep(10))
        finally:
            log.append("sync finally")

    async def main() -> int:
        start = time.monotonic()
        with anyio.move_on_after(0.05) as scope:
            await with_portal_run_sync(blocked)
        assert scope.cancelled_caught
        assert time.monotonic() - start < 5
        # The same task can go on using the bridge.
        return await with_portal_run_sync(lambda: await_only(_value_after_sleep(8)))

    assert backend.run(main) == 8
    assert log == ["sync finally"]


# --- which way a wait goes: the hub, or a driver greenlet --------------------------


def count_driver_greenlets(monkeypatch: pytest.MonkeyPatch) -> list[int]:
    """Count the waits that go through a driver greenlet (the rest the hub drives)."""
    bridge = greenportal.sqlalchemy
    armed = [0]
    arm = bridge._arm

    def counting_arm(gr: Any) -> None:
        armed[0] += 1
        arm(gr)

    monkeypatch.setattr(bridge, "_arm", counting_arm)
    return armed


def test_driver_calls_are_driven_by_the_hub(
    aio_backend: Backend, db_url: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    """SQLAlchemy's own awaits (queries, lazy loads, commits) need no driver greenlet."""
    armed = count_driver_greenlets(monkeypatch)

    def application(session: AsyncSession) -> tuple[list[str], str, int]:
        sync = session.sync_session
        add_author(sync, "Tolstoy", ["War and Peace", "Anna Karenina"])
        sync.expire_all()
        titles = titles_by(sync, "Tolstoy")
        name = author_of_first_book(sync)
        own = armed[0]
        # SQLAlchemy's await function called by code outside SQLAlchemy: a driver.
        assert await_only(_value_after_sleep(5)) == 5
        return titles, name, armed[0] - own

    async def body(engine: AsyncEngine) -> Any:
        async with AsyncSession(engine) as session:
            return await with_portal_run_sync(application, session)

    titles, name, user_calls = run_with_engine(aio_backend, db_url, body)
    assert (titles, name) == (["War and Peace", "Anna Karenina"], "Tolstoy")
    assert user_calls == 1
    assert armed[0] == 1, "SQLAlchemy's own awaits went through driver greenlets"


def test_nested_await_inside_what_sqlalchemy_awaits(aio_backend: Backend, tmp_path: Path) -> None:
    """greenportal's await_ inside an awaitable that SQLAlchemy's await_ drives.

    Awaited by code outside SQLAlchemy, the awaitable runs on a driver
    greenlet and a nested await_ works.  Awaited by SQLAlchemy itself (here
    the pool awaiting an ``async_creator``), it runs on the event loop's own
    greenlet: the nested await_ fails with an error that says why, and the
    task, its portal and the bridge go on working.
    """
    import aiosqlite

    def sync_helper(x: int) -> int:
        return await_(_value_after_sleep(x)) + 1

    async def calls_sync_code(x: int) -> int:
        await asyncio.sleep(0)
        return sync_helper(x)

    async def creator() -> Any:
        sync_helper(1)  # sync code that waits, inside SQLAlchemy's own await
        return await aiosqlite.connect(tmp_path / "never.sqlite")

    def application(engine: AsyncEngine) -> tuple[int, str]:
        through_a_driver = await_only(calls_sync_code(41))
        with pytest.raises(RuntimeError, match="handed to the event loop") as caught:
            with engine.sync_engine.connect():
                pass
        # The same task and portal still wait, SQLAlchemy's way and ours.
        assert await_only(_value_after_sleep(3)) == 3
        assert await_(_value_after_sleep(4)) == 4
        return through_a_driver, str(caught.value)

    async def main() -> tuple[int, str]:
        engine = create_async_engine("sqlite+aiosqlite://", async_creator=creator)
        try:
            return await with_portal_run_sync(application, engine)
        finally:
            await engine.dispose()

    result, message = aio_backend.run(main)
    assert result == 42
    assert "use 'await' in that async code" in message.lower()


def test_cancelled_while_the_hub_drives_a_query(aio_backend: Backend, postgres_dsn: str) -> None:
    """Cancelling a task in a query the hub drives: the sync code unwinds, the server stops."""
    url = asyncpg_url(postgres_dsn)
    log: list[str] = []

    def application(session: AsyncSession) -> None:
        try:
            session.sync_session.execute(sa.text("SELECT pg_sleep(10)"))
        finally:
            log.append("sync finally")

    async def main() -> float:
        engine = create_async_engine(url)
        try:
            async with AsyncSession(engine) as session:
                task = asyncio.ensure_future(with_portal_run_sync(application, session))
                await asyncio.sleep(0.3)
                start = time.monotonic()
                task.cancel()
                with pytest.raises(asyncio.CancelledError):
                    await task
                elapsed = time.monotonic() - start
            async with AsyncSession(engine) as session:
                # The bridge works in the next task.
                one = await with_portal_run_sync(
                    lambda: session.sync_session.execute(sa.text("SELECT 1")).scalar_one()
                )
                assert one == 1
            return elapsed
        finally:
            await engine.dispose()

    elapsed = aio_backend.run(main)
    assert elapsed < 5, f"the cancelled query went on for {elapsed:.1f}s"
    assert log == ["sync finally"]


# --- the hub's side of the protocol, on every backend --------------------------------


def test_a_bare_switch_with_an_awaitable_is_awaited_by_the_hub(backend: Backend) -> None:
    """``getcurrent().parent.switch(aw)`` in a portal: SQLAlchemy's protocol, no SQLAlchemy.

    The hub awaits *aw* and resumes the portal greenlet with the result, or
    throws its exception in; cancellation reaches the switch; other tasks run
    meanwhile; a nested await_ is refused with the explanation.
    """
    import anyio
    import greenlet

    def hub_await(aw: Any) -> Any:
        parent = greenlet.getcurrent().parent
        assert parent is not None
        return parent.switch(aw)

    async def slow(x: int) -> int:
        await anyio.sleep(0.2)
        await anyio.sleep(0)
        return x

    async def fails() -> None:
        await anyio.sleep(0)
        raise KeyError("from the awaitable")

    async def nests() -> int:
        await anyio.sleep(0)
        return await_(_value_after_sleep(1))

    log: list[str] = []

    def sync_layer(i: int) -> int:
        value = hub_await(slow(i))
        with pytest.raises(KeyError, match="from the awaitable"):
            hub_await(fails())
        with pytest.raises(RuntimeError, match="no portal greenlet here to suspend"):
            hub_await(nests())
        log.append("done")
        return value + await_(_value_after_sleep(100))

    def blocked() -> None:
        try:
            hub_await(anyio.sleep(10))
        finally:
            log.append("cancelled")

    async def main() -> list[int]:
        results = [0] * 5

        async def put(i: int) -> None:
            results[i] = await with_portal_run_sync(sync_layer, i)

        start = time.monotonic()
        async with anyio.create_task_group() as tg:
            for i in range(5):
                tg.start_soon(put, i)
        assert time.monotonic() - start < 5 * 0.2 * 0.6, "the tasks did not overlap"
        with anyio.move_on_after(0.05) as scope:
            await with_portal_run_sync(blocked)
        assert scope.cancelled_caught
        return results

    assert backend.run(main) == [100 + i for i in range(5)]
    assert log == ["done"] * 5 + ["cancelled"]
