"""The simulation: people, their devices and sessions, orders and refunds, e-mail engagement.

Pure and deterministic: `simulate(seed=, people=, end=)` returns the calls to send
(in time order) and the ground truth; it does no I/O.
"""

from __future__ import annotations

import random
import uuid
from collections import Counter, defaultdict
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from typing import Any, Literal

FORMAT = "cdp-shop-truth/1"
WINDOW = timedelta(days=90)
CURRENCIES = ("EUR", "GBP", "CHF")
CATALOGUE: tuple[tuple[str, str, str, float], ...] = (
    ("TEA-GREEN", "Green tea", "Tea", 4.5),
    ("TEA-BLACK", "Assam black tea", "Tea", 5.9),
    ("TEA-POT", "Cast-iron teapot", "Kitchen", 39.0),
    ("MUG-01", "Stoneware mug", "Kitchen", 12.5),
    ("BOOK-PY", "Python in practice", "Books", 34.95),
    ("BOOK-SQL", "SQL for analysts", "Books", 29.95),
    ("GAME-MONO", "Monopoly", "Games", 19.0),
    ("GAME-CHESS", "Chess set", "Games", 45.0),
    ("SOCK-WOOL", "Wool socks", "Clothing", 9.9),
    ("HAT-KNIT", "Knitted hat", "Clothing", 24.0),
)
STORES = ("berlin-1", "hamburg-2", "munich-3", "london-1", "zurich-1")
STORE_CURRENCY = {"london-1": "GBP", "zurich-1": "CHF"}
FIRST_NAMES = ("ada", "alan", "grace", "edsger", "barbara", "ken", "margaret", "linus", "frances", "john")
LAST_NAMES = (
    "lovelace",
    "turing",
    "hopper",
    "dijkstra",
    "liskov",
    "thompson",
    "hamilton",
    "torvalds",
    "allen",
)
JUNK_USER_IDS = ("undefined", "null", "0", "anonymous")
JUNK_CARD_IDS = ("0", "-1", "null")
PAGES = ("/", "/tea", "/books", "/games", "/kitchen", "/clothing", "/about")


@dataclass(frozen=True)
class Call:
    """One thing to send: a tracking call (batched) or a transaction (NDJSON), at its event time."""

    kind: Literal["tracking", "transaction"]
    time: datetime
    body: dict[str, Any]


@dataclass
class Person:
    """The truth about one simulated person, filled in as the simulation runs."""

    key: str
    user_id: str | None = None
    anonymous_ids: list[str] = field(default_factory=list)
    emails: list[str] = field(default_factory=list)
    phones: list[str] = field(default_factory=list)
    orders: list[dict[str, Any]] = field(default_factory=list)
    message_ids: list[str] = field(default_factory=list)
    times: list[datetime] = field(default_factory=list)
    emails_opened: int = 0
    emails_clicked: int = 0

    def truth(self) -> dict[str, Any]:
        """Return this person's entry of the ground-truth file."""
        revenue: dict[str, float] = defaultdict(float)
        bought: Counter[str] = Counter()
        for order in self.orders:
            if order["refunded"]:
                continue
            revenue[order["currency"]] += order["total"]
            for item in order["items"]:
                bought[item["category"]] += item["quantity"]
        favourite = min(bought, key=lambda c: (-bought[c], c)) if bought else None
        return {
            "key": self.key,
            "user_id": self.user_id,
            "anonymous_ids": self.anonymous_ids,
            "emails": self.emails,
            "phones": self.phones,
            "orders": self.orders,
            "order_count": sum(1 for o in self.orders if not o["refunded"]),
            "revenue": {currency: round(total, 2) for currency, total in sorted(revenue.items())},
            "first_seen": _iso(min(self.times)),
            "last_seen": _iso(max(self.times)),
            "favourite_category": favourite,
            "emails_opened": self.emails_opened,
            "emails_clicked": self.emails_clicked,
            "message_ids": self.message_ids,
            "event_count": len(self.message_ids),
        }


def _iso(value: datetime) -> str:
    return value.astimezone(UTC).isoformat().replace("+00:00", "Z")


class _Simulation:
    def __init__(self, *, seed: int, end: datetime) -> None:
        self.rng = random.Random(seed)
        self.seed = seed
        self.end = end
        self.start = end - WINDOW
        self.calls: list[Call] = []
        self.blocked: set[tuple[str, str]] = set()
        self.order_seq = 0

    def uuid(self) -> str:
        return str(uuid.UUID(int=self.rng.getrandbits(128), version=4))

    def track(self, person: Person, when: datetime, call: dict[str, Any]) -> None:
        message_id = f"shop{self.seed}-{self.uuid()}"
        body = {**call, "messageId": message_id, "timestamp": _iso(when)}
        body.setdefault("context", {})["library"] = {"name": "cdp-shop", "version": "1"}
        person.message_ids.append(message_id)
        person.times.append(when)
        self.calls.append(Call("tracking", when, body))

    def transaction(self, person: Person, when: datetime, document: dict[str, Any], kind: str) -> None:
        person.message_ids.append(f"txn:{kind}:{document['order_id']}")
        person.times.append(when)
        self.calls.append(Call("transaction", when, document))

    def basket(self) -> list[dict[str, Any]]:
        lines = self.rng.sample(CATALOGUE, self.rng.randint(1, 3))
        return [
            {
                "sku": sku,
                "name": name,
                "category": category,
                "price": price,
                "quantity": self.rng.randint(1, 3),
            }
            for sku, name, category, price in lines
        ]

    def next_order_id(self, prefix: str) -> str:
        self.order_seq += 1
        return f"{prefix}{self.seed}-{self.order_seq:06d}"

    def person(self, index: int) -> Person:
        rng = self.rng
        person = Person(key=f"p{index:04d}")
        first, last = rng.choice(FIRST_NAMES), rng.choice(LAST_NAMES)
        email = f"{first}.{last}{index}@example.com"
        phone = f"+4930{rng.randint(1000000, 9999999)}"
        shop_only = rng.random() < 0.12
        signs_up = not shop_only and rng.random() < 0.7
        when = self.start + timedelta(seconds=rng.uniform(0, WINDOW.total_seconds() * 0.6))
        if shop_only:
            person.emails.append(email)
            if rng.random() < 0.5:
                person.phones.append(phone)
            for _ in range(rng.randint(1, 3)):
                when = min(when + timedelta(days=rng.uniform(1, 20)), self.end - timedelta(minutes=5))
                self.store_purchase(person, when, email, person.phones[0] if person.phones else None)
            return person
        devices = 1 + (rng.random() < 0.4) + (rng.random() < 0.15)
        # A few people (always the first ones, so even a small world has some) send junk user ids.
        junk = index <= 3 or rng.random() < 0.05
        for device in range(devices):
            anonymous_id = self.uuid()
            person.anonymous_ids.append(anonymous_id)
            sessions = rng.randint(1, 4)
            for session in range(sessions):
                when = min(when + timedelta(hours=rng.uniform(2, 24 * 9)), self.end - timedelta(hours=2))
                identity: dict[str, Any] = {"anonymousId": anonymous_id}
                if person.user_id is not None:
                    identity["userId"] = person.user_id
                elif junk:
                    # A broken snippet that sends a junk userId next to the real anonymousId.
                    junk_id = rng.choice(JUNK_USER_IDS)
                    identity["userId"] = junk_id
                    self.blocked.add(("user_id", junk_id))
                self.browse(person, when, identity)
                when += timedelta(minutes=rng.uniform(3, 20))
                first_session_of_device = session == 0
                if signs_up and person.user_id is None and (device > 0 or session == sessions - 1):
                    person.user_id = f"shop{self.seed}-u{index:04d}"
                    person.emails.append(email)
                    traits: dict[str, Any] = {
                        "email": email.upper() if rng.random() < 0.2 else email,
                        "first_name": first.title(),
                        "last_name": last.title(),
                    }
                    if rng.random() < 0.4:
                        person.phones.append(phone)
                        traits["phone"] = phone[:5] + " " + phone[5:]
                    self.track(
                        person,
                        when,
                        {
                            "type": "identify",
                            "userId": person.user_id,
                            "anonymousId": anonymous_id,
                            "traits": traits,
                        },
                    )
                    when += timedelta(minutes=1)
                    self.track(
                        person,
                        when,
                        {
                            "type": "track",
                            "event": "Signed Up",
                            "userId": person.user_id,
                            "anonymousId": anonymous_id,
                            "properties": {"method": "email"},
                        },
                    )
                elif person.user_id is not None and first_session_of_device and device > 0:
                    self.track(
                        person,
                        when,
                        {
                            "type": "identify",
                            "userId": person.user_id,
                            "anonymousId": anonymous_id,
                            "traits": {},
                        },
                    )
                if person.user_id is not None and rng.random() < 0.45:
                    when += timedelta(minutes=rng.uniform(1, 10))
                    self.online_purchase(person, when, anonymous_id)
        if person.user_id is not None:
            if rng.random() < 0.3:
                when = min(when + timedelta(days=rng.uniform(1, 10)), self.end - timedelta(minutes=5))
                self.store_purchase(person, when, email.title() if rng.random() < 0.3 else email, None)
            for _ in range(rng.randint(0, 3)):
                when = min(when + timedelta(hours=rng.uniform(1, 72)), self.end - timedelta(hours=1))
                self.email_engagement(person, when, email)
        return person

    def browse(self, person: Person, when: datetime, identity: dict[str, Any]) -> None:
        rng = self.rng
        for _ in range(rng.randint(1, 4)):
            path = rng.choice(PAGES)
            self.track(
                person,
                when,
                {
                    "type": "page",
                    **identity,
                    "name": path.strip("/") or "home",
                    "properties": {"path": path, "url": f"https://shop.example.com{path}"},
                    "context": {"page": {"path": path}, "userAgent": "Mozilla/5.0 (cdp-shop)"},
                },
            )
            when += timedelta(seconds=rng.uniform(5, 90))
            if rng.random() < 0.6:
                sku, name, category, price = rng.choice(CATALOGUE)
                self.track(
                    person,
                    when,
                    {
                        "type": "track",
                        "event": "Product Viewed",
                        **identity,
                        "properties": {
                            "product_id": sku,
                            "sku": sku,
                            "name": name,
                            "category": category,
                            "price": price,
                            "currency": "EUR",
                        },
                    },
                )
                when += timedelta(seconds=rng.uniform(5, 60))

    def online_purchase(self, person: Person, when: datetime, anonymous_id: str) -> None:
        rng = self.rng
        items = self.basket()
        currency = "EUR" if rng.random() < 0.85 else rng.choice(CURRENCIES[1:])
        total = round(sum(i["price"] * i["quantity"] for i in items), 2)
        order_id = self.next_order_id("web")
        identity = {"userId": person.user_id, "anonymousId": anonymous_id}
        self.track(
            person,
            when,
            {
                "type": "track",
                "event": "Checkout Started",
                **identity,
                "properties": {"order_id": order_id, "value": total, "currency": currency},
            },
        )
        when += timedelta(minutes=rng.uniform(1, 5))
        self.track(
            person,
            when,
            {
                "type": "track",
                "event": "Order Completed",
                **identity,
                "properties": {
                    "order_id": order_id,
                    "total": total,
                    "revenue": total,
                    "currency": currency,
                    "products": [{**i, "product_id": i["sku"]} for i in items],
                },
            },
        )
        order = {
            "order_id": order_id,
            "channel": "online",
            "store_id": None,
            "currency": currency,
            "total": total,
            "time": _iso(when),
            "refunded": False,
            "refund_time": None,
            "items": items,
        }
        person.orders.append(order)
        if rng.random() < 0.12:
            refund_at = min(when + timedelta(days=rng.uniform(1, 14)), self.end - timedelta(minutes=1))
            order.update(refunded=True, refund_time=_iso(refund_at))
            self.track(
                person,
                refund_at,
                {
                    "type": "track",
                    "event": "Order Refunded",
                    **identity,
                    "properties": {"order_id": order_id, "total": total, "currency": currency},
                },
            )

    def store_purchase(self, person: Person, when: datetime, email: str, phone: str | None) -> None:
        rng = self.rng
        store = rng.choice(STORES)
        currency = STORE_CURRENCY.get(store, "EUR")
        items = self.basket()
        total = round(sum(i["price"] * i["quantity"] for i in items), 2)
        order_id = self.next_order_id("pos")
        customer: dict[str, Any] = {"email": email}
        if phone:
            customer["phone"] = phone
        if rng.random() < 0.05:
            junk = rng.choice(JUNK_CARD_IDS)
            customer["external_ids"] = {"loyalty_card": junk}
            self.blocked.add(("loyalty_card", junk))
        document = {
            "order_id": order_id,
            "kind": "purchase",
            "customer": customer,
            "items": items,
            "total": total,
            "currency": currency,
            "channel": "store",
            "store_id": store,
            "payment_method": rng.choice(("card", "cash", "mobile")),
            "time": _iso(when),
        }
        self.transaction(person, when, document, "purchase")
        order = {
            "order_id": order_id,
            "channel": "store",
            "store_id": store,
            "currency": currency,
            "total": total,
            "time": _iso(when),
            "refunded": False,
            "refund_time": None,
            "items": items,
        }
        person.orders.append(order)
        if rng.random() < 0.1:
            refund_at = min(when + timedelta(days=rng.uniform(1, 10)), self.end - timedelta(minutes=1))
            order.update(refunded=True, refund_time=_iso(refund_at))
            self.transaction(
                person, refund_at, {**document, "kind": "refund", "time": _iso(refund_at)}, "refund"
            )

    def email_engagement(self, person: Person, when: datetime, email: str) -> None:
        rng = self.rng
        campaign = f"cmp-{rng.randint(1, 6)}"
        external = {
            "context": {
                "externalIds": [{"id": email, "type": "email", "collection": "users", "encoding": "none"}]
            }
        }
        properties = {"campaign_id": campaign, "email_id": self.uuid(), "email_subject": "News from the shop"}
        self.track(
            person, when, {"type": "track", "event": "Email Opened", **external, "properties": properties}
        )
        person.emails_opened += 1
        if rng.random() < 0.4:
            self.track(
                person,
                when + timedelta(minutes=rng.uniform(1, 30)),
                {
                    "type": "track",
                    "event": "Email Link Clicked",
                    **external,
                    "properties": {**properties, "link_url": "https://shop.example.com/tea"},
                },
            )
            person.emails_clicked += 1


@dataclass(frozen=True)
class World:
    """What to send, in time order, and the truth about it."""

    calls: list[Call]
    truth: dict[str, Any]


def simulate(*, seed: int, people: int, end: datetime) -> World:
    """Simulate `people` people over the 90 days before `end`."""
    simulation = _Simulation(seed=seed, end=end)
    persons = [simulation.person(index) for index in range(1, people + 1)]
    calls = sorted(simulation.calls, key=lambda call: call.time)
    tracking = sum(1 for call in calls if call.kind == "tracking")
    truth = {
        "format": FORMAT,
        "seed": seed,
        "people_count": people,
        "start": _iso(simulation.start),
        "end": _iso(end),
        "currencies": list(CURRENCIES),
        "people": [person.truth() for person in persons],
        "blocked_identifiers": [{"type": kind, "value": value} for kind, value in sorted(simulation.blocked)],
        "totals": {"events": len(calls), "tracking_calls": tracking, "transactions": len(calls) - tracking},
    }
    return World(calls=calls, truth=truth)
