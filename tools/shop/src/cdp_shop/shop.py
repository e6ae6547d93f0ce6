"""The behaviours of the shop's customers, each recording its calls and its person's facts: browsing,
signing up and in, e-mail changes, the store kiosk, orders online and in stores with what the ERP
and the POS send of them, cancellations, refunds and returns, e-mail engagement, aliases, company
accounts, quote requests, and consent choices.

Tests build small worlds by hand with it (`Shop.world()`); `cdp_shop.world` draws whole histories.
"""

from __future__ import annotations

import random
import uuid
from dataclasses import dataclass
from datetime import datetime, timedelta
from typing import Any

from cdp_shop.calls import ORDER_CANCELLED, ORDER_COMPLETED, ORDER_REFUNDED, Call, Person, iso, normalised
from cdp_shop.catalogue import (
    CATALOGUE,
    CURRENCIES,
    ERP_PAYMENTS,
    KIOSK_STORE,
    PAGES,
    STORE_CURRENCY,
    STORE_PAYMENTS,
    STORES,
    Company,
)
from cdp_shop.identity import Rules
from cdp_shop.truth import Window, build_truth

WINDOW = timedelta(days=90)
# A cookie-banner choice that leaves out profiling (`Advertising`) and keeps the rest but marketing.
REFUSES_PROFILING = {
    "categoryPreferences": {
        "Advertising": False,
        "Analytics": True,
        "Personalization": True,
        "Marketing": False,
        "DataSharing": False,
    }
}


@dataclass(frozen=True)
class World:
    """What to send, in time order, and the truth about it."""

    calls: list[Call]
    truth: dict[str, Any]


class Shop:
    """The behaviours of the shop's customers; each records its calls and its person's facts."""

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

    def group_id(self, company: Company) -> str:
        """Return the groupId the shop's B2B accounts send for a company."""
        return f"shop{self.seed}-{company.slug}"

    def before_end(self, when: datetime) -> datetime:
        """Return a time moved back, if need be, to a minute before the simulated window ends."""
        return min(when, self.end - timedelta(minutes=1))

    def track(self, person: Person, when: datetime, call: dict[str, Any]) -> None:
        """Record one tracking call of a person."""
        message_id = f"shop{self.seed}-{self.uuid()}"
        body = {**call, "messageId": message_id, "timestamp": iso(when)}
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
        refuses_profiling: bool = False,
    ) -> datetime:
        """Record a sign-up on a device (identify, then `Signed Up`); return when it ended.

        A person who refuses profiling says so in the sign-up's consent choice."""
        person.user_id = user_id
        person.emails.append(email.strip().lower())
        traits: dict[str, Any] = {"email": email, "first_name": first_name, "last_name": last_name}
        if phone:
            person.phones.append(normalised("phone", phone))
            traits["phone"] = phone
        identity = {"userId": user_id, "anonymousId": anonymous_id}
        identify: dict[str, Any] = {"type": "identify", **identity, "traits": traits}
        if refuses_profiling:
            person.refuses_profiling = True
            identify["context"] = {"consent": REFUSES_PROFILING}
        self.track(person, when, identify)
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

    def alias(self, person: Person, when: datetime, *, previous_id: str) -> None:
        """Record the shop's back end aliasing an earlier id to a signed-up person (server side:
        the call carries no anonymous id of its own)."""
        self.track(person, when, {"type": "alias", "previousId": previous_id, "userId": person.user_id})

    def join_account(
        self, person: Person, when: datetime, *, anonymous_id: str, company: Company, traits: dict[str, Any]
    ) -> None:
        """Record a signed-up person buying for a company (a group call with the account's traits)."""
        person.account = self.group_id(company)
        self.track(
            person,
            when,
            {
                "type": "group",
                "groupId": self.group_id(company),
                "userId": person.user_id,
                "anonymousId": anonymous_id,
                "traits": traits,
            },
        )

    def request_quote(self, person: Person, when: datetime, *, anonymous_id: str, company: str) -> None:
        """Record an anonymous visitor asking for a quote for their company (identify with its name
        as they spell it, nothing else about them)."""
        self.track(
            person, when, {"type": "identify", "anonymousId": anonymous_id, "traits": {"company": company}}
        )
        self.track(
            person,
            when + timedelta(seconds=5),
            {"type": "track", "event": "Quote Requested", "anonymousId": anonymous_id, "properties": {}},
        )

    def online_purchase(
        self,
        person: Person,
        when: datetime,
        *,
        anonymous_id: str,
        currency: str | None = None,
        refund_after: timedelta | None = None,
    ) -> datetime:
        """Record checkout and order of a signed-up person (the web tag's track calls), and its whole
        refund when given; return when ordered. The order is the person's last."""
        rng = self.rng
        items = self.basket()
        currency = currency or ("EUR" if rng.random() < 0.85 else rng.choice(CURRENCIES[1:3]))
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
        person.orders.append(_placed(order_id, "online", None, currency, total, when, items))
        if refund_after is not None:
            self.track(
                person,
                self.before_end(when + refund_after),
                {
                    "type": "track",
                    "event": ORDER_REFUNDED,
                    **identity,
                    "properties": {"order_id": order_id, "total": total, "currency": currency},
                },
            )
        return when

    def erp_export(self, person: Person, when: datetime, *, order: dict[str, Any], email: str) -> None:
        """Record the ERP sending an online order again (a transaction by user id and e-mail, with
        the payment method the web tag did not know)."""
        self.transaction(
            person,
            self.before_end(when),
            {
                "order_id": order["order_id"],
                "kind": "purchase",
                "customer": {"user_id": person.user_id, "email": email},
                "items": order["items"],
                "total": order["total"],
                "currency": order["currency"],
                "channel": "online",
                "payment_method": self.rng.choice(ERP_PAYMENTS),
                "time": iso(self.before_end(when)),
            },
        )

    def cancel_order(
        self, person: Person, when: datetime, *, order: dict[str, Any], anonymous_id: str
    ) -> None:
        """Record a signed-up person cancelling an online order."""
        self.track(
            person,
            self.before_end(when),
            {
                "type": "track",
                "event": ORDER_CANCELLED,
                "userId": person.user_id,
                "anonymousId": anonymous_id,
                "properties": {"order_id": order["order_id"]},
            },
        )

    def goodwill_refund(
        self, person: Person, when: datetime, *, order: dict[str, Any], anonymous_id: str, amount: float
    ) -> None:
        """Record the web shop refunding part of an online order by amount (a goodwill credit)."""
        self.track(
            person,
            self.before_end(when),
            {
                "type": "track",
                "event": ORDER_REFUNDED,
                "userId": person.user_id,
                "anonymousId": anonymous_id,
                "properties": {"order_id": order["order_id"], "total": amount, "currency": order["currency"]},
            },
        )

    def store_return(
        self,
        person: Person,
        when: datetime,
        *,
        order: dict[str, Any],
        email: str,
        line: dict[str, Any],
        web_anonymous_id: str | None = None,
    ) -> None:
        """Record a line of an order brought back to a store (a POS refund by e-mail); for an online
        order the web shop may send the same return too, which must count once."""
        store = order["store_id"] or self.rng.choice(STORES)
        amount = round(line["price"] * line["quantity"], 2)
        at = self.before_end(when)
        self.transaction(
            person,
            at,
            {
                "order_id": order["order_id"],
                "kind": "refund",
                "customer": {"email": email},
                "items": [line],
                "total": amount,
                "currency": order["currency"],
                "channel": "store",
                "store_id": store,
                "time": iso(at),
            },
        )
        if web_anonymous_id is not None:
            self.track(
                person,
                self.before_end(at + timedelta(minutes=self.rng.uniform(1, 60))),
                {
                    "type": "track",
                    "event": ORDER_REFUNDED,
                    "userId": person.user_id,
                    "anonymousId": web_anonymous_id,
                    "properties": {
                        "order_id": order["order_id"],
                        "total": amount,
                        "currency": order["currency"],
                        "products": [{**line, "product_id": line["sku"]}],
                    },
                },
            )

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
        """Record a purchase in a store (a transaction by e-mail), and its whole refund when given."""
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
            "payment_method": rng.choice(STORE_PAYMENTS),
            "time": iso(when),
        }
        self.transaction(person, when, document)
        person.orders.append(_placed(order_id, "store", store, currency, total, when, items))
        if refund_after is not None:
            refund_at = self.before_end(when + refund_after)
            self.transaction(person, refund_at, {**document, "kind": "refund", "time": iso(refund_at)})

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
        window = Window(seed=self.seed, start=self.start, end=self.end)
        return World(
            calls=calls, truth=build_truth(calls=calls, people=self.people, window=window, rules=self.rules)
        )


def _placed(
    order_id: str,
    channel: str,
    store: str | None,
    currency: str,
    total: float,
    when: datetime,
    items: list[dict[str, Any]],
) -> dict[str, Any]:
    """Return an order's facts as placed."""
    return {
        "order_id": order_id,
        "channel": channel,
        "store_id": store,
        "currency": currency,
        "total": total,
        "time": iso(when),
        "items": items,
    }
