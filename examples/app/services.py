"""Services: the business rules, plain sync code over the repositories.

:meth:`CustomerService.summary` is what every variant serves: five queries
(customer, recent orders, lifetime spend, favourite product, an audit row)
and some pure-Python rules in between.  The rules are module functions so
that the native async service (:mod:`app.native`) reuses them as they are.
"""

from __future__ import annotations

import time
from typing import Any

from app.facade import Database
from app.repositories import (
    AuditRepository,
    Customer,
    CustomerRepository,
    Favourite,
    OrderLine,
    OrderRepository,
)

RECENT = 5
TIERS = ((500_000, "gold", 10), (150_000, "silver", 5), (0, "bronze", 0))  # cents, name, % off


class CustomerNotFound(LookupError):
    """No customer with that id."""


def loyalty(spent_cents: int) -> tuple[str, int]:
    """(tier, discount percent) for a lifetime spend."""
    for threshold, tier, discount in TIERS:
        if spent_cents >= threshold:
            return tier, discount
    raise AssertionError("the last tier has threshold 0")


def build_summary(
    customer: Customer,
    recent: list[OrderLine],
    spend: tuple[int, int],
    favourite: Favourite | None,
) -> dict[str, Any]:
    orders, spent = spend
    tier, discount = loyalty(spent)
    return {
        "customer": {"id": customer.id, "name": customer.name, "email": customer.email},
        "tier": tier,
        "discount_percent": discount,
        "orders": orders,
        "spent": f"{spent / 100:.2f}",
        "average_order": f"{spent / orders / 100:.2f}" if orders else None,
        "favourite": None if favourite is None else favourite.name,
        "recent": [
            {
                "id": line.id,
                "status": line.status,
                "items": line.items,
                "total": f"{line.total_cents / 100:.2f}",
            }
            for line in recent
        ],
    }


class CustomerService:
    def __init__(self, db: Database) -> None:
        self.customers = CustomerRepository(db)
        self.orders = OrderRepository(db)
        self.audit = AuditRepository(db)

    def summary(self, customer_id: int) -> dict[str, Any]:
        customer = self.customers.get(customer_id)
        if customer is None:
            raise CustomerNotFound(customer_id)
        recent = self.orders.recent(customer_id, RECENT)
        spend = self.orders.lifetime_spend(customer_id)
        favourite = self.orders.favourite(customer_id)
        self.audit.record(customer_id, "summary", int(time.time()))
        return build_summary(customer, recent, spend, favourite)
