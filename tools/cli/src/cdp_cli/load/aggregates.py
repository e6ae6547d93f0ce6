"""What profile makes of a generated person's events: the built-in aggregates' state and the
computed traits derived from it."""

from __future__ import annotations

from decimal import Decimal
from typing import Any

from cdp_cli.load.drawing import DAY_SECONDS, ORDER, PAGE, PRICES, PRODUCTS, VIEW, _at, _Drawn, _order_id

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


def _aggregates(drawn: _Drawn, seed: int) -> dict[str, Any]:
    """Return the built-in aggregates' state of a person's events, as profile's folds build it."""
    pages = views = 0
    orders: list[tuple[str, int, Any]] = []
    for event_id, at, kind, _, extra, _ in drawn.events:
        if kind == PAGE:
            pages += 1
        elif kind == VIEW:
            views += 1
        else:
            orders.append((event_id, at, extra))
    tracks = views + len(orders)
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
            counts[ORDER] = len(orders)
        state["event_counts"] = counts
    last_at = drawn.events[-1][1] if drawn.events else drawn.identify_at
    state["first_seen"] = _iso(drawn.identify_at)
    state["last_seen"] = _iso(max(last_at, drawn.identify_at))
    if orders:
        gross = Decimal(0)
        categories: dict[str, dict[str, int]] = {}
        for event_id, _, lines in orders:
            bought: dict[str, int] = {}
            total = Decimal(0)
            for product, quantity in lines:
                total += PRICES[product] * quantity
                category = PRODUCTS[product][2]
                bought[category] = bought.get(category, 0) + quantity
            # The order's revenue travels as a JSON number; profile adds it up as its shortest text.
            gross += Decimal(str(float(total)))
            categories[_order_id(seed, drawn.index, event_id)] = bought
        state["orders"] = len(orders)
        state["orders_by_currency"] = {drawn.currency: len(orders)}
        state["gross"] = {drawn.currency: str(gross)}
        state["last_order_at"] = _iso(max(at for _, at, _ in orders))
        state["order_categories"] = categories
        state["payments"] = {drawn.payment: len(orders)}
    return state


_CENT = Decimal("0.01")


def _money(value: Decimal) -> float:
    return float(value.quantize(_CENT))


def _most(counter: dict[str, int]) -> str | None:
    return min(counter, key=lambda name: (-counter[name], name)) if counter else None


def computed_of(state: dict[str, Any]) -> dict[str, Any]:
    """Return the built-in computed traits of an aggregates' state, as profile derives them."""
    gross = {c: Decimal(v) for c, v in state.get("gross", {}).items()}
    by_currency = state.get("orders_by_currency", {})
    revenue = {c: _money(gross[c]) for c in sorted(gross)}
    average = {c: _money(gross[c] / by_currency[c]) for c in sorted(gross) if by_currency.get(c)}
    bought: dict[str, int] = {}
    for lines in state.get("order_categories", {}).values():
        for category, quantity in lines.items():
            bought[category] = bought.get(category, 0) + quantity
    last_order = state.get("last_order_at")
    return {
        "event_counts": dict(sorted(state.get("event_counts", {}).items())),
        "first_seen": state.get("first_seen"),
        "last_seen": state.get("last_seen"),
        "page_views": state.get("type_counts", {}).get("page", 0),
        "orders": state.get("orders", 0),
        "revenue": revenue,
        "average_order_value": average,
        "last_order_date": last_order[:10] if last_order else None,
        "refunded_orders": 0,
        "favourite_category": _most(bought),
        "preferred_payment_method": _most(state.get("payments", {})),
        "rfm_frequency": state.get("orders", 0),
        "rfm_monetary": dict(revenue),
    }
