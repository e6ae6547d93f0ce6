"""Orders: one per `order_id` in the workspace, whatever source or path sent it.

An order is a fold over the order events that name it, in the order they arrive. The first
creates it; a later `Order Completed` (the same order sent again, by the web tag and by the POS)
only completes what is missing; `Order Updated` replaces what it carries; `Order Cancelled`
cancels it; `Order Refunded` refunds it whole (only `order_id`), by amount (`total`) or by line
(`products`, a return). A refund is recognised by its `refund_id`, or else by its lines and
amount, so the same refund sent by two sources counts once; a line is never returned more
often than it was bought.

A profile's built-in state keeps each of its orders' contribution (`entry_of`) under the order
id, so a repeated order adds nothing and an amendment replaces what the order counted for.
"""

from __future__ import annotations

import json
from dataclasses import dataclass, field, replace
from datetime import datetime
from decimal import Decimal
from typing import Any

from cdp_profile.domain.computed import (
    DEFAULT_CURRENCY,
    ORDER_COMPLETED,
    ORDER_REFUNDED,
    StoredEvent,
    number_of,
)

ORDER_UPDATED = "Order Updated"
ORDER_CANCELLED = "Order Cancelled"
ORDER_EVENTS = frozenset({ORDER_COMPLETED, ORDER_UPDATED, ORDER_CANCELLED, ORDER_REFUNDED})
PENDING = "pending"
COMPLETED = "completed"
PARTIALLY_REFUNDED = "partially_refunded"
REFUNDED = "refunded"
CANCELLED = "cancelled"
# States whose order counts in a person's figures (a refunded order still happened: it counts
# once, net of what was refunded); a pending order is only known from a refund or cancellation.
COUNTED = frozenset({COMPLETED, PARTIALLY_REFUNDED, REFUNDED})
MAX_LINES = 500
MAX_TEXT = 500
_ZERO = Decimal(0)


@dataclass(frozen=True)
class OrderLine:
    """One line of an order as sent."""

    sku: str | None = None
    product_id: str | None = None
    name: str | None = None
    category: str | None = None
    price: Decimal | None = None
    quantity: int = 1

    @property
    def key(self) -> str:
        """Return what the line is known by: its SKU, else its product id, else its name."""
        return self.sku or self.product_id or self.name or ""

    def same_product(self, other: OrderLine) -> bool:
        """Whether two lines name the same product (by SKU or product id, else by name)."""
        ids = {v for v in (self.sku, self.product_id) if v}
        other_ids = {v for v in (other.sku, other.product_id) if v}
        if ids or other_ids:
            return bool(ids & other_ids)
        return self.name == other.name

    def to_json(self) -> dict[str, Any]:
        """Return the stored and served form."""
        return {
            "sku": self.sku,
            "product_id": self.product_id,
            "name": self.name,
            "category": self.category,
            "price": None if self.price is None else float(self.price),
            "quantity": self.quantity,
        }

    @classmethod
    def from_json(cls, raw: dict[str, Any]) -> OrderLine:
        """Read the stored form."""
        price = number_of(raw.get("price"))
        return cls(
            sku=raw.get("sku"),
            product_id=raw.get("product_id"),
            name=raw.get("name"),
            category=raw.get("category"),
            price=price,
            quantity=int(raw.get("quantity", 1)),
        )


@dataclass(frozen=True)
class Order:
    """An order and everything that amended it."""

    order_id: str
    first_event_id: str
    ordered_at: datetime
    updated_at: datetime
    currency: str | None = None
    total: Decimal | None = None
    lines: tuple[OrderLine, ...] = ()
    coupon: str | None = None
    payment_method: str | None = None
    # Seen completed or updated; an order known only from a refund or cancellation is pending.
    placed: bool = False
    cancelled: bool = False
    refunded: Decimal = _ZERO
    refunded_whole: bool = False
    # Per line key, how many of it were returned.
    returned: dict[str, int] = field(default_factory=dict)
    # The refunds applied, as they are recognised.
    refunds: tuple[str, ...] = ()
    sources: tuple[str, ...] = ()

    @property
    def currency_code(self) -> str:
        """Return the order's currency (the platform's default when none was sent)."""
        return self.currency or DEFAULT_CURRENCY

    @property
    def gross(self) -> Decimal | None:
        """Return the order's total as sent, else the sum of its priced lines, else None."""
        if self.total is not None:
            return self.total
        if self.lines and all(line.price is not None for line in self.lines):
            return sum((line.price * line.quantity for line in self.lines if line.price is not None), _ZERO)
        return None

    def returned_of(self, line: OrderLine) -> int:
        """Return how many of a line were returned."""
        return min(self.returned.get(line.key, 0), line.quantity)

    @property
    def state(self) -> str:
        """Return pending, completed, partially_refunded, refunded or cancelled."""
        if self.cancelled:
            return CANCELLED
        if not self.placed:
            return PENDING
        gross = self.gross
        every_line_back = bool(self.lines) and all(self.returned_of(x) >= x.quantity for x in self.lines)
        if self.refunded_whole or every_line_back or (gross is not None and 0 < gross <= self.refunded):
            return REFUNDED
        if self.refunded > 0 or any(self.returned_of(x) for x in self.lines):
            return PARTIALLY_REFUNDED
        return COMPLETED

    @property
    def net(self) -> Decimal:
        """Return what the order is worth: its total less refunds; nothing when cancelled or pending."""
        state = self.state
        if state not in COUNTED or state == REFUNDED:
            return _ZERO
        gross = self.gross
        return max(gross - self.refunded, _ZERO) if gross is not None else _ZERO

    @property
    def shown_refunded(self) -> Decimal:
        """Return how much of the order was refunded, at most its total."""
        gross = self.gross
        if gross is None:
            return self.refunded
        if self.state == REFUNDED:
            return gross
        return min(self.refunded, gross)

    def categories(self) -> dict[str, int]:
        """Return the quantities kept per category (nothing of a refunded or uncounted order)."""
        if self.state not in COUNTED or self.state == REFUNDED:
            return {}
        kept: dict[str, int] = {}
        for line in self.lines:
            quantity = line.quantity - self.returned_of(line)
            if line.category and quantity > 0:
                kept[line.category] = kept.get(line.category, 0) + quantity
        return kept

    def to_json(self) -> dict[str, Any]:
        """Return the fold's state as stored beside the order's columns."""
        return {
            "placed": self.placed,
            "cancelled": self.cancelled,
            "refunded_whole": self.refunded_whole,
            "returned": dict(sorted(self.returned.items())),
            "refunds": list(self.refunds),
        }


def order_of(
    *,
    order_id: str,
    first_event_id: str,
    ordered_at: datetime,
    updated_at: datetime,
    currency: str | None,
    total: Decimal | None,
    refunded: Decimal,
    lines: list[dict[str, Any]],
    coupon: str | None,
    payment_method: str | None,
    sources: list[str],
    detail: dict[str, Any],
) -> Order:
    """Return an order from its stored columns and fold state."""
    return Order(
        order_id=order_id,
        first_event_id=first_event_id,
        ordered_at=ordered_at,
        updated_at=updated_at,
        currency=currency,
        total=total,
        lines=tuple(OrderLine.from_json(raw) for raw in lines),
        coupon=coupon,
        payment_method=payment_method,
        placed=bool(detail.get("placed")),
        cancelled=bool(detail.get("cancelled")),
        refunded=refunded,
        refunded_whole=bool(detail.get("refunded_whole")),
        returned={str(k): int(v) for k, v in detail.get("returned", {}).items()},
        refunds=tuple(detail.get("refunds", ())),
        sources=tuple(sources),
    )


def order_id_of(event: StoredEvent) -> str | None:
    """Return the order an event is about, or None for an event that is no order event.

    An `Order Completed` without an order id is an order of its own, known by its event id.
    """
    if event.type != "track" or event.name not in ORDER_EVENTS:
        return None
    order_id = event.properties.get("order_id")
    if isinstance(order_id, str | int) and not isinstance(order_id, bool) and str(order_id).strip():
        return str(order_id)[:MAX_TEXT]
    return event.event_id if event.name == ORDER_COMPLETED else None


def amend(order: Order | None, event: StoredEvent, *, source_id: str) -> Order | None:
    """Return an order after one more of its events (creating it on the first), or None when
    the event is no order event."""
    order_id = order_id_of(event)
    if order_id is None:
        return None
    if order is None:
        order = Order(
            order_id=order_id,
            first_event_id=event.event_id,
            ordered_at=event.timestamp,
            updated_at=event.timestamp,
        )
    sources = order.sources if source_id in order.sources else (*order.sources, source_id)
    order = replace(order, sources=sources, updated_at=max(order.updated_at, event.timestamp))
    carried = _carried(event.properties)
    if event.name == ORDER_COMPLETED:
        missing = {name: value for name, value in carried.items() if getattr(order, name) in (None, ())}
        placed_at = min(order.ordered_at, event.timestamp) if order.placed else event.timestamp
        return replace(order, **missing, placed=True, ordered_at=placed_at)
    if event.name == ORDER_UPDATED:
        placed_at = order.ordered_at if order.placed else event.timestamp
        return replace(order, **carried, placed=True, ordered_at=placed_at)
    if event.name == ORDER_CANCELLED:
        return replace(order, cancelled=True)
    return _refund(order, event.properties)


def _refund(order: Order, properties: dict[str, Any]) -> Order:
    """Apply a refund: whole, by amount or by line, once however many sources send it."""
    asked = _lines(properties.get("products"))
    amount = _money_sent(properties)
    amount = None if amount is None else abs(amount)
    if not asked and amount is None:
        return replace(order, refunded_whole=True)
    # Each asked line against the order's line of the same product (if known yet).
    matched = [(line, next((x for x in order.lines if x.same_product(line)), None)) for line in asked]
    refund_id = properties.get("refund_id")
    if isinstance(refund_id, str | int) and not isinstance(refund_id, bool) and str(refund_id).strip():
        recognised = f"id:{refund_id}"
    else:
        shape = sorted([(mine or line).key, line.quantity] for line, mine in matched)
        recognised = "as:" + json.dumps([shape, None if amount is None else str(amount)])
    if recognised in order.refunds:
        return order
    returned = dict(order.returned)
    fresh_value, fresh_count, asked_count, priced = _ZERO, 0, 0, True
    for line, mine in matched:
        key = (mine or line).key
        held = returned.get(key, 0)
        fresh = line.quantity if mine is None else max(0, min(line.quantity, mine.quantity - held))
        returned[key] = held + fresh
        asked_count += line.quantity
        fresh_count += fresh
        price = line.price if line.price is not None else (mine.price if mine is not None else None)
        if price is None:
            priced = False
        else:
            fresh_value += price * fresh
    if not asked:
        refunded = amount or _ZERO
    elif fresh_count == asked_count and amount is not None:
        refunded = amount
    elif priced:
        refunded = fresh_value
    else:
        refunded = (amount or _ZERO) * fresh_count / asked_count if asked_count else _ZERO
    return replace(
        order,
        refunded=order.refunded + refunded,
        returned=returned,
        refunds=(*order.refunds, recognised),
    )


def _carried(properties: dict[str, Any]) -> dict[str, Any]:
    """Return the order fields an event carries (currency, total, lines, coupon, payment method)."""
    carried: dict[str, Any] = {}
    currency = properties.get("currency")
    if isinstance(currency, str) and currency.strip():
        carried["currency"] = currency.strip().upper()[:3]
    amount = _money_sent(properties)
    if amount is not None:
        carried["total"] = amount
    lines = _lines(properties.get("products"))
    if lines:
        carried["lines"] = lines
    for name in ("coupon", "payment_method"):
        value = properties.get(name)
        if isinstance(value, str) and value.strip():
            carried[name] = value[:MAX_TEXT]
    return carried


def _money_sent(properties: dict[str, Any]) -> Decimal | None:
    """Return an order's amount as sent: its revenue, else total, else value."""
    for name in ("revenue", "total", "value"):
        number = number_of(properties.get(name))
        if number is not None:
            return number
    return None


def _text(value: Any) -> str | None:
    if isinstance(value, str | int) and not isinstance(value, bool) and str(value).strip():
        return str(value)[:MAX_TEXT]
    return None


def _lines(products: Any) -> tuple[OrderLine, ...]:
    """Return the lines of an event's products (quantity 1 when none or not a positive whole number)."""
    if not isinstance(products, list):
        return ()
    lines = []
    for product in products[:MAX_LINES]:
        if not isinstance(product, dict):
            continue
        quantity = product.get("quantity", 1)
        valid = isinstance(quantity, int) and not isinstance(quantity, bool) and quantity > 0
        lines.append(
            OrderLine(
                sku=_text(product.get("sku")),
                product_id=_text(product.get("product_id")),
                name=_text(product.get("name")),
                category=product["category"][:MAX_TEXT] if isinstance(product.get("category"), str) else None,
                price=number_of(product.get("price")),
                quantity=quantity if valid else 1,
            )
        )
    return tuple(lines)


def entry_of(order: Order, value: Decimal | None) -> dict[str, Any]:
    """Return what an order counts for in its profile's built-in state (value: its net in the
    reporting currency, None when its currency has no rate)."""
    return {
        "state": order.state,
        "currency": order.currency_code,
        "net": str(order.net),
        "value": None if value is None else str(value),
        "at": order.ordered_at.isoformat(),
        "categories": order.categories(),
        "payment": order.payment_method,
    }


def published_fields(order: Order, value: Decimal | None) -> dict[str, Any]:
    """Return what consumers learn of an order: a change of these is published."""
    return {
        "state": order.state,
        "time": order.ordered_at,
        "currency": order.currency_code,
        "total": None if order.gross is None else float(order.gross),
        "refunded": float(order.shown_refunded),
        "net": float(order.net),
        "value": None if value is None else float(value),
        "coupon": order.coupon,
        "lines": [{**line.to_json(), "returned": order.returned_of(line)} for line in order.lines],
    }
