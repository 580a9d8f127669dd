"""blocking(cls) in depth: inheritance, translation, generics, where objects live, submit().

Each behaviour runs in a portal and in a to_thread worker on every backend
configuration, and with no event loop (the ``place`` fixture, conftest).
"""

from __future__ import annotations

import concurrent.futures
import contextlib
import inspect
import threading
from collections.abc import AsyncIterator
from typing import Any, Generic, TypeVar

import anyio
import pytest

import greenportal
from greenportal import Runner, blocking, with_portal_run_sync

from .conftest import Backend, Place, run_python

T = TypeVar("T")


class Row:
    def __init__(self, key: str, value: int) -> None:
        self.key = key
        self.value = value


class Base:
    """A plain base class: nothing async at all."""

    kind = "base"

    def describe(self) -> str:
        return f"{self.kind} {type(self).__name__}"


class Table(Base):
    kind = "table"

    def __init__(self, name: str) -> None:
        """Open the table *name*."""
        self.name = name
        self.rows: dict[str, int] = {}
        # Constructors run on the loop: this needs a running task.
        self.made_in_task = anyio.get_current_task() is not None

    async def put(self, key: str, value: int) -> None:
        await anyio.sleep(0)
        self.rows[key] = value

    async def get(self, key: str) -> Row:
        await anyio.sleep(0)
        return Row(key, self.rows[key])

    async def snapshot(self) -> tuple[Table, list[Row], dict[str, Row]]:
        await anyio.sleep(0)
        rows = [Row(k, v) for k, v in sorted(self.rows.items())]
        return self, rows, {r.key: r for r in rows}

    @contextlib.asynccontextmanager
    async def transaction(self) -> AsyncIterator[Table]:
        saved = dict(self.rows)
        try:
            yield self
        except Exception:
            self.rows = saved
            raise

    async def scan(self) -> AsyncIterator[Row]:
        return _Rows(self)

    def __aiter__(self) -> AsyncIterator[Row]:
        return _Rows(self)

    def __len__(self) -> int:
        return len(self.rows)

    def __contains__(self, key: object) -> bool:
        return key in self.rows

    @property
    def first(self) -> Row | None:
        return next((Row(k, v) for k, v in self.rows.items()), None)

    @classmethod
    async def create(cls, name: str, **rows: int) -> Table:
        table = cls(name)
        for key, value in rows.items():
            await table.put(key, value)
        return table

    async def same(self, other: Table) -> bool:
        return isinstance(other, Table) and other is self


class _Rows:
    def __init__(self, table: Table) -> None:
        self._items = iter(sorted(table.rows.items()))

    def __aiter__(self) -> _Rows:
        return self

    async def __anext__(self) -> Row:
        await anyio.sleep(0)
        try:
            return Row(*next(self._items))
        except StopIteration:
            raise StopAsyncIteration from None


class AuditedTable(Table):
    kind = "audited"

    async def put(self, key: str, value: int) -> None:
        await super().put(key, value * 10)


class Box(Generic[T]):
    def __init__(self, item: T) -> None:
        self.item = item

    async def take(self) -> T:
        await anyio.sleep(0)
        return self.item


Row_ = blocking(Row)
BlockingTable = blocking(Table)
BlockingAudited = blocking(AuditedTable)
BlockingBase = blocking(Base)
BlockingBox = blocking(Box)


def test_any_class_and_mirrored_bases() -> None:
    assert blocking(Table) is BlockingTable  # one class, one wrapper
    assert issubclass(BlockingAudited, BlockingTable)
    assert issubclass(BlockingTable, BlockingBase)
    assert BlockingBase.kind == "base"
    assert BlockingTable.__init__.__doc__ == "Open the table *name*."
    assert list(inspect.signature(BlockingTable).parameters) == ["name"]


def test_methods_translation_and_inheritance(place: Place) -> None:
    def body() -> None:
        table = BlockingAudited("t")
        assert isinstance(table, BlockingTable) and isinstance(table, BlockingBase)
        assert table.made_in_task  # the constructor ran in a task on the loop
        table.put("a", 1)  # the subclass's override runs
        row = table.get("a")
        assert isinstance(row, Row_) and (row.key, row.value) == ("a", 10)
        assert table.describe() == "audited AuditedTable"
        me, rows, by_key = table.snapshot()
        assert me is not table and me == table  # a new wrapper of the same object
        assert isinstance(me, BlockingAudited)
        assert [type(r) for r in rows] == [Row_] and isinstance(by_key["a"], Row_)
        assert len(table) == 1 and "a" in table and "b" not in table
        assert isinstance(table.first, Row_)
        assert table.same(table) and table.same(me)  # wrappers unwrapped on the way in
        with table.transaction() as tx:
            assert tx == table
            tx.put("b", 2)
        with pytest.raises(KeyError), table.transaction():
            table.put("c", 3)
            raise KeyError("roll back")
        assert sorted(table.aio.rows) == ["a", "b"]
        assert [r.key for r in table] == ["a", "b"]  # __aiter__ returning an iterator
        assert [r.value for r in table.scan()] == [10, 20]  # a returned async iterator
        made = BlockingAudited.create("u", x=1)
        assert isinstance(made, BlockingAudited) and made.aio.rows == {"x": 10}

    place(body)


def test_unwrapped_subclass_instance_gets_a_wrapper(place: Place) -> None:
    class Unwrapped(Table):
        async def get(self, key: str) -> Row:
            return Row(key, -1)

    async def make() -> Table:
        return Unwrapped("u")

    def body() -> None:
        obj = blocking(make)()
        assert isinstance(obj, BlockingTable) and type(obj) is blocking(Unwrapped)
        assert obj.get("k").value == -1  # the subclass's method, not the base's

    place(body)


def test_generic_class(place: Place) -> None:
    def body() -> None:
        box = BlockingBox[int](3)
        assert isinstance(box, BlockingBox) and box.take() == 3

    place(body)


def test_wrapped_function_as_class_attribute(place: Place) -> None:
    @blocking
    async def double(self: Any, x: int) -> int:
        await anyio.sleep(0)
        return self.factor * x

    class Holder:
        helper = double

        def __init__(self) -> None:
            self.factor = 2

    def body() -> None:
        wrapped = blocking(Holder)
        assert wrapped.helper is double  # kept, not dropped
        assert wrapped().helper(3) == 6  # bound to the async object, as in Holder

    place(body)


def test_submit(place: Place) -> None:
    def body() -> None:
        table = BlockingTable("s")
        futures = [table.put.submit(k, i) for i, k in enumerate("abc")]
        assert all(isinstance(f, concurrent.futures.Future) for f in futures)
        assert [f.result() for f in futures] == [None, None, None]
        got = table.get.submit("b")
        row = got.result()
        assert isinstance(row, Row_) and row.value == 1  # translated too
        failed = table.get.submit("missing")
        assert isinstance(failed.exception(), KeyError)

    place(body)


def test_submit_cancel_cancels_the_work(place: Place) -> None:
    events: list[str] = []
    started = threading.Event()

    @blocking
    async def slow() -> None:
        started.set()
        try:
            await anyio.sleep(30)
        finally:
            events.append("unwound")

    def body() -> None:
        future = slow.submit()
        waiter = blocking(_wait_for_thread_event)
        waiter(started)
        assert future.cancel()
        with pytest.raises(concurrent.futures.CancelledError):
            future.result()
        waiter(None)  # let the cancellation land
        assert events == ["unwound"]

    place(body)


async def _wait_for_thread_event(event: threading.Event | None) -> None:
    for _ in range(500):
        if event is None or event.is_set():
            await anyio.sleep(0.01)
            return
        await anyio.sleep(0.01)
    raise AssertionError("timed out")


def test_submit_result_in_task_without_portal_raises(aio_backend: Backend) -> None:
    async def main() -> None:
        future = blocking(_wait_for_thread_event).submit(None)
        with pytest.raises(RuntimeError, match="portal"):
            future.result()
        await with_portal_run_sync(future.result)

    aio_backend.run(main)


def test_submit_result_timeout_in_task(backend: Backend) -> None:
    @blocking
    async def slow() -> None:
        await anyio.sleep(5)

    def body() -> None:
        future = slow.submit()
        with pytest.raises(concurrent.futures.TimeoutError):
            future.result(timeout=0.05)
        future.cancel()

    async def main() -> None:
        await with_portal_run_sync(body)

    backend.run(main)


def test_runner_per_object(place: Place) -> None:
    with Runner() as runner:
        where: list[int] = []

        @blocking(runner=runner)
        async def on_runner() -> int:
            where.append(threading.get_ident())
            await anyio.sleep(0)
            return 7

        PinnedTable = blocking(Table, runner=runner)
        assert issubclass(PinnedTable, BlockingTable)
        assert blocking(Table, runner=runner) is PinnedTable

        def body() -> None:
            assert on_runner() == 7
            assert on_runner.submit().result() == 7
            table = PinnedTable("p")
            table.put("a", 1)
            row = table.get("a")
            assert isinstance(row, Row_) and row._aio_runner is runner

        place(body)
        loop_thread = runner.run(_thread_id)
        assert where == [loop_thread, loop_thread]


async def _thread_id() -> int:
    return threading.get_ident()


def test_object_made_without_loop_is_pinned_to_the_default_runner(backend: Backend) -> None:
    table = BlockingTable("pinned")  # no loop here: made on the default Runner
    runner_thread = greenportal.default_runner().run(_thread_id)
    ticks = 0

    async def ticker() -> None:
        nonlocal ticks
        while True:
            await anyio.sleep(0.001)
            ticks += 1

    @blocking
    async def where_am_i() -> int:
        return threading.get_ident()

    def in_portal() -> int:
        table.put("k", 1)
        assert table.get("k").value == 1
        return ticks

    async def main() -> int:
        async with anyio.create_task_group() as tg:
            tg.start_soon(ticker)
            await anyio.sleep(0.01)
            before = ticks
            after = await with_portal_run_sync(in_portal)
            tg.cancel_scope.cancel()
        return after - before

    assert backend.run(main) >= 0
    # The object's calls went to its Runner, not the portal's loop.
    assert table._aio_runner is greenportal.default_runner()
    assert runner_thread != threading.get_ident()
    assert where_am_i() == runner_thread


def test_aiohttp_session_made_and_used_everywhere(
    place: Place, aiohttp_url: str, request: pytest.FixtureRequest
) -> None:
    if "trio" in request.node.name:
        pytest.skip("aiohttp runs on asyncio only")
    aiohttp = pytest.importorskip("aiohttp")
    Session = blocking(aiohttp.ClientSession)
    Response = blocking(aiohttp.ClientResponse)  # responses then come out wrapped

    def body() -> str:
        with Session() as session, session.get(aiohttp_url) as response:
            assert isinstance(response, Response) and response.status == 200
            return str(response.text())

    assert place(body) == "hello"


@pytest.fixture(scope="module")
def aiohttp_url() -> Any:
    web = pytest.importorskip("aiohttp.web")
    with Runner() as runner:

        async def start() -> Any:
            async def hello(request: Any) -> Any:
                return web.Response(text="hello")

            app = web.Application()
            app.router.add_get("/", hello)
            app_runner = web.AppRunner(app)
            await app_runner.setup()
            site = web.TCPSite(app_runner, "127.0.0.1", 0)
            await site.start()
            port = site._server.sockets[0].getsockname()[1]  # type: ignore[union-attr]
            return app_runner, port

        app_runner, port = runner.run(start)
        yield f"http://127.0.0.1:{port}/"
        runner.run(app_runner.cleanup)


def test_signal_handler_exception_cancels_the_work() -> None:
    code = """
import signal, threading, greenportal, asyncio

unwound = []

@greenportal.blocking
async def slow():
    try:
        await asyncio.sleep(30)
    finally:
        unwound.append(True)

def on_alarm(signum, frame):
    raise SystemExit(3)

signal.signal(signal.SIGALRM, on_alarm)
signal.setitimer(signal.ITIMER_REAL, 0.2)
try:
    slow()
except SystemExit as exit:
    print("exit", exit.code, unwound)
"""
    result = run_python("-c", code, timeout=30)
    assert result.stdout.strip() == "exit 3 [True]", result.stderr
