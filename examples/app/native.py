"""The same application layer rewritten with ``async``/``await``: the reference.

Same SQL (imported from :mod:`app.repositories`), same rules (imported from
:mod:`app.services`); only the plumbing between them is async.
"""

from __future__ import annotations

import time
from typing import Any

from app.drivers import Driver
from app.repositories import (
    COUNT_AUDIT,
    CUSTOMER_BY_ID,
    FAVOURITE_PRODUCT,
    INSERT_AUDIT,
    LIFETIME_SPEND,
    RECENT_ORDERS,
    Customer,
    Favourite,
    OrderLine,
)
from app.services import RECENT, CustomerNotFound, build_summary


class AsyncCustomerRepository:
    def __init__(self, db: Driver) -> None:
        self.db = db

    async def get(self, customer_id: int) -> Customer | None:
        row = await self.db.fetch_one(CUSTOMER_BY_ID, (customer_id,))
        return None if row is None else Customer(*row)


class AsyncOrderRepository:
    def __init__(self, db: Driver) -> None:
        self.db = db

    async def recent(self, customer_id: int, limit: int) -> list[OrderLine]:
        rows = await self.db.fetch_all(RECENT_ORDERS, (customer_id, limit))
        return [OrderLine(*row) for row in rows]

    async def lifetime_spend(self, customer_id: int) -> tuple[int, int]:
        row = await self.db.fetch_one(LIFETIME_SPEND, (customer_id,))
        assert row is not None
        return int(row[0]), int(row[1])

    async def favourite(self, customer_id: int) -> Favourite | None:
        row = await self.db.fetch_one(FAVOURITE_PRODUCT, (customer_id,))
        return None if row is None else Favourite(row[0], row[1], int(row[2]))


class AsyncAuditRepository:
    def __init__(self, db: Driver) -> None:
        self.db = db

    async def record(self, customer_id: int, action: str, at: int) -> None:
        await self.db.execute(INSERT_AUDIT, (customer_id, action, at))

    async def count(self, customer_id: int, action: str) -> int:
        row = await self.db.fetch_one(COUNT_AUDIT, (customer_id, action))
        assert row is not None
        return int(row[0])


class AsyncCustomerService:
    def __init__(self, db: Driver) -> None:
        self.customers = AsyncCustomerRepository(db)
        self.orders = AsyncOrderRepository(db)
        self.audit = AsyncAuditRepository(db)

    async def summary(self, customer_id: int) -> dict[str, Any]:
        customer = await self.customers.get(customer_id)
        if customer is None:
            raise CustomerNotFound(customer_id)
        recent = await self.orders.recent(customer_id, RECENT)
        spend = await self.orders.lifetime_spend(customer_id)
        favourite = await self.orders.favourite(customer_id)
        await self.audit.record(customer_id, "summary", int(time.time()))
        return build_summary(customer, recent, spend, favourite)
