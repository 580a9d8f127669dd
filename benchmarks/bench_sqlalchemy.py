"""SQLAlchemy's asyncio ORM from sync code in a portal, against ``AsyncSession.run_sync``.

Issue 16's target: a ``sync_session`` query, or a lazy load, from sync code
in a portal costs at most 1.05x the same query through SQLAlchemy's own
``AsyncSession.run_sync``, on aiosqlite and on asyncpg.  Both paths run the
same sync function body with the same ``Session``; they differ only in the
bridge under it.  ``run_sync`` runs the body in SQLAlchemy's greenlet
(``greenlet_spawn``), whose ``await_`` switches to a parent that awaits the
driver's coroutine; in a portal the body runs on greenportal's greenlet, and
``greenportal.sqlalchemy`` hands each of SQLAlchemy's awaits to
``greenportal.await_``.

A small mapped schema: parents with three children each (``children`` is a
one-to-many relationship, ``lazy="select"``).  Two kinds of unit, each one
SQL statement:

``query``
    ``sess.execute(select(Child).where(Child.parent_id == :pid), ...)
    .scalars().all()`` for one parent;
``lazy load``
    ``len(parent.children)`` on a loaded parent whose ``children`` attribute
    was expired just before (untimed), so that each access emits one SELECT.

Rows, for each kind (time per statement; each sample is the mean over a
batch of ``--n`` statements, one call of the bridge per batch):

1. ``await session.run_sync(fn)``: SQLAlchemy's own path;
2. ``await greenportal.with_portal_run_sync(fn, session.sync_session)``: the
   same ``fn``, in a portal;
3. ``greenportal.await_(session.execute(...))`` (for the lazy load,
   ``await_(parent.awaitable_attrs.children)``) from sync code in a portal,
   for reference;
4. ``await session.execute(...)`` (``await parent.awaitable_attrs.children``)
   in the task, for reference: the async API's cost, SQLAlchemy's
   ``greenlet_spawn`` once per statement included.

Every variant runs once per round, each in a task of its own, all rounds
in one event loop.  A round takes the two kinds in a shuffled order and,
within each kind, its four variants in a shuffled order, so that the
samples a ratio pairs are never far apart in time.  The report gives the
median over rounds with half the interquartile range, and each row's ratio
to the ``run_sync`` row of the same kind as the median of the same-round
ratios, which cancels most of the drift of a shared machine.

Each batch is timed twice: wall-clock time, which the target is about, and
the CPU time of the event loop's thread (``time.thread_time``), which leaves
out aiosqlite's worker thread, the PostgreSQL server and every wait for
them.  The bridge's work is all in the loop's thread, so the CPU table shows
its cost with far less of the noise that a busy machine adds to thread
wake-ups; its ratios are larger than wall-clock ones, having no driver
waits in the denominator.  They are reported as information.

The comparison is kept honest by checks before and after the timed rounds:
a ``before_cursor_execute`` listener counts the statements of one batch of
every variant, and each must be exactly ``--n`` (so every lazy load did emit
its SELECT) and return every child row.  All variants share one session,
one connection and one transaction (no BEGIN inside a batch), and the lazy
variants expire the same parents' ``children`` before and after each batch,
so that no variant finds ORM objects another one left behind.

The databases: SQLite through aiosqlite in memory (one connection kept by a
``StaticPool``; the setup checks that a second session sees the data), and
PostgreSQL through asyncpg on a throwaway cluster (``tools/pgcluster.py``;
skipped, saying what to install, when the server binaries are missing).

Normally started by ``benchmarks/run.py`` (asyncio), which adds the rows to
its report; by itself, in an environment with SQLAlchemy, aiosqlite, asyncpg
(and uvloop for ``--loop uvloop``)::

    python benchmarks/bench_sqlalchemy.py [--rounds R] [--n N] [--db sqlite|postgres|both]
        [--loop asyncio|uvloop] [--json PATH]

With ``--json`` the raw samples are written there and no table is printed
(as ``bench_portal.py`` does).
"""

from __future__ import annotations

import argparse
import asyncio
import json
import random
import sys
import time
import traceback
from collections.abc import Awaitable, Callable, Coroutine
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import _common
from sqlalchemy import ForeignKey, bindparam, event, func, select
from sqlalchemy.ext.asyncio import AsyncAttrs, AsyncEngine, AsyncSession, create_async_engine
from sqlalchemy.orm import DeclarativeBase, Mapped, Session, mapped_column, relationship
from sqlalchemy.pool import StaticPool

import greenportal

HERE = Path(__file__).resolve().parent
TOOLS = HERE.parent / "tools"
CHILDREN = 3  # children per parent: rows per statement
KINDS = ("query", "lazy")
VARIANTS = ("run_sync", "portal", "await_", "native")
DATABASES = ("sqlite", "postgres")
TITLES = {
    "sqlite": "SQLite (aiosqlite, in memory)",
    "postgres": "PostgreSQL (asyncpg, throwaway cluster)",
}
perf = time.perf_counter
cpu = time.thread_time  # the event loop's thread: not aiosqlite's, not the server's


class Base(AsyncAttrs, DeclarativeBase):
    pass


class Parent(Base):
    __tablename__ = "bench_parent"
    id: Mapped[int] = mapped_column(primary_key=True)
    name: Mapped[str]
    children: Mapped[list[Child]] = relationship(lazy="select")


class Child(Base):
    __tablename__ = "bench_child"
    id: Mapped[int] = mapped_column(primary_key=True)
    name: Mapped[str]
    parent_id: Mapped[int] = mapped_column(ForeignKey("bench_parent.id"), index=True)


# Built once: every variant executes this very statement object.
CHILDREN_OF = select(Child).where(Child.parent_id == bindparam("pid"))


# -- the units: sync bodies (run_sync and the portal run the same ones) --------


def sync_queries(sess: Session, ids: list[int]) -> int:
    rows = 0
    for pid in ids:
        rows += len(sess.execute(CHILDREN_OF, {"pid": pid}).scalars().all())
    return rows


def sync_lazy_loads(sess: Session, parents: list[Parent]) -> int:
    rows = 0
    for parent in parents:
        rows += len(parent.children)
    return rows


def await_queries(session: AsyncSession, ids: list[int]) -> int:
    await_ = greenportal.await_
    rows = 0
    for pid in ids:
        rows += len(await_(session.execute(CHILDREN_OF, {"pid": pid})).scalars().all())
    return rows


def await_lazy_loads(parents: list[Parent]) -> int:
    await_ = greenportal.await_
    rows = 0
    for parent in parents:
        rows += len(await_(parent.awaitable_attrs.children))
    return rows


async def native_queries(session: AsyncSession, ids: list[int]) -> int:
    rows = 0
    for pid in ids:
        rows += len((await session.execute(CHILDREN_OF, {"pid": pid})).scalars().all())
    return rows


async def native_lazy_loads(parents: list[Parent]) -> int:
    rows = 0
    for parent in parents:
        rows += len(await parent.awaitable_attrs.children)
    return rows


# -- cases ------------------------------------------------------------------------

Batch = Callable[[], Awaitable[int]]


@dataclass
class Case:
    kind: str
    variant: str
    batch: Batch  # runs one batch of n statements, returns the rows it got
    before: Callable[[], None]  # untimed, before and after each batch

    @property
    def key(self) -> str:
        return f"{self.kind}/{self.variant}"


def _nothing() -> None:
    pass


def build_cases(session: AsyncSession, parents: list[Parent]) -> list[Case]:
    ids = [parent.id for parent in parents]
    sync = session.sync_session
    portal = greenportal.with_portal_run_sync

    def expire_children() -> None:
        for parent in parents:
            session.expire(parent, ["children"])

    batches: dict[tuple[str, str], Batch] = {
        ("query", "run_sync"): lambda: session.run_sync(sync_queries, ids),
        ("query", "portal"): lambda: portal(sync_queries, sync, ids),
        ("query", "await_"): lambda: portal(await_queries, session, ids),
        ("query", "native"): lambda: native_queries(session, ids),
        ("lazy", "run_sync"): lambda: session.run_sync(sync_lazy_loads, parents),
        ("lazy", "portal"): lambda: portal(sync_lazy_loads, sync, parents),
        ("lazy", "await_"): lambda: portal(await_lazy_loads, parents),
        ("lazy", "native"): lambda: native_lazy_loads(parents),
    }
    return [
        Case(kind, variant, batch, expire_children if kind == "lazy" else _nothing)
        for (kind, variant), batch in batches.items()
    ]


def shuffled_order(cases: list[Case], rng: random.Random) -> list[Case]:
    """The kinds in a random order, each kind's variants together in a random order."""
    kinds = list(KINDS)
    rng.shuffle(kinds)
    order = []
    for kind in kinds:
        group = [case for case in cases if case.kind == kind]
        rng.shuffle(group)
        order.extend(group)
    return order


async def run_case(case: Case) -> tuple[float, float, int]:
    """One batch in a task of its own: (seconds, CPU seconds of this thread, rows)."""

    async def timed() -> tuple[float, float, int]:
        case.before()
        c0 = cpu()
        t0 = perf()
        rows = await case.batch()
        elapsed = perf() - t0
        used = cpu() - c0
        case.before()  # drop what the batch loaded: the next case starts from the same state
        return elapsed, used, rows

    return await asyncio.get_running_loop().create_task(timed())


class StatementCounter:
    """Counts the statements the engine sends to the driver while in a ``with`` block."""

    def __init__(self, engine: AsyncEngine) -> None:
        self.target = engine.sync_engine
        self.count = 0

    def __call__(self, *args: Any) -> None:
        self.count += 1

    def __enter__(self) -> StatementCounter:
        self.count = 0
        event.listen(self.target, "before_cursor_execute", self)
        return self

    def __exit__(self, *exc: object) -> None:
        event.remove(self.target, "before_cursor_execute", self)


async def check_cases(engine: AsyncEngine, cases: list[Case], n: int) -> dict[str, int]:
    """Statements per batch of every case; raises unless each is n, with every row."""
    counts: dict[str, int] = {}
    for case in cases:
        with StatementCounter(engine) as counter:
            _, _, rows = await run_case(case)
        counts[case.key] = counter.count
        if rows != n * CHILDREN:
            raise AssertionError(f"{case.key}: {rows} rows in a batch, expected {n * CHILDREN}")
    if set(counts.values()) != {n}:
        raise AssertionError(
            f"statements per batch of {n} differ between the variants: {counts}; "
            "the comparison would not be like for like"
        )
    return counts


# -- one database ---------------------------------------------------------------------


async def populate(engine: AsyncEngine, n: int) -> None:
    async with engine.begin() as conn:
        await conn.run_sync(Base.metadata.create_all)
    async with AsyncSession(engine) as session:
        session.add_all(
            Parent(name=f"p{i}", children=[Child(name=f"c{i}.{j}") for j in range(CHILDREN)])
            for i in range(n)
        )
        await session.commit()
    # A second session, which gets the connection back from the pool: on
    # SQLite in memory this fails unless the pool keeps the one connection.
    async with AsyncSession(engine) as session:
        parents = await session.scalar(select(func.count()).select_from(Parent))
        children = await session.scalar(select(func.count()).select_from(Child))
    if (parents, children) != (n, n * CHILDREN):
        raise AssertionError(f"the data did not survive the first session: {parents}, {children}")


async def measure_database(
    url: str, engine_options: dict[str, Any], n: int, rounds: int, log: Callable[[str], None]
) -> dict[str, Any]:
    engine = create_async_engine(url, **engine_options)
    samples: dict[str, dict[str, list[float]]] = {kind: {} for kind in KINDS}
    cpu_samples: dict[str, dict[str, list[float]]] = {kind: {} for kind in KINDS}
    failed: dict[str, str] = {}
    try:
        await populate(engine, n)
        async with AsyncSession(engine) as session:
            result = await session.execute(select(Parent).order_by(Parent.id))
            parents = list(result.scalars())  # held for the whole run
            cases = build_cases(session, parents)
            statements = await check_cases(engine, cases, n)  # also the warm-up
            live = list(cases)
            rng = random.Random(n)
            for number in range(rounds):
                t0 = perf()
                for case in shuffled_order(live, rng):
                    _common.collect()
                    try:
                        seconds, cpu_seconds, _ = await run_case(case)
                    except Exception as error:
                        detail = traceback.format_exception_only(type(error), error)[-1].strip()
                        failed[case.key] = detail
                        samples[case.kind].pop(case.variant, None)
                        cpu_samples[case.kind].pop(case.variant, None)
                        live.remove(case)
                        log(f"  {case.key} failed, dropped: {detail}")
                        continue
                    samples[case.kind].setdefault(case.variant, []).append(seconds / n)
                    cpu_samples[case.kind].setdefault(case.variant, []).append(cpu_seconds / n)
                log(f"  round {number + 1}/{rounds} ({perf() - t0:.1f} s)")
            after = await check_cases(engine, live, n)
    finally:
        await engine.dispose()
    return {
        "statements": statements,
        "statements_after": after,
        "samples": samples,
        "cpu_samples": cpu_samples,
        "failed": failed,
    }


def _run(loop: str, coro: Coroutine[Any, Any, dict[str, Any]]) -> dict[str, Any]:
    if loop == "uvloop":
        import uvloop

        return uvloop.run(coro)
    return asyncio.run(coro)


def measure(
    databases: list[str], loop: str, n: int, rounds: int, log: Callable[[str], None]
) -> dict[str, Any]:
    versions = {
        "greenportal": greenportal.__version__
        + (" (compiled)" if greenportal.SPEEDUPS else " (pure Python)"),
        **{name: _common._version_of(name) for name in ("sqlalchemy", "aiosqlite", "asyncpg")},
    }
    result: dict[str, Any] = {
        "loop": loop,
        "machine": _common.machine_info(),
        "versions": versions,
        "n": n,
        "rounds": rounds,
        "children": CHILDREN,
        "databases": {},
        "skipped": {},
    }
    for db in databases:
        if db == "sqlite":
            log(f"SQLite: {rounds} rounds x {len(KINDS) * len(VARIANTS)} cases, n = {n}")
            measured = _run(
                loop,
                measure_database("sqlite+aiosqlite://", {"poolclass": StaticPool}, n, rounds, log),
            )
        else:
            sys.path.insert(0, str(TOOLS))
            from pgcluster import MISSING_MESSAGE, PostgresCluster, find_pg_bin

            if find_pg_bin() is None:
                result["skipped"][db] = MISSING_MESSAGE
                log(f"PostgreSQL: skipped. {MISSING_MESSAGE}")
                continue
            log("PostgreSQL: starting a throwaway cluster")
            with PostgresCluster() as cluster:
                url = cluster.dsn.replace("postgresql://", "postgresql+asyncpg://", 1)
                log(f"PostgreSQL: {rounds} rounds x {len(KINDS) * len(VARIANTS)} cases, n = {n}")
                measured = _run(loop, measure_database(url, {}, n, rounds, log))
        measured["title"] = TITLES[db]
        result["databases"][db] = measured
    return result


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--rounds", type=int, default=21, help="rounds (default 21)")
    parser.add_argument(
        "--n", type=int, default=200, help="statements per sample, and parents (default 200)"
    )
    parser.add_argument("--db", choices=("sqlite", "postgres", "both"), default="both")
    parser.add_argument("--loop", choices=("asyncio", "uvloop"), default="asyncio")
    parser.add_argument("--json", metavar="PATH", help="write the raw samples here, print no table")
    args = parser.parse_args()
    if args.n < 1 or args.rounds < 1:
        parser.error("--n and --rounds must be at least 1")

    def log(text: str) -> None:
        print(text, file=sys.stderr, flush=True)

    databases = list(DATABASES) if args.db == "both" else [args.db]
    result = measure(databases, args.loop, args.n, args.rounds, log)
    if args.json:
        with open(args.json, "w") as out:
            json.dump(result, out)
        return
    import report

    for line in report.sqlalchemy_lines(result):
        print(line)


if __name__ == "__main__":
    main()
