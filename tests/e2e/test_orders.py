"""One order is one order, end to end: the web shop's tag sends an order through /v1/track and the
POS sends the same order through /v1/transactions; profile counts it once, a return of one line
amends it, an order in dollars counts at the day's rate loaded with PUT /v1/exchange-rates,
`GET /v1/profiles/{ref}/orders` lists them, and each change reaches cdp.profiles.v1."""

from __future__ import annotations

import secrets
from datetime import UTC, datetime, timedelta
from typing import Any

import httpx
import pytest
from cdp_common.envelope import Envelope
from cdp_common.events import OrderRecorded
from cdp_common.testing import PlatformUnderTest, read_topic, wait_for
from cdp_common.topics import TopicName

from .conftest import Stack
from .test_event_flow import profile_of, track

pytestmark = pytest.mark.e2e

TEA = {"sku": "TEA-1", "name": "Assam", "category": "Tea", "price": 70.0, "quantity": 1}
CUP = {"sku": "CUP-2", "name": "Cup", "category": "Kitchen", "price": 30.0, "quantity": 1}


async def pos_source(http: httpx.AsyncClient, stack: Stack) -> str:
    """Create the stores' source and return its write key."""
    created = await http.post(
        f"{stack.url('ingest')}/v1/sources", json={"name": "pos"}, headers=stack.admin()
    )
    assert created.status_code == 201, created.text
    key: str = created.json()["write_key"]
    return key


def transaction(
    order_id: str, user_id: str, kind: str, items: list[dict[str, Any]], at: datetime
) -> dict[str, Any]:
    return {
        "order_id": order_id,
        "kind": kind,
        "customer": {"user_id": user_id},
        "items": items,
        "total": sum(i["price"] * i["quantity"] for i in items),
        "currency": "EUR",
        "channel": "store",
        "store_id": "berlin-1",
        "payment_method": "card",
        "time": at.isoformat(),
    }


async def computed_when(
    http: httpx.AsyncClient, stack: Stack, ref: str, **expected: Any
) -> dict[str, Any] | None:
    profile = await profile_of(http, stack, ref)
    if profile is None:
        return None
    computed: dict[str, Any] = profile["computed_traits"]
    return computed if all(computed.get(k) == v for k, v in expected.items()) else None


async def test_one_order_from_the_web_and_the_pos_counts_once_and_a_return_amends_it(
    stack: Stack, http: httpx.AsyncClient, platform: PlatformUnderTest
) -> None:
    user_id = "buyer-" + secrets.token_hex(4)
    order_id = "ORD-" + secrets.token_hex(4)
    ordered_at = datetime.now(UTC) - timedelta(minutes=5)
    pos_key = await pos_source(http, stack)
    web = {
        "userId": user_id,
        "event": "Order Completed",
        "timestamp": ordered_at.isoformat(),
        "properties": {
            "order_id": order_id,
            "total": 100.0,
            "currency": "EUR",
            "products": [{**TEA, "product_id": TEA["sku"]}, {**CUP, "product_id": CUP["sku"]}],
        },
    }
    assert (await track(http, stack, web)).status_code == 200
    transactions = f"{stack.url('ingest')}/v1/transactions"
    sale = transaction(order_id, user_id, "purchase", [TEA, CUP], ordered_at + timedelta(seconds=20))
    assert (await http.post(transactions, json=sale, auth=(pos_key, ""))).status_code == 200
    ref = f"user_id:{user_id}"
    # Both arrived (two Order Completed events), one order counted.
    computed = await wait_for(
        lambda: computed_when(http, stack, ref, event_counts={"Order Completed": 2}), what="both arrivals"
    )
    assert (computed["orders"], computed["net_revenue"], computed["revenue"]) == (1, 100.0, {"EUR": 100.0})

    returned = transaction(order_id, user_id, "refund", [CUP], ordered_at + timedelta(minutes=3))
    assert (await http.post(transactions, json=returned, auth=(pos_key, ""))).status_code == 200
    computed = await wait_for(lambda: computed_when(http, stack, ref, net_revenue=70.0), what="the return")
    assert (computed["orders"], computed["refunded_orders"]) == (1, 1)

    rates = {"date": ordered_at.date().isoformat(), "base": "EUR", "rates": {"USD": 1.25}}
    loaded = await http.put(f"{stack.url('profile')}/v1/exchange-rates", json=rates, headers=stack.admin())
    assert loaded.status_code == 200, loaded.text
    dollars = {**web, "properties": {"order_id": f"{order_id}-US", "total": 50.0, "currency": "USD"}}
    assert (await track(http, stack, dollars)).status_code == 200
    computed = await wait_for(lambda: computed_when(http, stack, ref, orders=2), what="the order in dollars")
    assert computed["net_revenue"] == 70.0 + 40.0
    assert computed["revenue"] == {"EUR": 70.0, "USD": 50.0}

    listed = await http.get(f"{stack.url('profile')}/v1/profiles/{ref}/orders", headers=stack.admin())
    assert listed.status_code == 200, listed.text
    in_dollars, order = listed.json()["items"]
    assert (in_dollars["currency"], in_dollars["value"], in_dollars["rate_missing"]) == ("USD", 40.0, False)
    assert (order["order_id"], order["state"], order["total"], order["net"]) == (
        order_id,
        "partially_refunded",
        100.0,
        70.0,
    )
    assert [(line["sku"], line["returned"]) for line in order["lines"]] == [("TEA-1", 0), ("CUP-2", 1)]
    assert len(order["sources"]) == 2

    settings = platform.settings()

    def told(envelopes: list[Envelope[Any]]) -> bool:
        return [
            e.data.state
            for e in envelopes
            if isinstance(e.data, OrderRecorded) and e.data.order_id == order_id
        ] == [
            "completed",
            "partially_refunded",
        ]

    read = await read_topic(
        bootstrap=settings.kafka_bootstrap, topic=settings.topic(TopicName.PROFILES), until=told
    )
    [*_, last] = [e for e in read if isinstance(e.data, OrderRecorded) and e.data.order_id == order_id]
    assert (last.subject, last.data.net, last.data.value, last.data.reporting_currency) == (
        listed.json()["profile_id"],
        70.0,
        70.0,
        "EUR",
    )


async def test_the_orders_route_pages_and_refuses_what_it_cannot_answer(
    stack: Stack, http: httpx.AsyncClient
) -> None:
    user_id = "pager-" + secrets.token_hex(4)
    for n in range(3):
        call = {
            "userId": user_id,
            "event": "Order Completed",
            "properties": {"order_id": f"{user_id}-{n}", "total": 10.0 * (n + 1), "currency": "EUR"},
        }
        assert (await track(http, stack, call)).status_code == 200
    ref = f"user_id:{user_id}"
    await wait_for(lambda: computed_when(http, stack, ref, orders=3), what="three orders")
    url = f"{stack.url('profile')}/v1/profiles/{ref}/orders"
    seen: list[str] = []
    cursor: str | None = None
    while True:
        page = await http.get(
            url, params={"limit": 2, **({"cursor": cursor} if cursor else {})}, headers=stack.admin()
        )
        assert page.status_code == 200, page.text
        seen += [item["order_id"] for item in page.json()["items"]]
        cursor = page.json()["next"]
        if cursor is None:
            break
    assert sorted(seen) == [f"{user_id}-{n}" for n in range(3)]
    bad = await http.get(url, params={"cursor": "not-a-cursor"}, headers=stack.admin())
    assert (bad.status_code, bad.json()["error"]["code"]) == (400, "invalid_cursor")
    nobody = await http.get(
        f"{stack.url('profile')}/v1/profiles/user_id:nobody-{user_id}/orders", headers=stack.admin()
    )
    assert (nobody.status_code, nobody.json()["error"]["code"]) == (404, "profile_not_found")
    assert (await http.get(url)).status_code == 401
