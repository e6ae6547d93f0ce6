"""`cdp load`: fill a stack with a generated customer base in bulk, straight into the services' tables.

A base of N people, each with the identifiers, traits and events of a shop's customer (an
identify, page views, "Product Viewed" and "Order Completed" events spread over a number of
years, some of them recent), is written with PostgreSQL's COPY into what the services would
have built from those events:

- profile's `profiles` (traits with provenance, the built-in aggregates' state and the computed
  traits derived from it, the version the events would have given), `identifiers` and `events`;
- segment's copy of each profile (`known_profiles`: traits, computed traits and version), so
  segments evaluate over the base as if segment had read every profile message.

Everyone is generated from the seed and their index alone (profile id, event ids, every
value), so a load is written in chunks of whole people, each chunk in one transaction, and a
rerun writes only the people that are not there yet. Nothing goes through Kafka: no profile
message is published for loaded people, and consent and campaign learn nothing of them.
"""

from __future__ import annotations

import asyncio
import hashlib
import os
import shutil
import time
from collections.abc import AsyncIterator, Callable, Sequence
from concurrent.futures import ProcessPoolExecutor
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from decimal import Decimal
from multiprocessing import get_context
from pathlib import Path
from typing import Annotated, Any
from urllib.parse import urlsplit

import asyncpg
import orjson
import typer
from cdp_common.hashing import subject_hash
from rich.console import Console

from cdp_cli.config import DEFAULT_ENV_FILE, read_env_file

CHUNK_PROFILES = 25_000
# People rendered and copied at a time inside a chunk's transaction, and how many pieces are
# rendered ahead of the one being copied: big enough for COPY to stream, small enough that
# rendering overlaps with copying and memory stays bounded.
PIECE_PROFILES = 2_500
PIECES_AHEAD = 3
# Bytes the base takes on disk (tables and indexes, as pg_total_relation_size counts them),
# measured on a base of 100,000 people with 10 events each: per person and per event.
BYTES_PER_PROFILE = 5_700
BYTES_PER_EVENT = 860
# Room kept free beyond the estimate: WAL, index builds and the database's own growth.
DISK_HEADROOM = 1.25
# A load adding at least this many events, and at least as many as the store holds, drops the
# tables' secondary indexes and builds them again after: one sorted build beats millions of
# single inserts (on 100,000 people with 10 events each, 2x faster in all).
REBUILD_EVENTS_FROM = 1_000_000
SOURCE_ID = "src_load"
NULL = "\\N"

# The secondary indexes of the base's tables, exactly as the services' migrations create them.
# Only an index whose definition still reads like this is dropped, so it is built back the same;
# unique indexes stay (they are constraints).
SECONDARY_INDEXES = {
    "profile.profiles_id_hash": "CREATE INDEX profiles_id_hash ON profile.profiles USING btree (id_hash)",
    "profile.profiles_updated": "CREATE INDEX profiles_updated ON profile.profiles USING btree (updated_at, id)",
    "profile.profiles_traits": "CREATE INDEX profiles_traits ON profile.profiles USING gin (traits jsonb_path_ops)",
    "profile.identifiers_profile_id": "CREATE INDEX identifiers_profile_id ON profile.identifiers "
    "USING btree (profile_id)",
    "profile.identifiers_value_hash": "CREATE INDEX identifiers_value_hash ON profile.identifiers "
    "USING btree (value_hash)",
    "profile.events_profile_time": "CREATE INDEX events_profile_time ON profile.events USING btree "
    '(profile_id, "timestamp", seq)',
    "profile.events_profile_name_time": "CREATE INDEX events_profile_name_time ON profile.events USING btree "
    '(profile_id, name, "timestamp")',
    "profile.events_profile_type_time": "CREATE INDEX events_profile_type_time ON profile.events USING btree "
    '(profile_id, type, "timestamp")',
    "segment.known_profiles_traits": "CREATE INDEX known_profiles_traits ON segment.known_profiles "
    "USING gin (traits jsonb_path_ops)",
    "segment.known_profiles_computed": "CREATE INDEX known_profiles_computed ON segment.known_profiles "
    "USING gin (computed jsonb_path_ops)",
}

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
KNOWN_PROFILE_COLUMNS = ("profile_id", "version", "first_seen_at", "updated_at", "traits", "computed")
COLUMNS = {
    "profiles": PROFILE_COLUMNS,
    "identifiers": IDENTIFIER_COLUMNS,
    "events": EVENT_COLUMNS,
    "known_profiles": KNOWN_PROFILE_COLUMNS,
}

# --- what a person looks like ------------------------------------------------------------------

FIRST_NAMES = (
    "Ada", "Alan", "Anna", "Ben", "Carla", "Chen", "David", "Elena", "Emil", "Fatima", "Felix", "Grace",
    "Hannah", "Ibrahim", "Ines", "Jonas", "Julia", "Kai", "Laura", "Lea", "Leon", "Lina", "Luca", "Maria",
    "Marta", "Max", "Mia", "Noah", "Nora", "Olivia", "Omar", "Paul", "Priya", "Rosa", "Sara", "Sofia",
    "Tom", "Yuki", "Zoe", "Jan",
)  # fmt: skip
LAST_NAMES = (
    "Schmidt", "Mueller", "Meyer", "Weber", "Fischer", "Wagner", "Becker", "Hoffmann", "Koch", "Richter",
    "Klein", "Wolf", "Neumann", "Schwarz", "Smith", "Jones", "Brown", "Taylor", "Wilson", "Martin",
    "Garcia", "Rossi", "Russo", "Dubois", "Laurent", "Novak", "Kowalski", "Nielsen", "Jansen", "Silva",
)  # fmt: skip
CITIES = (
    ("Berlin", "DE", "10"), ("Hamburg", "DE", "20"), ("Munich", "DE", "80"), ("Cologne", "DE", "50"),
    ("Frankfurt", "DE", "60"), ("Leipzig", "DE", "04"), ("Vienna", "AT", "10"), ("Zurich", "CH", "80"),
    ("Amsterdam", "NL", "10"), ("Paris", "FR", "75"), ("Lyon", "FR", "69"), ("Milan", "IT", "20"),
    ("Madrid", "ES", "28"), ("London", "GB", "EC"), ("Manchester", "GB", "M1"), ("New York", "US", "10"),
    ("Boston", "US", "02"), ("Copenhagen", "DK", "12"), ("Warsaw", "PL", "00"), ("Prague", "CZ", "11"),
)  # fmt: skip
PLANS = ("free", "free", "free", "basic", "basic", "pro", "business")
CATEGORIES = ("Tea", "Coffee", "Cups", "Accessories", "Gifts", "Books", "Sweets", "Kettles")
PAYMENT_METHODS = ("card", "card", "card", "paypal", "paypal", "invoice", "apple_pay")
CURRENCIES = ("EUR",) * 17 + ("USD", "USD", "GBP")
PAGES = (
    ("Home", "/", "Tea and more"),
    ("Category", "/c/", "Category"),
    ("Product", "/p/", "Product"),
    ("Cart", "/cart", "Your cart"),
    ("Search", "/search", "Search"),
)
# (sku, name, category, price); a product's category is its number modulo the categories.
PRODUCTS = tuple(
    (
        f"SKU-{n:04d}",
        f"{CATEGORIES[n % len(CATEGORIES)]} no. {n}",
        CATEGORIES[n % len(CATEGORIES)],
        float(Decimal(199 + (n * 7919) % 4800) / 100),
    )
    for n in range(240)
)
PRICES = tuple(Decimal(str(p[3])) for p in PRODUCTS)
LINE_COUNTS = (1, 1, 1, 2, 2, 3)
QUANTITIES = (1, 1, 1, 2, 3)
DAY_SECONDS = 86_400
# A share of the people (in 256ths) active in the last RECENT_DAYS days.
RECENT_SHARE = 77
RECENT_DAYS = 7
# Bytes of the hash drawn per person: 16 per id (profile, two devices, each event), then dice.
PERSON_DICE = 24
EVENT_DICE = 20

PAGE = "page"
VIEW = "Product Viewed"
ORDER = "Order Completed"


@dataclass(frozen=True)
class GeneratedEvent:
    """One event of a generated person, as the event store holds it."""

    event_id: str
    type: str
    name: str | None
    timestamp: datetime
    properties: dict[str, Any]
    traits: dict[str, Any]
    identifiers: list[dict[str, str]]


@dataclass(frozen=True)
class _Drawn:
    """A person as drawn: everything else is derived from these values."""

    index: int
    profile_id: str
    user_id: str | None
    anonymous_ids: tuple[str, ...]
    email: str
    traits: dict[str, Any]
    currency: str
    payment: str
    identify_id: str
    identify_at: int
    # (event id, epoch seconds, kind, product, page or order lines, referrer)
    events: list[tuple[str, int, str, int, Any, bool]]


# A hex digit with its top two bits made 10, as a UUID's variant has them.
_VARIANT = {digit: "89ab"[int(digit, 16) & 3] for digit in "0123456789abcdef"}


def _uuid_text(hexed: str, o: int) -> str:
    """Return 32 hex digits of `hexed` from offset `o` in the shape of a UUID (version 4)."""
    return (
        f"{hexed[o : o + 8]}-{hexed[o + 8 : o + 12]}-4{hexed[o + 13 : o + 16]}-"
        f"{_VARIANT[hexed[o + 16]]}{hexed[o + 17 : o + 20]}-{hexed[o + 20 : o + 32]}"
    )


def _hash(seed: int, index: int, size: int) -> bytes:
    return hashlib.shake_256(b"cdp-load:%d:%d" % (seed, index)).digest(size)


def profile_id_of(*, seed: int, index: int) -> str:
    """Return the profile id of the person of this index, without drawing the rest."""
    return _uuid_text(_hash(seed, index, 16).hex(), 0)


def _draw(seed: int, index: int, events_per_profile: int, years: float, now: int) -> _Drawn:
    """Draw the person of this index under this seed: the same every time, whatever else was loaded."""
    ids_size = 16 * (events_per_profile + 3)
    raw = _hash(seed, index, ids_size + PERSON_DICE + EVENT_DICE * events_per_profile)
    ids = raw[:ids_size].hex()
    dice = raw[ids_size:]
    first = FIRST_NAMES[dice[0] % len(FIRST_NAMES)]
    last = LAST_NAMES[dice[1] % len(LAST_NAMES)]
    city, country, postal = CITIES[dice[2] % len(CITIES)]
    email = f"{first}.{last}.{seed}-{index}@example.com".lower()
    user_id = f"cus-{seed}-{index}" if dice[3] < 192 else None
    anonymous_ids = (_uuid_text(ids, 32),) + ((_uuid_text(ids, 64),) if dice[4] < 38 else ())
    traits: dict[str, Any] = {
        "name": f"{first} {last}",
        "first_name": first,
        "last_name": last,
        "email": email,
        "city": city,
        "plan": PLANS[dice[5] % len(PLANS)],
        "address": {
            "city": city,
            "country": country,
            "postal_code": f"{postal}{int.from_bytes(dice[6:8]) % 1000:03d}",
        },
    }
    span = max(int(years * 365 * DAY_SECONDS), 1)
    start = now - int.from_bytes(dice[8:12]) % span
    if dice[12] < RECENT_SHARE:
        last_at = now - int.from_bytes(dice[13:17]) % (RECENT_DAYS * DAY_SECONDS)
    else:
        last_at = start + int.from_bytes(dice[13:17]) % max(now - start, 1)
    start = min(start, last_at)
    width = last_at - start + 1
    taste = dice[19] % len(CATEGORIES)
    events: list[tuple[str, int, str, int, Any, bool]] = []
    for k in range(events_per_profile - 1):
        e = dice[PERSON_DICE + EVENT_DICE * k : PERSON_DICE + EVENT_DICE * (k + 1)]
        at = start + int.from_bytes(e[0:4]) % width
        if e[7] < 128:
            product = taste + len(CATEGORIES) * (e[8] % (len(PRODUCTS) // len(CATEGORIES)))
        else:
            product = int.from_bytes(e[5:7]) % len(PRODUCTS)
        event_id = _uuid_text(ids, 128 + 32 * k)
        if e[4] < 115:
            events.append((event_id, at, PAGE, product, e[9] % len(PAGES), e[10] < 77))
        elif e[4] < 225:
            events.append((event_id, at, VIEW, product, None, False))
        else:
            count = LINE_COUNTS[e[11] % len(LINE_COUNTS)]
            lines = [(product, QUANTITIES[e[12] % len(QUANTITIES)])]
            for extra in range(1, count):
                other = int.from_bytes(e[13 + 2 * extra : 15 + 2 * extra]) % len(PRODUCTS)
                lines.append((other, QUANTITIES[e[12 + extra] % len(QUANTITIES)]))
            events.append((event_id, at, ORDER, product, lines, False))
    events.sort(key=lambda event: (event[1], event[0]))
    return _Drawn(
        index=index,
        profile_id=_uuid_text(ids, 0),
        user_id=user_id,
        anonymous_ids=anonymous_ids,
        email=email,
        traits=traits,
        currency=CURRENCIES[dice[17] % len(CURRENCIES)],
        payment=PAYMENT_METHODS[dice[18] % len(PAYMENT_METHODS)],
        identify_id=_uuid_text(ids, 96),
        identify_at=start,
        events=events,
    )


def _order_id(seed: int, index: int, event_id: str) -> str:
    return f"ord-{seed}-{index}-{event_id[:8]}"


def _order_properties(
    drawn: _Drawn, seed: int, event_id: str, lines: list[tuple[int, int]]
) -> dict[str, Any]:
    total = sum((PRICES[product] * quantity for product, quantity in lines), Decimal(0))
    return {
        "order_id": _order_id(seed, drawn.index, event_id),
        "revenue": float(total),
        "currency": drawn.currency,
        "payment_method": drawn.payment,
        "products": [
            {
                "product_id": PRODUCTS[product][0],
                "sku": PRODUCTS[product][0],
                "name": PRODUCTS[product][1],
                "category": PRODUCTS[product][2],
                "price": PRODUCTS[product][3],
                "quantity": quantity,
            }
            for product, quantity in lines
        ],
    }


def _view_properties(product: int, currency: str) -> dict[str, Any]:
    sku, name, category, price = PRODUCTS[product]
    return {
        "product_id": sku,
        "sku": sku,
        "name": name,
        "category": category,
        "price": price,
        "currency": currency,
    }


def _page_properties(page: int, product: int, referred: bool) -> dict[str, Any]:
    _, path, title = PAGES[page]
    if path in ("/c/", "/p/"):
        path = f"{path}{PRODUCTS[product][0].lower()}"
    return {
        "path": path,
        "url": f"https://shop.example.com{path}",
        "title": title,
        "referrer": "https://www.google.com/" if referred else "",
    }


@dataclass(frozen=True)
class Person:
    """One generated customer: identifiers, traits and events, and what profile makes of them."""

    index: int
    profile_id: str
    user_id: str | None
    anonymous_ids: tuple[str, ...]
    email: str
    traits: dict[str, Any]
    events: tuple[GeneratedEvent, ...]
    aggregates: dict[str, Any]

    @property
    def identifiers(self) -> list[tuple[str, str]]:
        """Return the person's (type, value) identifiers, as profile holds them."""
        return _identifiers(self.user_id, self.email, self.anonymous_ids)

    @property
    def computed(self) -> dict[str, Any]:
        """Return the built-in computed traits profile serves for the person."""
        return computed_of(self.aggregates)


def _identifiers(user_id: str | None, email: str, anonymous_ids: Sequence[str]) -> list[tuple[str, str]]:
    found = [("user_id", user_id)] if user_id else []
    return [*found, ("email", email), *(("anonymous_id", a) for a in anonymous_ids)]


def person(*, seed: int, index: int, events_per_profile: int, years: float, now: datetime) -> Person:
    """Return the person of this index under this seed, with every event as the event store holds it."""
    drawn = _draw(seed, index, events_per_profile, years, int(now.timestamp()))
    seen = _seen(drawn)
    events = [
        GeneratedEvent(
            drawn.identify_id,
            "identify",
            None,
            _at(drawn.identify_at),
            {},
            drawn.traits,
            [
                {"type": t, "value": v}
                for t, v in _identifiers(drawn.user_id, drawn.email, drawn.anonymous_ids)
            ],
        )
    ]
    for event_id, at, kind, product, extra, referred in drawn.events:
        if kind == PAGE:
            page = PAGES[extra][0]
            events.append(
                GeneratedEvent(
                    event_id, "page", page, _at(at), _page_properties(extra, product, referred), {}, seen
                )
            )
        elif kind == VIEW:
            properties = _view_properties(product, drawn.currency)
            events.append(GeneratedEvent(event_id, "track", VIEW, _at(at), properties, {}, seen))
        else:
            properties = _order_properties(drawn, seed, event_id, extra)
            events.append(GeneratedEvent(event_id, "track", ORDER, _at(at), properties, {}, seen))
    return Person(
        index=index,
        profile_id=drawn.profile_id,
        user_id=drawn.user_id,
        anonymous_ids=drawn.anonymous_ids,
        email=drawn.email,
        traits=drawn.traits,
        events=tuple(events),
        aggregates=_aggregates(drawn, seed),
    )


def _seen(drawn: _Drawn) -> list[dict[str, str]]:
    """Return the identifiers the person's page and track events carry."""
    with_user = [{"type": "user_id", "value": drawn.user_id}] if drawn.user_id else []
    return [*with_user, {"type": "anonymous_id", "value": drawn.anonymous_ids[0]}]


def _at(epoch: int) -> datetime:
    return datetime.fromtimestamp(epoch, UTC)


# --- what profile makes of a person's events ------------------------------------------------------

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


# --- rendering people as COPY text ------------------------------------------------------------------


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
    known: list[str] = []
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
        written += len(drawn.events) + 1
    rows = {
        "profiles": "".join(profiles).encode(),
        "identifiers": "".join(identifiers).encode(),
        "events": "".join(events).encode(),
        "known_profiles": "".join(known).encode(),
    }
    return len(profiles), written, rows


# --- the load -------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class LoadProgress:
    """How far a load is: people done of the total (those already there count as done), rate, time left."""

    done: int
    total: int
    skipped: int
    rate_per_s: float
    eta_s: float | None
    elapsed_s: float


@dataclass(frozen=True)
class LoadResult:
    """What a load wrote and how long it took."""

    profiles: int
    events: int
    skipped: int
    seconds: float
    indexes_rebuilt: bool
    bytes_before: int
    bytes_after: int
    warnings: tuple[str, ...] = ()


class NotEnoughDisk(Exception):
    """The database's disk cannot take the load; the message says how much it needs and has."""


class LoadRefused(Exception):
    """The target cannot take a load (schemas missing, for instance); the message says why."""


def plain_url(database_url: str) -> str:
    """Return a database URL asyncpg understands (without SQLAlchemy's driver suffix)."""
    for prefix in ("postgresql+asyncpg://", "postgres+asyncpg://"):
        if database_url.startswith(prefix):
            return "postgresql://" + database_url[len(prefix) :]
    return database_url


def estimate_bytes(*, profiles: int, events_per_profile: int) -> int:
    """Return the bytes a base of this size takes in the database, tables and indexes."""
    return int(profiles * (BYTES_PER_PROFILE + events_per_profile * BYTES_PER_EVENT))


async def database_directory(connection: asyncpg.Connection) -> Path | None:
    """Return the database's data directory when it is on this machine and can be found."""
    try:
        found = await connection.fetchval("SHOW data_directory")
    except asyncpg.PostgresError:
        found = None
    return _first_existing([found, "/var/lib/postgresql", "/var/lib/pgsql"])


def _first_existing(candidates: Sequence[str | None]) -> Path | None:
    """Return the first of these paths that exists here."""
    for candidate in candidates:
        if candidate and Path(candidate).exists():
            return Path(candidate)
    return None


async def check_disk(
    *,
    connection: asyncpg.Connection,
    database_url: str,
    profiles: int,
    events_per_profile: int,
    data_dir: Path | None,
) -> str | None:
    """Refuse a load the database's disk cannot take; return a note when the disk could not be checked."""
    host = urlsplit(plain_url(database_url)).hostname or "localhost"
    directory = data_dir or (
        await database_directory(connection) if host in ("127.0.0.1", "localhost", "::1") else None
    )
    if directory is None:
        return "the database's disk is not on this machine (or not found): free space not checked"
    needed = int(estimate_bytes(profiles=profiles, events_per_profile=events_per_profile) * DISK_HEADROOM)
    free = shutil.disk_usage(directory).free
    if needed > free:
        most = int(free / DISK_HEADROOM / (BYTES_PER_PROFILE + events_per_profile * BYTES_PER_EVENT))
        raise NotEnoughDisk(
            f"{profiles:,} people with {events_per_profile} events each need about {_size(needed)} "
            f"(with {round((DISK_HEADROOM - 1) * 100)}% headroom) but {directory} has {_size(free)} free: "
            f"load at most {most:,} people, or free space first"
        )
    return None


def _size(count: float) -> str:
    for unit in ("B", "KB", "MB", "GB"):
        if count < 1024:
            return f"{count:.1f} {unit}"
        count /= 1024
    return f"{count:.1f} TB"


BASE_TABLES = (
    ("profile", "profiles"),
    ("profile", "identifiers"),
    ("profile", "events"),
    ("segment", "known_profiles"),
)


async def table_sizes(connection: asyncpg.Connection) -> dict[str, dict[str, int]]:
    """Return the bytes of each table of the base: the table, its indexes and all (TOAST included)."""
    rows = await connection.fetch(
        """
        SELECT n.nspname || '.' || c.relname AS name, pg_table_size(c.oid) AS heap,
               pg_indexes_size(c.oid) AS indexes, pg_total_relation_size(c.oid) AS total
          FROM pg_class c JOIN pg_namespace n ON n.oid = c.relnamespace
         WHERE c.relkind = 'r' AND (n.nspname, c.relname) IN (SELECT * FROM unnest($1::text[], $2::text[]))
         ORDER BY 1
        """,
        [s for s, _ in BASE_TABLES],
        [t for _, t in BASE_TABLES],
    )
    return {r["name"]: {"table": r["heap"], "indexes": r["indexes"], "total": r["total"]} for r in rows}


async def base_bytes(connection: asyncpg.Connection) -> int:
    """Return the bytes profile's and segment's tables of the base take, indexes and TOAST included."""
    return sum(size["total"] for size in (await table_sizes(connection)).values())


async def _require_schemas(connection: asyncpg.Connection) -> None:
    found = {
        (r["table_schema"], r["table_name"])
        for r in await connection.fetch(
            "SELECT table_schema, table_name FROM information_schema.tables"
            " WHERE table_schema IN ('profile', 'segment')"
        )
    }
    missing = sorted(f"{s}.{t}" for s, t in set(BASE_TABLES) - found)
    if missing:
        raise LoadRefused(
            f"the database has no {', '.join(missing)}: start the services once (they migrate their schemas)"
        )


async def _definitions(connection: asyncpg.Connection) -> list[str]:
    rows = await connection.fetch("SELECT key FROM profile.computed_definitions ORDER BY key")
    return [r["key"] for r in rows]


async def _held_indexes(connection: asyncpg.Connection) -> dict[str, str]:
    rows = await connection.fetch(
        "SELECT schemaname || '.' || indexname AS name, indexdef FROM pg_indexes"
        " WHERE (schemaname, tablename) IN (SELECT * FROM unnest($1::text[], $2::text[]))",
        [s for s, _ in BASE_TABLES],
        [t for _, t in BASE_TABLES],
    )
    return {r["name"]: r["indexdef"] for r in rows}


async def restore_indexes(database_url: str) -> list[str]:
    """Build the secondary indexes a load dropped and did not build again (it was cut off); return them."""
    connection = await asyncpg.connect(plain_url(database_url))
    try:
        held = await _held_indexes(connection)
    finally:
        await connection.close()
    missing = [name for name in SECONDARY_INDEXES if name not in held]
    await _build_indexes(database_url, missing)
    return missing


async def _build_indexes(database_url: str, names: Sequence[str]) -> None:
    """Build indexes, one table's at a time on each of two connections."""
    if not names:
        return
    by_table: dict[str, list[str]] = {}
    for name in names:
        by_table.setdefault(SECONDARY_INDEXES[name].split(" ON ", 1)[1].split(" ", 1)[0], []).append(name)

    async def build(tables: list[list[str]]) -> None:
        connection = await asyncpg.connect(plain_url(database_url))
        try:
            await connection.execute("SET maintenance_work_mem = '256MB'")
            for indexes in tables:
                for name in indexes:
                    definition = SECONDARY_INDEXES[name].replace(
                        "CREATE INDEX", "CREATE INDEX IF NOT EXISTS", 1
                    )
                    await connection.execute(definition)
        finally:
            await connection.close()

    # Two halves that take about as long (measured on 100,000 people): the event store's three
    # B-trees with the identifiers', and the profiles' GIN index with the rest.
    first = [by_table.pop(t) for t in ("profile.events", "profile.identifiers") if t in by_table]
    await asyncio.gather(build(first), build(list(by_table.values())))


async def _drop_indexes(connection: asyncpg.Connection) -> list[str]:
    """Drop the secondary indexes that read exactly as the loader builds them again; return their names."""
    held = await _held_indexes(connection)
    dropped = [name for name, definition in SECONDARY_INDEXES.items() if held.get(name) == definition]
    for name in dropped:
        await connection.execute(f"DROP INDEX IF EXISTS {name}")
    return dropped


async def _estimated_rows(connection: asyncpg.Connection, table: str) -> int:
    """Return the planner's row count of a table, or count up to REBUILD_EVENTS_FROM when it has none."""
    estimate: int = await connection.fetchval(
        "SELECT reltuples::bigint FROM pg_class WHERE oid = $1::regclass", table
    )
    if estimate >= 0:
        return estimate
    counted: int = await connection.fetchval(
        f"SELECT count(*) FROM (SELECT 1 FROM {table} LIMIT $1) s",  # noqa: S608 - one of BASE_TABLES
        REBUILD_EVENTS_FROM,
    )
    return counted


async def _existing(connection: asyncpg.Connection, ids: list[str]) -> set[str]:
    rows = await connection.fetch("SELECT id FROM profile.profiles WHERE id = ANY($1::text[])", ids)
    return {r["id"] for r in rows}


def _default_workers() -> int:
    return max(1, min(4, (os.cpu_count() or 2)))


@dataclass
class _Tally:
    """What the writers have done so far."""

    started: float
    total: int
    loaded: int = 0
    events: int = 0
    skipped: int = 0

    def report(self) -> LoadProgress:
        elapsed = time.perf_counter() - self.started
        rate = self.loaded / elapsed if elapsed > 0 else 0.0
        left = self.total - self.loaded - self.skipped
        return LoadProgress(
            done=self.loaded + self.skipped,
            total=self.total,
            skipped=self.skipped,
            rate_per_s=rate,
            eta_s=left / rate if rate > 0 else (0.0 if left == 0 else None),
            elapsed_s=elapsed,
        )


@dataclass(frozen=True)
class _Generation:
    """What every person of a load is drawn from."""

    seed: int
    events_per_profile: int
    years: float
    now: datetime
    hash_key: str


async def load_base(
    *,
    database_url: str,
    profiles: int,
    hash_key: str,
    events_per_profile: int = 10,
    years: float = 2.0,
    seed: int = 0,
    now: datetime | None = None,
    progress: Callable[[LoadProgress], None] | None = None,
    check_free_disk: bool = True,
    data_dir: Path | None = None,
    rebuild_indexes: bool | None = None,
    workers: int | None = None,
    writers: int = 2,
) -> LoadResult:
    """Load `profiles` generated people into profile's and segment's tables; those already there are kept.

    `hash_key` must be the services' `CDP_HASH_KEY` (identifiers are found by keyed hash on
    erasure). `now` anchors the generated times (default: this hour); a rerun with the same
    seed writes only the people missing, whatever `now` is. `rebuild_indexes` drops the
    tables' secondary indexes for the load and builds them again after (default: when the
    load adds at least REBUILD_INDEXES_FROM events and at least doubles the event store).
    """
    if profiles < 0 or events_per_profile < 1 or years <= 0 or writers < 1:
        raise LoadRefused("profiles must be >= 0, events per profile >= 1, years > 0 and writers >= 1")
    generation = _Generation(
        seed=seed,
        events_per_profile=events_per_profile,
        years=years,
        now=now or datetime.now(UTC).replace(minute=0, second=0, microsecond=0),
        hash_key=hash_key,
    )
    tally = _Tally(started=time.perf_counter(), total=profiles)
    warnings: list[str] = []
    restored = await restore_indexes(database_url)
    if restored:
        warnings.append(f"built again the indexes an interrupted load left out: {', '.join(restored)}")
    connection = await asyncpg.connect(plain_url(database_url))
    try:
        await _require_schemas(connection)
        defined = await _definitions(connection)
        if defined:
            warnings.append(
                "user-defined computed traits count none of the loaded events until defined again: "
                + ", ".join(defined)
            )
        bytes_before = await base_bytes(connection)
        if check_free_disk:
            note = await check_disk(
                connection=connection,
                database_url=database_url,
                profiles=profiles,
                events_per_profile=events_per_profile,
                data_dir=data_dir,
            )
            if note:
                warnings.append(note)
        people = await _estimated_rows(connection, "profile.profiles")
        stored = await _estimated_rows(connection, "profile.events")
        # Those already there are mostly the first ones asked for (one seed is the usual case).
        adding = max(profiles - people, 0) * events_per_profile
        rebuild = (
            rebuild_indexes if rebuild_indexes is not None else adding >= max(REBUILD_EVENTS_FROM, stored)
        )
        dropped: list[str] = []
        try:
            if rebuild:
                dropped = await _drop_indexes(connection)
            await _write_all(
                database_url, generation, tally, progress, workers or _default_workers(), writers
            )
        finally:
            if dropped:
                await _build_indexes(database_url, dropped)
        if tally.loaded:
            for schema, table in BASE_TABLES:
                await connection.execute(f"ANALYZE {schema}.{table}")
        bytes_after = await base_bytes(connection)
    finally:
        await connection.close()
    return LoadResult(
        profiles=tally.loaded,
        events=tally.events,
        skipped=tally.skipped,
        seconds=time.perf_counter() - tally.started,
        indexes_rebuilt=bool(dropped),
        bytes_before=bytes_before,
        bytes_after=bytes_after,
        warnings=tuple(warnings),
    )


async def _write_all(
    database_url: str,
    generation: _Generation,
    tally: _Tally,
    progress: Callable[[LoadProgress], None] | None,
    workers: int,
    writers: int,
) -> None:
    """Write every chunk: `writers` connections take the next chunk in turn, renderers in `workers` processes."""
    chunks = iter(range(0, tally.total, CHUNK_PROFILES))
    pool = ProcessPoolExecutor(max_workers=workers, mp_context=get_context("fork"))

    async def writer() -> None:
        connection = await asyncpg.connect(plain_url(database_url))
        try:
            await connection.execute("SET synchronous_commit = off")
            for start in chunks:
                chunk = range(start, min(start + CHUNK_PROFILES, tally.total))
                ids = {profile_id_of(seed=generation.seed, index=i): i for i in chunk}
                there = await _existing(connection, list(ids))
                missing = [i for pid, i in ids.items() if pid not in there]
                tally.skipped += len(chunk) - len(missing)
                if missing:
                    people, events = await _write_chunk(connection, pool, missing, generation)
                    tally.loaded += people
                    tally.events += events
                if progress is not None:
                    progress(tally.report())
        finally:
            await connection.close()

    try:
        await asyncio.gather(*(writer() for _ in range(writers)))
    finally:
        pool.shutdown(cancel_futures=True)


async def _write_chunk(
    connection: asyncpg.Connection, pool: ProcessPoolExecutor, indexes: list[int], generation: _Generation
) -> tuple[int, int]:
    """Render a chunk's people in the worker processes, a few pieces ahead, and copy them in one transaction."""
    loop = asyncio.get_running_loop()
    pieces = [indexes[s : s + PIECE_PROFILES] for s in range(0, len(indexes), PIECE_PROFILES)]
    pending = iter(pieces)
    rendering: list[asyncio.Future[tuple[int, int, dict[str, bytes]]]] = []

    def render_next() -> None:
        piece = next(pending, None)
        if piece is not None:
            rendering.append(loop.run_in_executor(pool, _render, generation, piece))

    for _ in range(PIECES_AHEAD):
        render_next()
    people = events = 0
    try:
        async with connection.transaction():
            while rendering:
                count, written, rows = await rendering.pop(0)
                render_next()
                for schema, table in BASE_TABLES:
                    await connection.copy_to_table(
                        table, schema_name=schema, columns=list(COLUMNS[table]), source=_slices(rows[table])
                    )
                people += count
                events += written
    finally:
        for future in rendering:
            future.cancel()
    return people, events


def _render(generation: _Generation, indexes: list[int]) -> tuple[int, int, dict[str, bytes]]:
    return render_piece(
        seed=generation.seed,
        indexes=indexes,
        events_per_profile=generation.events_per_profile,
        years=generation.years,
        now=generation.now,
        hash_key=generation.hash_key,
    )


async def _slices(data: bytes, size: int = 1 << 20) -> AsyncIterator[bytes]:
    """Yield rendered rows to COPY a megabyte at a time."""
    view = memoryview(data)
    for start in range(0, len(view), size):
        yield bytes(view[start : start + size])


def describe(progress: LoadProgress) -> str:
    """Return a progress report in one line: done of total, rate, time left."""
    eta = "?" if progress.eta_s is None else str(timedelta(seconds=int(progress.eta_s)))
    return (
        f"{progress.done:,}/{progress.total:,} people ({progress.skipped:,} already there), "
        f"{progress.rate_per_s:,.0f}/s, {timedelta(seconds=int(progress.elapsed_s))} elapsed, eta {eta}"
    )


# --- the command ----------------------------------------------------------------------------------------

console = Console()
errors = Console(stderr=True, soft_wrap=True)


def _stack_value(name: str, env_file: Path) -> str:
    """Return a CDP_* value from the environment, else from the stack's env files (.run/dev.env, .run/secrets.env)."""
    if os.environ.get(name):
        return os.environ[name]
    for path in (env_file, env_file.parent / "secrets.env"):
        if path.exists():
            value = read_env_file(path).get(name)
            if value:
                return value
    return ""


def load_command(
    profiles: Annotated[int, typer.Option("--profiles", min=0, help="How many people the base should hold.")],
    events_per_profile: Annotated[int, typer.Option(min=1, max=1000, help="Events per person.")] = 10,
    years: Annotated[float, typer.Option(min=0.01, max=20, help="How far back the events go.")] = 2.0,
    seed: Annotated[int, typer.Option(min=0, help="Another seed loads other people.")] = 0,
    database_url: Annotated[
        str | None,
        typer.Option(envvar="CDP_DATABASE_URL", help="The services' database (default: .run/dev.env)."),
    ] = None,
    hash_key: Annotated[
        str | None,
        typer.Option(
            envvar="CDP_HASH_KEY",
            show_default=False,
            help="The services' CDP_HASH_KEY (default: .run/secrets.env).",
        ),
    ] = None,
    plan: Annotated[
        bool, typer.Option("--plan", help="Only say what the load needs and whether it fits.")
    ] = False,
    rebuild_indexes: Annotated[
        bool | None,
        typer.Option(
            "--rebuild-indexes/--keep-indexes",
            show_default=False,
            help="Drop secondary indexes for the load and build them after (default: for loads of 1,000,000 "
            "events and more that at least double the event store).",
        ),
    ] = None,
    env_file: Annotated[Path, typer.Option(help="The stack's env file.")] = DEFAULT_ENV_FILE,
) -> None:
    """Fill the stack with generated people in bulk (profile's and segment's tables); a rerun adds only what is missing."""
    url = database_url or _stack_value("CDP_DATABASE_URL", env_file)
    key = hash_key or _stack_value("CDP_HASH_KEY", env_file)
    if not url:
        errors.print("[red]no database: set CDP_DATABASE_URL or run `make up` for .run/dev.env[/red]")
        raise typer.Exit(2)
    if not key:
        errors.print(
            "[red]no hash key: set CDP_HASH_KEY to the services' key (make up keeps it in .run/secrets.env)[/red]"
        )
        raise typer.Exit(2)
    if plan:
        asyncio.run(_print_plan(url, profiles, events_per_profile))
        return
    try:
        result = asyncio.run(
            load_base(
                database_url=url,
                profiles=profiles,
                hash_key=key,
                events_per_profile=events_per_profile,
                years=years,
                seed=seed,
                progress=lambda report: console.print(describe(report)),
                rebuild_indexes=rebuild_indexes,
            )
        )
    except NotEnoughDisk as exc:
        errors.print(f"[red]{exc}[/red]")
        raise typer.Exit(1) from exc
    except LoadRefused as exc:
        errors.print(f"[red]{exc}[/red]")
        raise typer.Exit(2) from exc
    for warning in result.warnings:
        errors.print(f"[yellow]{warning}[/yellow]")
    added = result.bytes_after - result.bytes_before
    console.print(
        f"loaded {result.profiles:,} people and {result.events:,} events in {result.seconds:.1f} s "
        f"({result.profiles / result.seconds if result.seconds else 0:,.0f} people/s); {result.skipped:,} were there "
        f"already; the base's tables grew by {_size(added)} to {_size(result.bytes_after)}"
        + ("; secondary indexes dropped and built again" if result.indexes_rebuilt else "")
    )


async def _print_plan(database_url: str, profiles: int, events_per_profile: int) -> None:
    needed = estimate_bytes(profiles=profiles, events_per_profile=events_per_profile)
    connection = await asyncpg.connect(plain_url(database_url))
    try:
        held = await base_bytes(connection)
        try:
            note = await check_disk(
                connection=connection,
                database_url=database_url,
                profiles=profiles,
                events_per_profile=events_per_profile,
                data_dir=None,
            )
            verdict = note or "fits on the database's disk"
        except NotEnoughDisk as exc:
            verdict = str(exc)
    finally:
        await connection.close()
    console.print(
        f"{profiles:,} people with {events_per_profile} events each take about {_size(needed)} "
        f"({BYTES_PER_PROFILE:,} bytes a person and {BYTES_PER_EVENT:,} an event, tables and indexes); "
        f"the base's tables hold {_size(held)} now; {verdict}"
    )
