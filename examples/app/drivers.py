"""Async database drivers behind one small interface, and the demo's schema.

Both drivers take SQL with ``?`` placeholders (the PostgreSQL driver rewrites
them to ``$1, $2, ...``) and return rows as tuples, so that the layers above
are the same on both databases.  Each driver is bound to the event loop it
was opened on; the loop-in-a-thread variant opens a second one on its loop.
"""

from __future__ import annotations

import asyncio
import functools
import itertools
import os
import random
import re
import tempfile
from collections.abc import Sequence
from typing import Any, Protocol
from urllib.parse import urlsplit

Row = tuple[Any, ...]
Params = Sequence[Any]

SEED_USERS = 2_000
SEED_PRODUCTS = 60
SEED_ORDERS_PER_USER = (0, 12)  # inclusive range, drawn per user
SEED_ITEMS_PER_ORDER = (1, 4)
SEED = 20_240_501  # the seed data is the same on every run and both databases


class DatabaseError(Exception):
    """The database could not be reached or set up; the message says why."""


class Driver(Protocol):
    """What the facade and the native layer need from a database."""

    name: str
    description: str

    async def fetch_one(self, sql: str, params: Params = ()) -> Row | None: ...

    async def fetch_all(self, sql: str, params: Params = ()) -> list[Row]: ...

    async def execute(self, sql: str, params: Params = ()) -> None: ...

    async def close(self) -> None: ...


class _Latency:
    """Optional extra wait per query, standing in for a database on another host."""

    latency: float = 0.0

    async def _network(self) -> None:
        if self.latency:
            await asyncio.sleep(self.latency)


# -- SQLite -------------------------------------------------------------------------


class SqliteDriver(_Latency):
    """SQLite through aiosqlite: reader connections plus one writer, to one file (WAL).

    Every aiosqlite connection has its own thread, which runs its queries in
    order; a query is one hop there and back.  Reads are spread over the
    readers in turn and run in parallel (WAL lets readers and the writer
    overlap); every write goes to the single writer, the usual SQLite set-up,
    so that writers never wait on SQLite's busy timeout.
    """

    name = "sqlite"

    def __init__(self, path: str, readers: list[Any], writer: Any, latency: float) -> None:
        self.path = path
        self.description = (
            f"SQLite {_sqlite_version()} via aiosqlite, {len(readers)} readers + 1 writer"
        )
        self.latency = latency
        self._readers = readers
        self._next_reader = itertools.cycle(readers).__next__
        self._writer = writer

    @classmethod
    async def open(cls, path: str, *, readers: int = 3, latency: float = 0.0) -> SqliteDriver:
        import aiosqlite

        connections: list[Any] = []
        try:
            for _ in range(readers + 1):
                # isolation_level=None: autocommit, every statement is its own transaction.
                connection = await aiosqlite.connect(path, isolation_level=None, timeout=10)
                connections.append(connection)
                await connection.execute("PRAGMA journal_mode=WAL")
                await connection.execute("PRAGMA synchronous=NORMAL")
        except Exception as error:
            for connection in connections:
                await connection.close()
            raise DatabaseError(f"cannot open SQLite database {path!r}: {error}") from error
        return cls(path, connections[1:], connections[0], latency)

    async def fetch_one(self, sql: str, params: Params = ()) -> Row | None:
        await self._network()
        rows = await self._next_reader().execute_fetchall(sql, tuple(params))
        return tuple(rows[0]) if rows else None

    async def fetch_all(self, sql: str, params: Params = ()) -> list[Row]:
        await self._network()
        rows = await self._next_reader().execute_fetchall(sql, tuple(params))
        return [tuple(row) for row in rows]

    async def execute(self, sql: str, params: Params = ()) -> None:
        await self._network()
        await self._writer.execute_insert(sql, tuple(params))

    async def insert_rows(self, table: str, rows: list[Row]) -> None:
        """Bulk-load *rows* into *table* in one transaction."""
        marks = ", ".join("?" * len(rows[0]))
        await self._writer.execute("BEGIN")
        await self._writer.executemany(f"INSERT INTO {table} VALUES ({marks})", rows)
        await self._writer.execute("COMMIT")

    async def close(self) -> None:
        for connection in (self._writer, *self._readers):
            await connection.close()


def _sqlite_version() -> str:
    import sqlite3

    return sqlite3.sqlite_version


# -- PostgreSQL ---------------------------------------------------------------------


@functools.lru_cache(maxsize=256)
def to_dollar_params(sql: str) -> str:
    """``WHERE a = ? AND b = ?`` -> ``WHERE a = $1 AND b = $2`` (no ``?`` in literals here)."""
    counter = iter(range(1, sql.count("?") + 1))
    return re.sub(r"\?", lambda _: f"${next(counter)}", sql)


class PostgresDriver(_Latency):
    """PostgreSQL through asyncpg: one connection pool, made once per event loop."""

    name = "postgresql"

    def __init__(self, pool: Any, version: str, latency: float) -> None:
        self._pool = pool
        self.description = f"PostgreSQL {version} via asyncpg, pool of {pool.get_max_size()}"
        self.latency = latency

    @classmethod
    async def open(cls, dsn: str, *, size: int = 10, latency: float = 0.0) -> PostgresDriver:
        import asyncpg

        try:
            pool = await asyncio.wait_for(
                asyncpg.create_pool(dsn, min_size=size, max_size=size), timeout=20
            )
        except (OSError, asyncio.TimeoutError, asyncpg.PostgresError, ValueError) as error:
            where = _redacted(dsn)
            raise DatabaseError(
                f"cannot connect to PostgreSQL at {where}: {type(error).__name__}: {error}"
            ) from error
        version = await pool.fetchval("SHOW server_version")
        return cls(pool, str(version).split()[0], latency)

    async def fetch_one(self, sql: str, params: Params = ()) -> Row | None:
        await self._network()
        row = await self._pool.fetchrow(to_dollar_params(sql), *params)
        return None if row is None else tuple(row)

    async def fetch_all(self, sql: str, params: Params = ()) -> list[Row]:
        await self._network()
        return [tuple(row) for row in await self._pool.fetch(to_dollar_params(sql), *params)]

    async def execute(self, sql: str, params: Params = ()) -> None:
        await self._network()
        await self._pool.execute(to_dollar_params(sql), *params)

    async def insert_rows(self, table: str, rows: list[Row]) -> None:
        """Bulk-load *rows* into *table* (COPY, the fast way)."""
        async with self._pool.acquire() as connection:
            await connection.copy_records_to_table(table, records=rows)

    async def close(self) -> None:
        await self._pool.close()


def _redacted(dsn: str) -> str:
    """The DSN without its password, for error messages."""
    parts = urlsplit(dsn)
    if parts.password is None:
        return dsn
    netloc = parts.netloc.replace(f":{parts.password}@", ":***@", 1)
    return parts._replace(netloc=netloc).geturl()


# -- choosing, creating and seeding -------------------------------------------------


def check_dsn(dsn: str | None) -> None:
    """Raise DatabaseError early for a DSN this demo cannot use."""
    if dsn is None:
        return
    scheme = urlsplit(dsn).scheme
    if scheme not in ("postgresql", "postgres"):
        raise DatabaseError(
            f"unsupported DSN {_redacted(dsn)!r}: use postgresql://user:password@host:port/dbname "
            "(or no DSN for the built-in SQLite database)"
        )


async def open_driver(
    dsn: str | None, *, sqlite_path: str | None = None, latency: float = 0.0
) -> SqliteDriver | PostgresDriver:
    """Open the driver for *dsn* (PostgreSQL), or for SQLite at *sqlite_path*."""
    check_dsn(dsn)
    if dsn is not None:
        return await PostgresDriver.open(dsn, latency=latency)
    if sqlite_path is None:
        raise DatabaseError("open_driver: give a PostgreSQL DSN or an SQLite path")
    return await SqliteDriver.open(sqlite_path, latency=latency)


def new_sqlite_path() -> str:
    """A fresh file in a new temporary directory; remove it with remove_sqlite()."""
    return os.path.join(tempfile.mkdtemp(prefix="greenportal-demo-"), "shop.sqlite3")


def remove_sqlite(path: str) -> None:
    folder = os.path.dirname(path)
    for name in os.listdir(folder):
        os.unlink(os.path.join(folder, name))
    os.rmdir(folder)


# Tables are prefixed so that a shared PostgreSQL database is not disturbed;
# create_schema drops and recreates only these.
TABLES = ("gp_audit_log", "gp_order_items", "gp_orders", "gp_products", "gp_customers")

_DDL = """
CREATE TABLE gp_customers (
    id INTEGER PRIMARY KEY, email TEXT NOT NULL UNIQUE, name TEXT NOT NULL,
    signed_up BIGINT NOT NULL);
CREATE TABLE gp_products (
    id INTEGER PRIMARY KEY, name TEXT NOT NULL, price_cents INTEGER NOT NULL);
CREATE TABLE gp_orders (
    id INTEGER PRIMARY KEY, customer_id INTEGER NOT NULL REFERENCES gp_customers (id),
    placed_at BIGINT NOT NULL, status TEXT NOT NULL);
CREATE INDEX gp_orders_by_customer ON gp_orders (customer_id, placed_at);
CREATE TABLE gp_order_items (
    order_id INTEGER NOT NULL REFERENCES gp_orders (id),
    product_id INTEGER NOT NULL REFERENCES gp_products (id),
    quantity INTEGER NOT NULL, price_cents INTEGER NOT NULL,
    PRIMARY KEY (order_id, product_id));
CREATE TABLE gp_audit_log (
    id {serial}, customer_id INTEGER NOT NULL, action TEXT NOT NULL, at BIGINT NOT NULL);
"""

_SERIAL = {
    "sqlite": "INTEGER PRIMARY KEY",
    "postgresql": "BIGINT GENERATED ALWAYS AS IDENTITY PRIMARY KEY",
}


def seed_rows() -> dict[str, list[Row]]:
    """The seed data: deterministic, so every variant and run sees the same shop."""
    rng = random.Random(SEED)
    customers = [
        (cid, f"customer{cid}@example.com", f"Customer {cid}", 1_600_000_000 + cid * 3_600)
        for cid in range(1, SEED_USERS + 1)
    ]
    products = [
        (pid, f"Product {pid}", rng.randrange(199, 9_999)) for pid in range(1, SEED_PRODUCTS + 1)
    ]
    prices = {pid: price for pid, _, price in products}
    orders: list[Row] = []
    items: list[Row] = []
    statuses = ("delivered", "delivered", "delivered", "shipped", "paid", "cancelled")
    for cid in range(1, SEED_USERS + 1):
        for _ in range(rng.randint(*SEED_ORDERS_PER_USER)):
            oid = len(orders) + 1
            placed = 1_700_000_000 + rng.randrange(30_000_000)
            orders.append((oid, cid, placed, rng.choice(statuses)))
            chosen = rng.sample(range(1, SEED_PRODUCTS + 1), rng.randint(*SEED_ITEMS_PER_ORDER))
            items.extend((oid, pid, rng.randint(1, 3), prices[pid]) for pid in chosen)
    return {
        "gp_customers": customers,
        "gp_products": products,
        "gp_orders": orders,
        "gp_order_items": items,
    }


async def create_schema(driver: SqliteDriver | PostgresDriver) -> None:
    """(Re)create the demo's tables and load the seed data."""
    for table in TABLES:
        await driver.execute(f"DROP TABLE IF EXISTS {table}")
    for statement in _DDL.format(serial=_SERIAL[driver.name]).split(";"):
        if statement.strip():
            await driver.execute(statement)
    for table, rows in seed_rows().items():
        await driver.insert_rows(table, rows)
    # Planner statistics: without them PostgreSQL guesses, and guesses badly
    # after a bulk load (autovacuum may be off or not have run yet).
    for table in TABLES:
        await driver.execute(f"ANALYZE {table}")
