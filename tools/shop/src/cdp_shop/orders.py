"""The published order rules, applied to the generated calls in the order they are sent: one order per
order id whatever sent it, amended by cancellations and refunds, valued in the reporting currency.

This is the ground truth's own reading of services/profile/README.md ("Orders" and "Reporting
currency and exchange rates"), written independently of the profile service:

- an order is known by its `order_id`; the first order event that names it creates it, and it
  counts on the profile that ends up holding that event;
- a later `Order Completed` of the same order (the ERP sending again what the web tag sent)
  only completes what is missing: currency, total, lines, payment method;
- `Order Cancelled` cancels it; `Order Refunded` refunds it whole (only `order_id`), by amount
  (`total`) or by line (`products`, a return); the same refund sent by two sources (the same
  lines and amount) counts once, and a line never comes back more often than it was bought;
- an order is `completed`, `partially_refunded`, `refunded`, `cancelled` or `pending`; a
  cancelled or pending order counts nowhere, a refunded one counts once and is worth nothing;
- its value is its net in the reporting currency at the euro reference rate of its day (the
  latest earlier day when its day has none), rounded to cents; without any rate it has none.
"""

from __future__ import annotations

from bisect import bisect_right
from collections.abc import Sequence
from dataclasses import dataclass, field
from datetime import UTC, date, datetime
from decimal import ROUND_HALF_EVEN, Decimal
from typing import Any

from cdp_shop.calls import ORDER_CANCELLED, ORDER_COMPLETED, ORDER_REFUNDED, Call
from cdp_shop.catalogue import REPORTING_CURRENCY

ORDER_EVENTS = frozenset({ORDER_COMPLETED, ORDER_CANCELLED, ORDER_REFUNDED})
COUNTED = frozenset({"completed", "partially_refunded", "refunded"})
REFUNDED_STATES = frozenset({"partially_refunded", "refunded"})
CENT = Decimal("0.01")
ZERO = Decimal(0)


@dataclass(frozen=True)
class Line:
    """One line of an order."""

    sku: str
    category: str | None
    price: Decimal | None
    quantity: int


@dataclass
class TrueOrder:
    """An order and what amended it, folded from its events."""

    order_id: str
    first_call: int
    ordered_at: datetime
    currency: str | None = None
    total: Decimal | None = None
    lines: tuple[Line, ...] = ()
    payment_method: str | None = None
    placed: bool = False
    cancelled: bool = False
    refunded: Decimal = ZERO
    refunded_whole: bool = False
    returned: dict[str, int] = field(default_factory=dict)
    refunds: set[str] = field(default_factory=set)
    refund_time: datetime | None = None
    cancel_time: datetime | None = None
    # Who sent it: `web` (the tag's track calls), `pos` (transactions), in order of first arrival.
    sent_by: list[str] = field(default_factory=list)

    @property
    def gross(self) -> Decimal | None:
        """Return the total as sent, else the sum of priced lines."""
        if self.total is not None:
            return self.total
        if self.lines and all(line.price is not None for line in self.lines):
            return sum((line.price * line.quantity for line in self.lines if line.price is not None), ZERO)
        return None

    def returned_of(self, line: Line) -> int:
        """Return how many of a line came back."""
        return min(self.returned.get(line.sku, 0), line.quantity)

    @property
    def state(self) -> str:
        """Return the order's state."""
        if self.cancelled:
            return "cancelled"
        if not self.placed:
            return "pending"
        gross = self.gross
        all_back = bool(self.lines) and all(self.returned_of(line) >= line.quantity for line in self.lines)
        if self.refunded_whole or all_back or (gross is not None and 0 < gross <= self.refunded):
            return "refunded"
        if self.refunded > 0 or any(self.returned_of(line) for line in self.lines):
            return "partially_refunded"
        return "completed"

    @property
    def net(self) -> Decimal:
        """Return what the order is worth in its own currency."""
        gross = self.gross
        if self.state not in COUNTED or self.state == "refunded" or gross is None:
            return ZERO
        return max(gross - self.refunded, ZERO)

    def kept(self) -> dict[str, int]:
        """Return the quantities kept per category (nothing of a refunded or uncounted order)."""
        if self.state not in COUNTED or self.state == "refunded":
            return {}
        kept: dict[str, int] = {}
        for line in self.lines:
            quantity = line.quantity - self.returned_of(line)
            if line.category and quantity > 0:
                kept[line.category] = kept.get(line.category, 0) + quantity
        return kept


class Rates:
    """The world's reference rates: units of each currency for one euro, by day."""

    def __init__(self, days: Sequence[dict[str, Any]]) -> None:
        self._days: dict[str, list[tuple[date, Decimal]]] = {}
        for day in sorted(days, key=lambda d: str(d["date"])):
            for currency, rate in day["rates"].items():
                self._days.setdefault(currency, []).append(
                    (date.fromisoformat(day["date"]), Decimal(str(rate)))
                )

    def value(self, order: TrueOrder) -> Decimal | None:
        """Return an order's net in the reporting currency at its day's rate (the latest earlier
        day's when its day has none); None without any rate."""
        currency = order.currency or "USD"
        factor: Decimal | None = Decimal(1)
        if currency != REPORTING_CURRENCY:
            known = self._days.get(currency, [])
            at = bisect_right(known, order.ordered_at.astimezone(UTC).date(), key=lambda entry: entry[0])
            factor = Decimal(1) / known[at - 1][1] if at else None
        if factor is None:
            return None
        return (order.net * factor).quantize(CENT, rounding=ROUND_HALF_EVEN)


def order_facts(call: Call) -> tuple[str | None, dict[str, Any]]:
    """Return the event name a call is counted under and its properties (a transaction as ingest
    turns it into a track call)."""
    if call.kind == "transaction":
        document = call.body
        name = ORDER_COMPLETED if document["kind"] == "purchase" else ORDER_REFUNDED
        return name, {
            "order_id": document["order_id"],
            "total": document["total"],
            "revenue": document["total"],
            "currency": document["currency"],
            "products": document["items"],
            "payment_method": document.get("payment_method"),
        }
    return call.body.get("event"), call.body.get("properties", {})


def fold_orders(calls: Sequence[Call]) -> dict[str, TrueOrder]:
    """Fold every order event of the calls, in the order sent, into one order per order id."""
    orders: dict[str, TrueOrder] = {}
    for index, call in enumerate(calls):
        name, properties = order_facts(call)
        order_id = properties.get("order_id")
        if name not in ORDER_EVENTS or not isinstance(order_id, str):
            continue
        order = orders.setdefault(
            order_id, TrueOrder(order_id=order_id, first_call=index, ordered_at=call.time)
        )
        sender = "pos" if call.kind == "transaction" else "web"
        if sender not in order.sent_by:
            order.sent_by.append(sender)
        if name == ORDER_COMPLETED:
            _complete(order, properties, call.time)
        elif name == ORDER_CANCELLED:
            order.cancelled = True
            order.cancel_time = order.cancel_time or call.time
        else:
            _refund(order, properties)
            order.refund_time = order.refund_time or call.time
    return orders


def _complete(order: TrueOrder, properties: dict[str, Any], at: datetime) -> None:
    order.ordered_at = min(order.ordered_at, at) if order.placed else at
    order.placed = True
    if order.currency is None and properties.get("currency"):
        order.currency = str(properties["currency"]).upper()
    if order.total is None:
        order.total = _amount(properties)
    if not order.lines:
        order.lines = _lines(properties.get("products"))
    if order.payment_method is None and properties.get("payment_method"):
        order.payment_method = str(properties["payment_method"])


def _refund(order: TrueOrder, properties: dict[str, Any]) -> None:
    asked = _lines(properties.get("products"))
    amount = _amount(properties)
    amount = None if amount is None else abs(amount)
    if not asked and amount is None:
        order.refunded_whole = True
        return
    bought = {line.sku: line for line in order.lines}
    recognised = repr(
        (sorted((line.sku, line.quantity) for line in asked), None if amount is None else str(amount))
    )
    if recognised in order.refunds:
        return
    order.refunds.add(recognised)
    fresh_value, fresh_count, asked_count, priced = ZERO, 0, 0, True
    for line in asked:
        mine = bought.get(line.sku)
        held = order.returned.get(line.sku, 0)
        fresh = line.quantity if mine is None else max(0, min(line.quantity, mine.quantity - held))
        order.returned[line.sku] = held + fresh
        asked_count += line.quantity
        fresh_count += fresh
        price = line.price if line.price is not None else (mine.price if mine else None)
        if price is None:
            priced = False
        else:
            fresh_value += price * fresh
    if not asked:
        order.refunded += amount or ZERO
    elif fresh_count == asked_count and amount is not None:
        order.refunded += amount
    elif priced:
        order.refunded += fresh_value
    else:
        order.refunded += (amount or ZERO) * fresh_count / asked_count


def _amount(properties: dict[str, Any]) -> Decimal | None:
    for name in ("revenue", "total", "value"):
        value = properties.get(name)
        if isinstance(value, int | float) and not isinstance(value, bool):
            return Decimal(str(value))
    return None


def _lines(products: Any) -> tuple[Line, ...]:
    if not isinstance(products, list):
        return ()
    return tuple(
        Line(
            sku=str(p["sku"]),
            category=p.get("category"),
            price=None if p.get("price") is None else Decimal(str(p["price"])),
            quantity=int(p.get("quantity", 1)),
        )
        for p in products
    )
