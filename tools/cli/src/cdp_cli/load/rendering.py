"""Generated people rendered as the COPY text of profile's and segment's tables."""

from __future__ import annotations

from collections.abc import Sequence
from datetime import datetime
from typing import Any

import orjson
from cdp_common.hashing import subject_hash

from cdp_cli.load.aggregates import _aggregates, _iso, _orders, computed_of, reporting_currency
from cdp_cli.load.drawing import (
    ORDER,
    PAGE,
    PAGES,
    VIEW,
    _draw,
    _order_properties,
    _page_properties,
    _seen,
    _view_properties,
)
from cdp_cli.load.people import _identifiers

SOURCE_ID = "src_load"
NULL = "\\N"


PROFILE_COLUMNS = (
    "id",
    "id_hash",
    "version",
    "status",
    "traits",
    "aggregates",
    "computed",
    "created_at",
    "updated_at",
)
IDENTIFIER_COLUMNS = ("type", "value", "value_hash", "profile_id", "event_id", "first_seen_at")
EVENT_COLUMNS = (
    "event_id",
    "profile_id",
    "origin_profile_id",
    "type",
    "name",
    "timestamp",
    "received_at",
    "source_id",
    "properties",
    "traits",
    "identifiers",
)
ORDER_COLUMNS = (
    "order_id",
    "profile_id",
    "state",
    "currency",
    "total",
    "refunded",
    "net",
    "value",
    "reporting_currency",
    "coupon",
    "payment_method",
    "lines",
    "detail",
    "sources",
    "first_event_id",
    "ordered_at",
    "updated_at",
)
KNOWN_PROFILE_COLUMNS = ("profile_id", "version", "first_seen_at", "updated_at", "traits", "computed")
COLUMNS = {
    "profiles": PROFILE_COLUMNS,
    "identifiers": IDENTIFIER_COLUMNS,
    "events": EVENT_COLUMNS,
    "orders": ORDER_COLUMNS,
    "known_profiles": KNOWN_PROFILE_COLUMNS,
}


def _json(value: Any) -> str:
    # COPY's text format reads a backslash as an escape: double them (JSON escapes use them).
    return orjson.dumps(value).decode().replace("\\", "\\\\")


_VIEWS: dict[tuple[int, str], str] = {}
_PAGES: dict[tuple[int, int, bool], str] = {}


def _view_json(product: int, currency: str) -> str:
    found = _VIEWS.get((product, currency))
    if found is None:
        found = _VIEWS[(product, currency)] = _json(_view_properties(product, currency))
    return found


def _page_json(page: int, product: int, referred: bool) -> str:
    if PAGES[page][1] not in ("/c/", "/p/"):
        product = 0
    found = _PAGES.get((page, product, referred))
    if found is None:
        found = _PAGES[(page, product, referred)] = _json(_page_properties(page, product, referred))
    return found


def render_piece(
    *,
    seed: int,
    indexes: Sequence[int],
    events_per_profile: int,
    years: float,
    now: datetime,
    hash_key: str,
) -> tuple[int, int, dict[str, bytes]]:
    """Render people as COPY text for profile's and segment's tables: (people, events, rows by table)."""
    profiles: list[str] = []
    identifiers: list[str] = []
    events: list[str] = []
    orders: list[str] = []
    known: list[str] = []
    reporting = reporting_currency()
    anchor = int(now.timestamp())
    written = 0
    for index in indexes:
        drawn = _draw(seed, index, events_per_profile, years, anchor)
        pid = drawn.profile_id
        state = _aggregates(drawn, seed)
        computed = computed_of(state)
        first = _iso(drawn.identify_at, " ", "+00")
        last = _iso(
            max(drawn.events[-1][1], drawn.identify_at) if drawn.events else drawn.identify_at, " ", "+00"
        )
        identify_at = _iso(drawn.identify_at)
        provenance = {
            name: {
                "value": value,
                "source": SOURCE_ID,
                "event_id": drawn.identify_id,
                "timestamp": identify_at,
            }
            for name, value in drawn.traits.items()
        }
        version = len(drawn.events) + 1
        profiles.append(
            f"{pid}\t{subject_hash(key=hash_key, subject_type='profile_id', value=pid)}\t{version}\tactive\t"
            f"{_json(provenance)}\t{_json(state)}\t{_json(computed)}\t{first}\t{last}\n"
        )
        keys = _identifiers(drawn.user_id, drawn.email, drawn.anonymous_ids)
        for kind, value in keys:
            value_hash = subject_hash(key=hash_key, subject_type=kind, value=value)
            identifiers.append(f"{kind}\t{value}\t{value_hash}\t{pid}\t{drawn.identify_id}\t{first}\n")
        without_nulls = {name: value for name, value in computed.items() if value is not None}
        known.append(f"{pid}\t{version}\t{first}\t{last}\t{_json(drawn.traits)}\t{_json(without_nulls)}\n")
        seen = _json(_seen(drawn))
        head = f"\t{pid}\t{pid}\t"
        events.append(
            f"{drawn.identify_id}{head}identify\t{NULL}\t{first}\t{first}\t{SOURCE_ID}\t{{}}\t"
            f"{_json(drawn.traits)}\t{_json([{'type': t, 'value': v} for t, v in keys])}\n"
        )
        for event_id, at, kind, product, extra, referred in drawn.events:
            stamp = _iso(at, " ", "+00")
            if kind == PAGE:
                kind_name, properties = f"page\t{PAGES[extra][0]}", _page_json(extra, product, referred)
            elif kind == VIEW:
                kind_name, properties = f"track\t{VIEW}", _view_json(product, drawn.currency)
            else:
                kind_name = f"track\t{ORDER}"
                properties = _json(_order_properties(drawn, seed, event_id, extra))
            events.append(
                f"{event_id}{head}{kind_name}\t{stamp}\t{stamp}\t{SOURCE_ID}\t{properties}\t{{}}\t{seen}\n"
            )
        for order in _orders(drawn, seed):
            stamp = _iso(order.at, " ", "+00")
            detail = {
                "placed": True,
                "cancelled": False,
                "refunded_whole": False,
                "returned": {},
                "refunds": [],
                "currency": order.currency,
            }
            orders.append(
                f"{order.order_id}\t{pid}\tcompleted\t{order.currency}\t{order.net}\t0\t{order.net}\t"
                f"{NULL if order.value is None else order.value}\t{reporting}\t{NULL}\t{order.payment}\t"
                f"{_json(order.lines)}\t{_json(detail)}\t{{{SOURCE_ID}}}\t{order.event_id}\t{stamp}\t{stamp}\n"
            )
        written += len(drawn.events) + 1
    rows = {
        "profiles": "".join(profiles).encode(),
        "identifiers": "".join(identifiers).encode(),
        "events": "".join(events).encode(),
        "orders": "".join(orders).encode(),
        "known_profiles": "".join(known).encode(),
    }
    return len(profiles), written, rows
