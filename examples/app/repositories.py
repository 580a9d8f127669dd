"""Repositories: one sync method per query, over the sync :class:`~app.facade.Database`.

The SQL lives here as constants so that the native async layer
(:mod:`app.native`) sends exactly the same statements.
"""

from __future__ import annotations

from dataclasses import dataclass

from app.facade import Database

CUSTOMER_BY_ID = "SELECT id, email, name, signed_up FROM gp_customers WHERE id = ?"
RECENT_ORDERS = """
    SELECT o.id, o.placed_at, o.status, COUNT(*), SUM(i.quantity * i.price_cents)
    FROM gp_orders o JOIN gp_order_items i ON i.order_id = o.id
    WHERE o.customer_id = ?
    GROUP BY o.id, o.placed_at, o.status
    ORDER BY o.placed_at DESC, o.id DESC
    LIMIT ?"""
LIFETIME_SPEND = """
    SELECT COUNT(DISTINCT o.id), COALESCE(SUM(i.quantity * i.price_cents), 0)
    FROM gp_orders o JOIN gp_order_items i ON i.order_id = o.id
    WHERE o.customer_id = ? AND o.status <> 'cancelled'"""
FAVOURITE_PRODUCT = """
    SELECT p.id, p.name, SUM(i.quantity) AS bought
    FROM gp_orders o
    JOIN gp_order_items i ON i.order_id = o.id
    JOIN gp_products p ON p.id = i.product_id
    WHERE o.customer_id = ? AND o.status <> 'cancelled'
    GROUP BY p.id, p.name
    ORDER BY bought DESC, p.id
    LIMIT 1"""
INSERT_AUDIT = "INSERT INTO gp_audit_log (customer_id, action, at) VALUES (?, ?, ?)"
COUNT_AUDIT = "SELECT COUNT(*) FROM gp_audit_log WHERE customer_id = ? AND action = ?"


@dataclass(frozen=True)
class Customer:
    id: int
    email: str
    name: str
    signed_up: int


@dataclass(frozen=True)
class OrderLine:
    id: int
    placed_at: int
    status: str
    items: int
    total_cents: int


@dataclass(frozen=True)
class Favourite:
    product_id: int
    name: str
    quantity: int


class CustomerRepository:
    def __init__(self, db: Database) -> None:
        self.db = db

    def get(self, customer_id: int) -> Customer | None:
        row = self.db.fetch_one(CUSTOMER_BY_ID, customer_id)
        return None if row is None else Customer(*row)


class OrderRepository:
    def __init__(self, db: Database) -> None:
        self.db = db

    def recent(self, customer_id: int, limit: int) -> list[OrderLine]:
        return [OrderLine(*row) for row in self.db.fetch_all(RECENT_ORDERS, customer_id, limit)]

    def lifetime_spend(self, customer_id: int) -> tuple[int, int]:
        """(orders, cents) over every order that was not cancelled."""
        row = self.db.fetch_one(LIFETIME_SPEND, customer_id)
        assert row is not None  # an aggregate always returns a row
        return int(row[0]), int(row[1])

    def favourite(self, customer_id: int) -> Favourite | None:
        row = self.db.fetch_one(FAVOURITE_PRODUCT, customer_id)
        return None if row is None else Favourite(row[0], row[1], int(row[2]))


class AuditRepository:
    def __init__(self, db: Database) -> None:
        self.db = db

    def record(self, customer_id: int, action: str, at: int) -> None:
        self.db.execute(INSERT_AUDIT, customer_id, action, at)

    def count(self, customer_id: int, action: str) -> int:
        row = self.db.fetch_one(COUNT_AUDIT, customer_id, action)
        assert row is not None
        return int(row[0])
