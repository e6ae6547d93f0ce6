"""What profile makes of a generated person's events: their orders, the built-in aggregates' state
and the computed traits derived from it."""

from __future__ import annotations

import os
from dataclasses import dataclass
from decimal import ROUND_HALF_EVEN, Decimal
from typing import Any

from cdp_cli.load.drawing import DAY_SECONDS, ORDER, PAGE, PRICES, PRODUCTS, VIEW, _at, _Drawn, _order_id

_CENT = Decimal("0.01")
_DAYS: dict[int, str] = {}
_CLOCKS: list[str] = []


def _iso(epoch: int, separator: str = "T", zone: str = "+00:00") -> str:
    """Return a UTC time as ISO text, from tables of days and times of day."""
    if not _CLOCKS:
        _CLOCKS.extend(f"{s // 3600:02d}:{s // 60 % 60:02d}:{s % 60:02d}" for s in range(DAY_SECONDS))
    day = epoch // DAY_SECONDS
    date = _DAYS.get(day)
    if date is None:
        date = _DAYS[day] = _at(day * DAY_SECONDS).strftime("%Y-%m-%d")
    return f"{date}{separator}{_CLOCKS[epoch - day * DAY_SECONDS]}{zone}"


def reporting_currency() -> str:
    """Return profile's reporting currency (`CDP_REPORTING_CURRENCY`, EUR by default).

    Loaded orders in it are valued at their net; the others are kept without a rate, as profile
    keeps orders in a currency it has no rate for.
    """
    return os.environ.get("CDP_REPORTING_CURRENCY", "EUR").upper()


@dataclass(frozen=True)
class _Order:
    """One generated order as profile records it: completed once, by the loader's source."""

    order_id: str
    event_id: str
    at: int
    currency: str
    net: Decimal
    value: Decimal | None
    lines: list[dict[str, Any]]
    categories: dict[str, int]
    payment: str


def _orders(drawn: _Drawn, seed: int) -> list[_Order]:
    """Return a person's orders, one per Order Completed event."""
    reporting = reporting_currency()
    found = []
    for event_id, at, kind, _, lines, _ in drawn.events:
        if kind != ORDER:
            continue
        bought: dict[str, int] = {}
        total = Decimal(0)
        for product, quantity in lines:
            total += PRICES[product] * quantity
            category = PRODUCTS[product][2]
            bought[category] = bought.get(category, 0) + quantity
        # The order's revenue travels as a JSON number; profile reads it as its shortest text.
        net = Decimal(str(float(total)))
        found.append(
            _Order(
                order_id=_order_id(seed, drawn.index, event_id),
                event_id=event_id,
                at=at,
                currency=drawn.currency,
                net=net,
                # Profile values an amount in cents of the reporting currency.
                value=net.quantize(_CENT, rounding=ROUND_HALF_EVEN) if drawn.currency == reporting else None,
                lines=[
                    {
                        "sku": PRODUCTS[product][0],
                        "product_id": PRODUCTS[product][0],
                        "name": PRODUCTS[product][1],
                        "category": PRODUCTS[product][2],
                        "price": float(Decimal(str(PRODUCTS[product][3]))),
                        "quantity": quantity,
                    }
                    for product, quantity in lines
                ],
                categories=bought,
                payment=drawn.payment,
            )
        )
    return found


def _aggregates(drawn: _Drawn, seed: int) -> dict[str, Any]:
    """Return the built-in aggregates' state of a person's events and orders, as profile builds it."""
    pages = views = orders = 0
    for _, _, kind, _, _, _ in drawn.events:
        if kind == PAGE:
            pages += 1
        elif kind == VIEW:
            views += 1
        else:
            orders += 1
    tracks = views + orders
    type_counts = {"identify": 1}
    if pages:
        type_counts["page"] = pages
    if tracks:
        type_counts["track"] = tracks
    state: dict[str, Any] = {"type_counts": type_counts}
    if tracks:
        counts = {}
        if views:
            counts[VIEW] = views
        if orders:
            counts[ORDER] = orders
        state["event_counts"] = counts
    last_at = drawn.events[-1][1] if drawn.events else drawn.identify_at
    state["first_seen"] = _iso(drawn.identify_at)
    state["last_seen"] = _iso(max(last_at, drawn.identify_at))
    if orders:
        state["order_book"] = {
            order.order_id: {
                "state": "completed",
                "currency": order.currency,
                "net": str(order.net),
                "value": None if order.value is None else str(order.value),
                "at": _iso(order.at),
                "categories": order.categories,
                "payment": order.payment,
            }
            for order in _orders(drawn, seed)
        }
    return state


def _money(value: Decimal) -> float:
    return float(value.quantize(_CENT))


def _most(counter: dict[str, int]) -> str | None:
    return min(counter, key=lambda name: (-counter[name], name)) if counter else None


def computed_of(state: dict[str, Any]) -> dict[str, Any]:
    """Return the built-in computed traits of an aggregates' state, as profile derives them."""
    book = state.get("order_book", {}).values()
    net: dict[str, Decimal] = {}
    per_currency: dict[str, int] = {}
    bought: dict[str, int] = {}
    payments: dict[str, int] = {}
    for order in book:
        net[order["currency"]] = net.get(order["currency"], Decimal(0)) + Decimal(order["net"])
        per_currency[order["currency"]] = per_currency.get(order["currency"], 0) + 1
        for category, quantity in order["categories"].items():
            bought[category] = bought.get(category, 0) + quantity
        payments[order["payment"]] = payments.get(order["payment"], 0) + 1
    net_revenue = _money(sum((Decimal(o["value"]) for o in book if o["value"] is not None), Decimal(0)))
    last_order = max((o["at"] for o in book), default=None)
    return {
        "event_counts": dict(sorted(state.get("event_counts", {}).items())),
        "first_seen": state.get("first_seen"),
        "last_seen": state.get("last_seen"),
        "page_views": state.get("type_counts", {}).get("page", 0),
        "orders": len(book),
        "revenue": {c: _money(net[c]) for c in sorted(net)},
        "average_order_value": {c: _money(net[c] / per_currency[c]) for c in sorted(net)},
        "net_revenue": net_revenue,
        "last_order_date": last_order[:10] if last_order else None,
        "refunded_orders": 0,
        "favourite_category": _most(bought),
        "preferred_payment_method": _most(payments),
        "rfm_frequency": len(book),
        "rfm_monetary": net_revenue,
    }
