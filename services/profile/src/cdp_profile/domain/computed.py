"""Computed traits: the built-in aggregates and user-defined ones, as mergeable folds over events.

Every aggregate is a state that one event updates (`fold_*`), that two disjoint sets of
events combine into (`combine_*`, used by merges), and from which the served value is
derived (`derive_*`). Because the event store holds each event once, folding only
newly stored events keeps the state exact under redelivery and replays.
"""

from __future__ import annotations

import builtins
import json
import re
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from decimal import Decimal, InvalidOperation
from typing import Any, Literal

from cdp_common.envelope import Envelope
from cdp_common.events import TrackingEventReceived

ORDER_COMPLETED = "Order Completed"
ORDER_REFUNDED = "Order Refunded"
# The built-in state's orders: per order id, what it counts for (domain.orders.entry_of).
ORDER_BOOK = "order_book"
COUNTED_STATES = frozenset({"completed", "partially_refunded", "refunded"})
REFUNDED_STATES = frozenset({"partially_refunded", "refunded"})
DEFAULT_CURRENCY = "USD"
MAX_UNIQUE_VALUES = 100
KEY_PATTERN = re.compile(r"^[a-z][a-z0-9_]{0,63}$")

Aggregation = Literal["count", "sum", "avg", "min", "max", "first", "last", "most_frequent", "unique"]
Operator = Literal["eq", "neq", "gt", "gte", "lt", "lte", "in", "exists", "contains"]


@dataclass(frozen=True)
class StoredEvent:
    """One event of the event store, as the folds see it."""

    event_id: str
    type: str
    name: str | None
    timestamp: datetime
    properties: dict[str, Any]


# --- built-in aggregates ----------------------------------------------------------------


def fold_builtin(state: dict[str, Any], event: StoredEvent) -> dict[str, Any]:
    """Return the built-in state with one more event folded in (orders are booked apart: `book_order`)."""
    state = {name: dict(value) if isinstance(value, dict) else value for name, value in state.items()}
    at = event.timestamp.isoformat()
    _bump(state.setdefault("type_counts", {}), event.type)
    if event.type == "track" and event.name:
        _bump(state.setdefault("event_counts", {}), event.name)
    state["first_seen"] = min(filter(None, [state.get("first_seen"), at]), key=_as_time)
    state["last_seen"] = max(filter(None, [state.get("last_seen"), at]), key=_as_time)
    return state


def book_order(state: dict[str, Any], order_id: str, entry: dict[str, Any] | None) -> dict[str, Any]:
    """Return the built-in state with what one order counts for replaced (None: the order left)."""
    book = dict(state.get(ORDER_BOOK, {}))
    if entry is None:
        book.pop(order_id, None)
    else:
        book[order_id] = entry
    return {**state, ORDER_BOOK: book}


def combine_builtin(left: dict[str, Any], right: dict[str, Any]) -> dict[str, Any]:
    """Return the state of two disjoint sets of events (and orders) taken together."""
    if not left:
        return dict(right)
    if not right:
        return dict(left)
    combined: dict[str, Any] = {}
    for counter in ("type_counts", "event_counts"):
        merged = dict(left.get(counter, {}))
        for name, count in right.get(counter, {}).items():
            merged[name] = merged.get(name, 0) + count
        if merged:
            combined[counter] = merged
    # An order belongs to one profile, so the two books hold different orders.
    book = {**left.get(ORDER_BOOK, {}), **right.get(ORDER_BOOK, {})}
    if book:
        combined[ORDER_BOOK] = book
    for name, pick in (("first_seen", min), ("last_seen", max)):
        values = [v for v in (left.get(name), right.get(name)) if v]
        if values:
            combined[name] = pick(values, key=_as_time)
    return combined


def derive_builtin(state: dict[str, Any]) -> dict[str, Any]:
    """Return the built-in computed traits a state stands for (clock-free values only)."""
    if not state:
        return {}
    counted = _counted_orders(state)
    net: dict[str, Decimal] = {}
    per_currency: dict[str, int] = {}
    bought: dict[str, int] = {}
    payments: dict[str, int] = {}
    for entry in counted:
        currency = entry["currency"]
        net[currency] = net.get(currency, Decimal(0)) + Decimal(entry["net"])
        per_currency[currency] = per_currency.get(currency, 0) + 1
        for category, quantity in entry["categories"].items():
            bought[category] = bought.get(category, 0) + quantity
        if entry.get("payment"):
            _bump(payments, entry["payment"])
    revenue = {c: _money(net[c]) for c in sorted(net)}
    net_revenue = _money(sum((Decimal(e["value"]) for e in counted if e["value"] is not None), Decimal(0)))
    last_order = _last_order_at(counted)
    return {
        "event_counts": dict(sorted(state.get("event_counts", {}).items())),
        "first_seen": state.get("first_seen"),
        "last_seen": state.get("last_seen"),
        "page_views": state.get("type_counts", {}).get("page", 0),
        "orders": len(counted),
        "revenue": revenue,
        "average_order_value": {c: _money(net[c] / per_currency[c]) for c in sorted(net)},
        "net_revenue": net_revenue,
        # An ISO time starts with its own date, which is what the date of the parsed time is.
        "last_order_date": _as_time(last_order).astimezone(UTC).date().isoformat() if last_order else None,
        "refunded_orders": sum(1 for e in counted if e["state"] in REFUNDED_STATES),
        "favourite_category": _most_frequent(bought),
        "preferred_payment_method": _most_frequent(payments),
        "rfm_frequency": len(counted),
        "rfm_monetary": net_revenue,
    }


def clock_traits(state: dict[str, Any], *, now: datetime) -> dict[str, Any]:
    """Return the values that only depend on the clock, derived when read."""
    last_order = _last_order_at(_counted_orders(state))
    last_seen = state.get("last_seen")
    days_since_order = (now - _as_time(last_order)).days if last_order else None
    return {
        "days_since_last_order": days_since_order,
        "rfm_recency_days": days_since_order,
        "days_since_last_seen": (now - _as_time(last_seen)).days if last_seen else None,
    }


def _counted_orders(state: dict[str, Any]) -> list[dict[str, Any]]:
    """Return the entries of the orders that count: placed, not cancelled."""
    return [e for e in state.get(ORDER_BOOK, {}).values() if e["state"] in COUNTED_STATES]


def _last_order_at(counted: list[dict[str, Any]]) -> str | None:
    return max((e["at"] for e in counted), key=_as_time, default=None)


# --- user-defined computed traits --------------------------------------------------------


@dataclass(frozen=True)
class PropertyFilter:
    """A condition on one event property."""

    property: str
    op: Operator
    value: Any = None

    def matches(self, properties: dict[str, Any]) -> bool:
        """Whether an event's properties satisfy the condition."""
        present, actual = property_at(properties, self.property)
        if self.op == "exists":
            return present == bool(self.value if self.value is not None else True)
        if not present:
            return self.op == "neq"
        if self.op == "eq":
            return bool(actual == self.value)
        if self.op == "neq":
            return bool(actual != self.value)
        if self.op == "in":
            return isinstance(self.value, list) and actual in self.value
        if self.op == "contains":
            return isinstance(actual, str) and isinstance(self.value, str) and self.value in actual
        number, bound = number_of(actual), number_of(self.value)
        if number is None or bound is None:
            return False
        return {
            "gt": number > bound,
            "gte": number >= bound,
            "lt": number < bound,
            "lte": number <= bound,
        }[self.op]


@dataclass(frozen=True)
class Definition:
    """A user-defined computed trait: an aggregation of an event property, filtered, windowed."""

    key: str
    aggregation: Aggregation
    event_name: str | None = None
    event_type: str | None = None
    property: str | None = None
    filters: tuple[PropertyFilter, ...] = field(default_factory=tuple)
    window_days: int | None = None
    # True while its backfill job has not been through every profile: a profile's state may
    # then hold only the events the event flow folded in since the definition was made.
    building: bool = False

    @builtins.property
    def window(self) -> timedelta | None:
        """The time window, or None for all time."""
        return timedelta(days=self.window_days) if self.window_days else None

    def selects(self, event: StoredEvent) -> bool:
        """Whether the event counts for this trait (ignoring the window)."""
        if self.event_name is not None and event.name != self.event_name:
            return False
        if self.event_type is not None and event.type != self.event_type:
            return False
        if self.property is not None and not property_at(event.properties, self.property)[0]:
            return False
        return all(f.matches(event.properties) for f in self.filters)

    def to_json(self) -> dict[str, Any]:
        """Return the stored and served form."""
        return {
            "key": self.key,
            "aggregation": self.aggregation,
            "event_name": self.event_name,
            "event_type": self.event_type,
            "property": self.property,
            "filters": [{"property": f.property, "op": f.op, "value": f.value} for f in self.filters],
            "window_days": self.window_days,
        }

    @classmethod
    def from_json(cls, raw: dict[str, Any]) -> Definition:
        """Read the stored form."""
        return cls(
            key=raw["key"],
            aggregation=raw["aggregation"],
            event_name=raw.get("event_name"),
            event_type=raw.get("event_type"),
            property=raw.get("property"),
            filters=tuple(PropertyFilter(**f) for f in raw.get("filters", [])),
            window_days=raw.get("window_days"),
            building=bool(raw.get("building", False)),
        )


def fold_defined(state: dict[str, Any], event: StoredEvent, definition: Definition) -> dict[str, Any]:
    """Return a definition's state with one more (selected) event folded in."""
    state = dict(state)
    value = property_at(event.properties, definition.property)[1] if definition.property else None
    state["count"] = state.get("count", 0) + 1
    number = number_of(value)
    if number is not None:
        state["sum"] = str(Decimal(state.get("sum", "0")) + number)
        state["numbers"] = state.get("numbers", 0) + 1
        state["min"] = (
            value if state.get("min") is None or number < Decimal(str(state["min"])) else state["min"]
        )
        state["max"] = (
            value if state.get("max") is None or number > Decimal(str(state["max"])) else state["max"]
        )
    stamp = [event.timestamp.isoformat(), event.event_id, value]
    if state.get("first") is None or _stamp_key(stamp) < _stamp_key(state["first"]):
        state["first"] = stamp
    if state.get("last") is None or _stamp_key(stamp) > _stamp_key(state["last"]):
        state["last"] = stamp
    if value is not None and definition.aggregation in ("most_frequent", "unique"):
        frequencies = dict(state.get("freq", {}))
        _bump(frequencies, json.dumps(value, sort_keys=True))
        state["freq"] = frequencies
    return state


def combine_defined(left: dict[str, Any], right: dict[str, Any]) -> dict[str, Any]:
    """Return a definition's state for two disjoint sets of events."""
    if not left:
        return dict(right)
    if not right:
        return dict(left)
    combined: dict[str, Any] = {"count": left.get("count", 0) + right.get("count", 0)}
    if "sum" in left or "sum" in right:
        combined["sum"] = str(Decimal(left.get("sum", "0")) + Decimal(right.get("sum", "0")))
        combined["numbers"] = left.get("numbers", 0) + right.get("numbers", 0)
        mins = [v for v in (left.get("min"), right.get("min")) if v is not None]
        maxes = [v for v in (left.get("max"), right.get("max")) if v is not None]
        combined["min"] = min(mins, key=lambda v: Decimal(str(v))) if mins else None
        combined["max"] = max(maxes, key=lambda v: Decimal(str(v))) if maxes else None
    firsts = [v for v in (left.get("first"), right.get("first")) if v is not None]
    lasts = [v for v in (left.get("last"), right.get("last")) if v is not None]
    combined["first"] = min(firsts, key=_stamp_key) if firsts else None
    combined["last"] = max(lasts, key=_stamp_key) if lasts else None
    if "freq" in left or "freq" in right:
        frequencies = dict(left.get("freq", {}))
        for value, count in right.get("freq", {}).items():
            frequencies[value] = frequencies.get(value, 0) + count
        combined["freq"] = frequencies
    return combined


def derive_defined(state: dict[str, Any], definition: Definition) -> Any:
    """Return the value a definition's state stands for."""
    aggregation = definition.aggregation
    if aggregation == "count":
        return state.get("count", 0)
    if aggregation == "sum":
        return _money(Decimal(state.get("sum", "0")))
    if aggregation == "avg":
        numbers = state.get("numbers", 0)
        return _money(Decimal(state["sum"]) / numbers) if numbers else None
    if aggregation in ("min", "max"):
        return state.get(aggregation)
    if aggregation in ("first", "last"):
        stamp = state.get(aggregation)
        return stamp[2] if stamp else None
    frequencies = state.get("freq", {})
    if aggregation == "most_frequent":
        best = _most_frequent(frequencies)
        return json.loads(best) if best is not None else None
    return sorted((json.loads(v) for v in frequencies), key=lambda v: json.dumps(v, sort_keys=True))[
        :MAX_UNIQUE_VALUES
    ]


def fold_all(events: Iterable[StoredEvent], definition: Definition, *, now: datetime) -> dict[str, Any]:
    """Fold every selected event (inside the window, when there is one) into a fresh state."""
    state: dict[str, Any] = {}
    since = now - definition.window if definition.window else None
    for event in events:
        if definition.selects(event) and (since is None or event.timestamp > since):
            state = fold_defined(state, event, definition)
    return state


def next_change_at(state: dict[str, Any], definition: Definition) -> datetime | None:
    """Return when the oldest event inside a windowed trait's window ages out, if ever."""
    if definition.window is None or not state.get("first"):
        return None
    first: datetime = _as_time(state["first"][0])
    return first + definition.window


# --- helpers of the folds ------------------------------------------------------------------


def property_at(properties: dict[str, Any], path: str | None) -> tuple[bool, Any]:
    """Return whether a dotted property path exists and its value."""
    if path is None:
        return False, None
    current: Any = properties
    for part in path.split("."):
        if not isinstance(current, dict) or part not in current:
            return False, None
        current = current[part]
    return True, current


def _bump(counter: dict[str, int], name: str) -> None:
    counter[name] = counter.get(name, 0) + 1


def _as_time(value: str) -> datetime:
    parsed = datetime.fromisoformat(value)
    return parsed if parsed.tzinfo else parsed.replace(tzinfo=UTC)


def _stamp_key(stamp: list[Any]) -> tuple[datetime, str]:
    return _as_time(stamp[0]), str(stamp[1])


def number_of(value: Any) -> Decimal | None:
    """Return a finite number as a Decimal, or None for anything else."""
    if isinstance(value, bool) or not isinstance(value, int | float | str):
        return None
    try:
        number = Decimal(str(value))
    except InvalidOperation:
        return None
    return number if number.is_finite() else None


_CENT = Decimal("0.01")


def _money(value: Decimal) -> float:
    return float(value.quantize(_CENT))


def _most_frequent(counter: dict[str, int]) -> str | None:
    if not counter:
        return None
    return min(counter, key=lambda name: (-counter[name], name))


def event_name(event: TrackingEventReceived) -> str | None:
    """Return the name an event is counted under: the track event, or the page/screen name."""
    if event.type == "track":
        return event.event
    if event.type in ("page", "screen"):
        return event.name
    return None


def stored_event_of(envelope: Envelope[Any]) -> StoredEvent:
    """Return a tracking event as the event store and the folds see it."""
    event: TrackingEventReceived = envelope.data
    return StoredEvent(
        event_id=envelope.id,
        type=event.type,
        name=event_name(event),
        timestamp=event.timestamp,
        properties=event.properties,
    )


def computed_of(
    aggregates: dict[str, Any], states: dict[str, dict[str, Any]], definitions: Sequence[Definition]
) -> dict[str, Any]:
    """Return the computed traits of built-in aggregates and user-defined states."""
    computed = derive_builtin(aggregates)
    for definition in definitions:
        computed[definition.key] = derive_defined(states.get(definition.key, {}), definition)
    return computed


def refreshed_builtins(
    computed: dict[str, Any], aggregates: dict[str, Any], definitions: Sequence[Definition]
) -> dict[str, Any]:
    """Return computed traits with the built-ins re-derived and user-defined values kept."""
    refreshed = {**computed, **derive_builtin(aggregates)}
    for definition in definitions:
        if definition.key not in refreshed:
            refreshed[definition.key] = derive_defined({}, definition)
    return refreshed
