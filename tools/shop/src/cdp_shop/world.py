"""The simulation: people, their devices and sessions, orders and refunds, e-mail engagement,
and the ground truth of what a correct platform makes of them.

Pure and deterministic: `simulate(seed=, people=, end=)` returns the calls to send (in time
order) and the ground truth; it does no I/O. `Shop` is the set of behaviours the simulation
draws from; tests build small worlds by hand with it (`Shop.world()`).
"""

from __future__ import annotations

import random
import uuid
from collections import Counter, defaultdict
from collections.abc import Iterable
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from decimal import Decimal
from typing import Any, Literal

from cdp_shop.identity import IdentityGraph, Key, Rules

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
KIOSK_STORE = "berlin-1"
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
ORDER_COMPLETED = "Order Completed"
ORDER_REFUNDED = "Order Refunded"


@dataclass(frozen=True)
class Call:
    """One thing to send: a tracking call (batched) or a transaction (NDJSON), at its event time."""

    kind: Literal["tracking", "transaction"]
    time: datetime
    body: dict[str, Any]
    person: str = ""

    @property
    def message_id(self) -> str:
        """Return the messageId the platform stores the call under."""
        if self.kind == "transaction":
            return f"txn:{self.body['kind']}:{self.body['order_id']}"
        return str(self.body["messageId"])

    def identifiers(self) -> list[Key]:
        """Return every identifier the call names, normalised as the platform matches them."""
        raw: list[tuple[str, Any]] = []
        if self.kind == "transaction":
            customer = self.body["customer"]
            raw += [(kind, customer.get(kind)) for kind in ("user_id", "anonymous_id", "email", "phone")]
            raw += list(customer.get("external_ids", {}).items())
        else:
            raw += [("user_id", self.body.get("userId")), ("anonymous_id", self.body.get("anonymousId"))]
            context = self.body.get("context", {})
            asserted = dict(context.get("traits", {}))
            if self.body["type"] == "identify":
                asserted.update(self.body.get("traits", {}))
            raw += [(kind, asserted.get(kind)) for kind in ("email", "phone")]
            raw += [(str(item["type"]).lower(), item["id"]) for item in context.get("externalIds", [])]
        keys = [
            Key(kind, _normalised(kind, value)) for kind, value in raw if isinstance(value, str) and value
        ]
        return list(dict.fromkeys(keys))


def _normalised(kind: str, value: str) -> str:
    if kind == "email":
        return value.strip().lower()
    if kind == "phone":
        return "+" + "".join(ch for ch in value if ch.isdigit())
    return value


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
        revenue: dict[str, Decimal] = defaultdict(Decimal)
        bought: Counter[str] = Counter()
        for order in self.orders:
            if order["refunded"]:
                continue
            revenue[order["currency"]] += Decimal(str(order["total"]))
            for item in order["items"]:
                bought[item["category"]] += item["quantity"]
        return {
            "key": self.key,
            "user_id": self.user_id,
            "anonymous_ids": self.anonymous_ids,
            "emails": self.emails,
            "phones": self.phones,
            "orders": self.orders,
            "order_count": sum(1 for o in self.orders if not o["refunded"]),
            "revenue": {currency: _money(total) for currency, total in sorted(revenue.items())},
            "first_seen": _iso(min(self.times)),
            "last_seen": _iso(max(self.times)),
            "favourite_category": _most_frequent(bought),
            "emails_opened": self.emails_opened,
            "emails_clicked": self.emails_clicked,
            "message_ids": self.message_ids,
            "event_count": len(self.message_ids),
        }


def _iso(value: datetime) -> str:
    return value.astimezone(UTC).isoformat().replace("+00:00", "Z")


def _money(value: Decimal) -> float:
    return float(value.quantize(Decimal("0.01")))


def _most_frequent(counter: Counter[str]) -> str | None:
    """Return the name counted most; ties go to the first name in alphabetical order."""
    return min(counter, key=lambda name: (-counter[name], name)) if counter else None


@dataclass(frozen=True)
class World:
    """What to send, in time order, and the truth about it."""

    calls: list[Call]
    truth: dict[str, Any]


class Shop:
    """The behaviours of the shop's customers; each records its calls and its person's truth."""

    def __init__(self, *, seed: int, end: datetime, rules: Rules | None = None) -> None:
        self.rng = random.Random(seed)
        self.seed = seed
        self.end = end
        self.start = end - WINDOW
        self.rules = rules or Rules()
        self.people: list[Person] = []
        self.calls: list[Call] = []
        self.order_seq = 0

    def uuid(self) -> str:
        """Return a random (seeded) UUID."""
        return str(uuid.UUID(int=self.rng.getrandbits(128), version=4))

    def new_person(self) -> Person:
        """Return a new person with the next key."""
        person = Person(key=f"p{len(self.people) + 1:04d}")
        self.people.append(person)
        return person

    def new_device(self, person: Person) -> str:
        """Give a person a device of their own; return its anonymous id."""
        anonymous_id = self.uuid()
        person.anonymous_ids.append(anonymous_id)
        return anonymous_id

    def kiosk(self, store: str = KIOSK_STORE) -> str:
        """Return the anonymous id of a store's sign-in kiosk, which every customer there uses."""
        return f"shop{self.seed}-kiosk-{store}"

    def track(self, person: Person, when: datetime, call: dict[str, Any]) -> None:
        """Record one tracking call of a person."""
        message_id = f"shop{self.seed}-{self.uuid()}"
        body = {**call, "messageId": message_id, "timestamp": _iso(when)}
        body.setdefault("context", {})["library"] = {"name": "cdp-shop", "version": "1"}
        person.message_ids.append(message_id)
        person.times.append(when)
        self.calls.append(Call("tracking", when, body, person.key))

    def transaction(self, person: Person, when: datetime, document: dict[str, Any]) -> None:
        """Record one transaction document of a person."""
        call = Call("transaction", when, document, person.key)
        person.message_ids.append(call.message_id)
        person.times.append(when)
        self.calls.append(call)

    def basket(self) -> list[dict[str, Any]]:
        """Return one to three random order lines."""
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
        """Return the next order id."""
        self.order_seq += 1
        return f"{prefix}{self.seed}-{self.order_seq:06d}"

    def browse(self, person: Person, when: datetime, identity: dict[str, Any]) -> datetime:
        """Record a browsing session under `identity` (userId/anonymousId); return when it ended."""
        rng = self.rng
        for _ in range(rng.randint(1, 3)):
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
            if rng.random() < 0.4:
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
        return when

    def sign_up(
        self,
        person: Person,
        when: datetime,
        *,
        anonymous_id: str,
        user_id: str,
        email: str,
        phone: str | None = None,
        first_name: str = "Ada",
        last_name: str = "Lovelace",
    ) -> datetime:
        """Record a sign-up on a device (identify, then `Signed Up`); return when it ended."""
        person.user_id = user_id
        person.emails.append(email.strip().lower())
        traits: dict[str, Any] = {"email": email, "first_name": first_name, "last_name": last_name}
        if phone:
            person.phones.append(_normalised("phone", phone))
            traits["phone"] = phone
        identity = {"userId": user_id, "anonymousId": anonymous_id}
        self.track(person, when, {"type": "identify", **identity, "traits": traits})
        when += timedelta(minutes=1)
        self.track(
            person,
            when,
            {"type": "track", "event": "Signed Up", **identity, "properties": {"method": "email"}},
        )
        return when

    def log_in(self, person: Person, when: datetime, *, anonymous_id: str) -> None:
        """Record a signed-up person logging in on a device (identify without traits)."""
        self.track(
            person,
            when,
            {"type": "identify", "userId": person.user_id, "anonymousId": anonymous_id, "traits": {}},
        )

    def change_email(self, person: Person, when: datetime, *, anonymous_id: str, email: str) -> None:
        """Record a signed-up person changing their e-mail address (identify with the new one)."""
        person.emails.append(email.strip().lower())
        self.track(
            person,
            when,
            {
                "type": "identify",
                "userId": person.user_id,
                "anonymousId": anonymous_id,
                "traits": {"email": email},
            },
        )

    def kiosk_sign_in(self, person: Person, when: datetime, *, store: str = KIOSK_STORE) -> None:
        """Record a signed-up person signing in at a store's shared kiosk."""
        self.track(
            person,
            when,
            {
                "type": "track",
                "event": "Kiosk Signed In",
                "userId": person.user_id,
                "anonymousId": self.kiosk(store),
                "properties": {"store_id": store},
            },
        )

    def online_purchase(
        self, person: Person, when: datetime, *, anonymous_id: str, refund_after: timedelta | None = None
    ) -> datetime:
        """Record checkout and order of a signed-up person, and its refund when given; return when ordered."""
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
                "event": ORDER_COMPLETED,
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
        order = _order(order_id, "online", None, currency, total, when, items)
        person.orders.append(order)
        if refund_after is not None:
            refund_at = min(when + refund_after, self.end - timedelta(minutes=1))
            order.update(refunded=True, refund_time=_iso(refund_at))
            self.track(
                person,
                refund_at,
                {
                    "type": "track",
                    "event": ORDER_REFUNDED,
                    **identity,
                    "properties": {"order_id": order_id, "total": total, "currency": currency},
                },
            )
        return when

    def store_purchase(
        self,
        person: Person,
        when: datetime,
        *,
        email: str,
        phone: str | None = None,
        loyalty_card: str | None = None,
        refund_after: timedelta | None = None,
    ) -> None:
        """Record a purchase in a store (a transaction by e-mail), and its refund when given."""
        rng = self.rng
        store = rng.choice(STORES)
        currency = STORE_CURRENCY.get(store, "EUR")
        items = self.basket()
        total = round(sum(i["price"] * i["quantity"] for i in items), 2)
        order_id = self.next_order_id("pos")
        customer: dict[str, Any] = {"email": email}
        if phone:
            customer["phone"] = phone
        if loyalty_card is not None:
            customer["external_ids"] = {"loyalty_card": loyalty_card}
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
        self.transaction(person, when, document)
        order = _order(order_id, "store", store, currency, total, when, items)
        person.orders.append(order)
        if refund_after is not None:
            refund_at = min(when + refund_after, self.end - timedelta(minutes=1))
            order.update(refunded=True, refund_time=_iso(refund_at))
            self.transaction(person, refund_at, {**document, "kind": "refund", "time": _iso(refund_at)})

    def email_engagement(self, person: Person, when: datetime, *, email: str, click: bool) -> None:
        """Record an opened campaign e-mail (identified by e-mail only), and a click when given."""
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
        if click:
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

    def world(self) -> World:
        """Return the calls in time order and the ground truth of everything recorded so far."""
        calls = sorted(self.calls, key=lambda call: call.time)
        graph = IdentityGraph(self.rules)
        for index, call in enumerate(calls):
            graph.resolve(event=index, keys=call.identifiers())
        resolution = graph.result()
        profiles = [
            _expected_profile(resolution.groups[group], [calls[i] for i in resolution.events[group]])
            for group in resolution.groups
        ]
        tracking = sum(1 for call in calls if call.kind == "tracking")
        truth = {
            "format": FORMAT,
            "seed": self.seed,
            "people_count": len(self.people),
            "start": _iso(self.start),
            "end": _iso(self.end),
            "currencies": list(CURRENCIES),
            "people": [person.truth() for person in self.people],
            "profiles": sorted(profiles, key=lambda p: (p["people"], p["message_ids"])),
            "blocked_identifiers": _listed(resolution.blocked),
            "quarantined_identifiers": _listed(resolution.quarantined),
            "unresolved_message_ids": sorted(calls[i].message_id for i in resolution.dropped_events),
            "totals": {
                "events": len(calls),
                "tracking_calls": tracking,
                "transactions": len(calls) - tracking,
                "profiles": len(profiles),
            },
        }
        return World(calls=calls, truth=truth)


def _order(
    order_id: str,
    channel: str,
    store: str | None,
    currency: str,
    total: float,
    when: datetime,
    items: list[dict[str, Any]],
) -> dict[str, Any]:
    return {
        "order_id": order_id,
        "channel": channel,
        "store_id": store,
        "currency": currency,
        "total": total,
        "time": _iso(when),
        "refunded": False,
        "refund_time": None,
        "items": items,
    }


def _listed(keys: Iterable[Key]) -> list[dict[str, str]]:
    return [{"type": key.type, "value": key.value} for key in sorted(keys)]


def _order_facts(call: Call) -> tuple[str | None, dict[str, Any]]:
    """Return the event name a call is counted under and its order properties."""
    if call.kind == "transaction":
        document = call.body
        name = ORDER_COMPLETED if document["kind"] == "purchase" else ORDER_REFUNDED
        return name, {
            "order_id": document["order_id"],
            "total": document["total"],
            "currency": document["currency"],
            "products": document["items"],
            "payment_method": document.get("payment_method"),
        }
    return call.body.get("event"), call.body.get("properties", {})


def _expected_profile(keys: set[Key], calls: list[Call]) -> dict[str, Any]:
    """Return the profile a correct platform holds for one group: identifiers, events, computed traits."""
    event_counts: Counter[str] = Counter()
    page_views = 0
    orders: dict[str, dict[str, Any]] = {}
    refunded: set[str] = set()
    net: dict[str, Decimal] = defaultdict(Decimal)
    for call in calls:
        if call.kind == "tracking" and call.body["type"] == "page":
            page_views += 1
            continue
        name, properties = _order_facts(call)
        if name is None:
            continue
        event_counts[name] += 1
        if name == ORDER_COMPLETED:
            orders[properties["order_id"]] = {**properties, "time": call.time}
            net[properties["currency"]] += Decimal(str(properties["total"]))
        elif name == ORDER_REFUNDED:
            refunded.add(properties["order_id"])
            net[properties["currency"]] -= Decimal(str(properties["total"]))
    bought: Counter[str] = Counter()
    payments: Counter[str] = Counter()
    for order_id, order in orders.items():
        if order.get("payment_method"):
            payments[order["payment_method"]] += 1
        if order_id not in refunded:
            for item in order["products"]:
                bought[item["category"]] += item["quantity"]
    times = [call.time for call in calls]
    last_order = max((order["time"] for order in orders.values()), default=None)
    return {
        "people": sorted({call.person for call in calls}),
        "identifiers": _listed(keys),
        "message_ids": sorted(call.message_id for call in calls),
        "event_count": len(calls),
        "first_seen": _iso(min(times)),
        "last_seen": _iso(max(times)),
        "page_views": page_views,
        "event_counts": dict(sorted(event_counts.items())),
        "orders": len(orders),
        "refunded_orders": len(refunded),
        "revenue": {currency: _money(amount) for currency, amount in sorted(net.items())},
        "last_order_date": last_order.astimezone(UTC).date().isoformat() if last_order else None,
        "favourite_category": _most_frequent(bought),
        "preferred_payment_method": _most_frequent(payments),
    }


def _simulate_person(shop: Shop, index: int) -> None:
    """Draw one person's whole history from the shop's random generator."""
    rng = shop.rng
    person = shop.new_person()
    first, last = rng.choice(FIRST_NAMES), rng.choice(LAST_NAMES)
    email = f"{first}.{last}{index}@example.com"
    phone = f"+4930{rng.randint(1000000, 9999999)}"
    shop_only = rng.random() < 0.12
    signs_up = not shop_only and rng.random() < 0.7
    when = shop.start + timedelta(seconds=rng.uniform(0, WINDOW.total_seconds() * 0.6))
    if shop_only:
        person.emails.append(email)
        if rng.random() < 0.5:
            person.phones.append(phone)
        for _ in range(rng.randint(1, 3)):
            when = min(when + timedelta(days=rng.uniform(1, 20)), shop.end - timedelta(minutes=5))
            card = rng.choice(JUNK_CARD_IDS) if rng.random() < 0.08 else None
            refund = timedelta(days=rng.uniform(1, 10)) if rng.random() < 0.1 else None
            shop.store_purchase(
                person,
                when,
                email=email,
                phone=person.phones[0] if person.phones else None,
                loyalty_card=card,
                refund_after=refund,
            )
        return
    devices = 1 + (rng.random() < 0.35) + (rng.random() < 0.1)
    # A few people (always the first ones, so even a small world has some) send junk user ids.
    junk = index <= 3 or rng.random() < 0.05
    # Some use a device someone else used before them (a household's laptop): the device
    # stays with whoever the platform saw first, and their own user id never joins it.
    borrows = index == 5 or rng.random() < 0.03
    borrowed = (
        [p.anonymous_ids[0] for p in reversed(shop.people[:-1]) if p.anonymous_ids][:1] if borrows else []
    )
    current_email = email
    for device in range(devices):
        if device == 0 and borrowed:
            anonymous_id = borrowed[0]
            person.anonymous_ids.append(anonymous_id)
        else:
            anonymous_id = shop.new_device(person)
        sessions = rng.randint(1, 3)
        for session in range(sessions):
            when = min(when + timedelta(hours=rng.uniform(2, 24 * 9)), shop.end - timedelta(hours=2))
            identity: dict[str, Any] = {"anonymousId": anonymous_id}
            if person.user_id is not None:
                identity["userId"] = person.user_id
            elif junk:
                # A broken snippet that sends a junk userId next to the real anonymousId.
                identity["userId"] = rng.choice(JUNK_USER_IDS)
            when = shop.browse(person, when, identity)
            when += timedelta(minutes=rng.uniform(3, 20))
            if signs_up and person.user_id is None and (device > 0 or session == sessions - 1):
                when = shop.sign_up(
                    person,
                    when,
                    anonymous_id=anonymous_id,
                    user_id=f"shop{shop.seed}-u{index:04d}",
                    email=email.upper() if rng.random() < 0.2 else email,
                    phone=phone[:5] + " " + phone[5:] if rng.random() < 0.4 else None,
                    first_name=first.title(),
                    last_name=last.title(),
                )
            elif person.user_id is not None and session == 0 and device > 0:
                shop.log_in(person, when, anonymous_id=anonymous_id)
            if person.user_id is not None and rng.random() < 0.35:
                when += timedelta(minutes=rng.uniform(1, 10))
                refund = timedelta(days=rng.uniform(1, 14)) if rng.random() < 0.12 else None
                when = shop.online_purchase(person, when, anonymous_id=anonymous_id, refund_after=refund)
            if person.user_id is not None and current_email == email and rng.random() < 0.06:
                when += timedelta(minutes=rng.uniform(1, 30))
                current_email = f"{first}.{last}.{index}@mail.example.org"
                shop.change_email(person, when, anonymous_id=anonymous_id, email=current_email)
    if person.user_id is None:
        return
    if rng.random() < 0.03:
        when = min(when + timedelta(days=rng.uniform(1, 5)), shop.end - timedelta(minutes=30))
        shop.kiosk_sign_in(person, when)
    if rng.random() < 0.3:
        when = min(when + timedelta(days=rng.uniform(1, 10)), shop.end - timedelta(minutes=5))
        refund = timedelta(days=rng.uniform(1, 10)) if rng.random() < 0.1 else None
        shown = current_email.title() if rng.random() < 0.3 else current_email
        shop.store_purchase(person, when, email=shown, refund_after=refund)
    for _ in range(rng.randint(0, 2)):
        when = min(when + timedelta(hours=rng.uniform(1, 72)), shop.end - timedelta(hours=1))
        shop.email_engagement(person, when, email=current_email, click=rng.random() < 0.4)


def simulate(*, seed: int, people: int, end: datetime) -> World:
    """Simulate `people` people over the 90 days before `end`."""
    shop = Shop(seed=seed, end=end)
    for index in range(1, people + 1):
        _simulate_person(shop, index)
    return shop.world()
