"""What a generated person looks like: identifiers, traits and events, drawn from the seed and
their index alone."""

from __future__ import annotations

import hashlib
from dataclasses import dataclass
from datetime import UTC, datetime
from decimal import Decimal
from typing import Any

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


def _seen(drawn: _Drawn) -> list[dict[str, str]]:
    """Return the identifiers the person's page and track events carry."""
    with_user = [{"type": "user_id", "value": drawn.user_id}] if drawn.user_id else []
    return [*with_user, {"type": "anonymous_id", "value": drawn.anonymous_ids[0]}]


def _at(epoch: int) -> datetime:
    return datetime.fromtimestamp(epoch, UTC)
