"""One order is one order, on the real PostgreSQL, one event at a time and in batches: the same order
sent by the web tag and the POS counts once, refunds and cancellations amend it, money figures are
in the reporting currency, orders go with merges and come back with splits, and each change is
published as `OrderRecorded` after the profile's own change."""

from __future__ import annotations

import secrets
import string
from datetime import datetime, timedelta
from decimal import Decimal
from typing import Any

import pytest
import sqlalchemy as sa
from cdp_common.db import transaction
from cdp_common.envelope import Envelope
from cdp_common.events import OrderRecorded, ProfileUpdated, make_envelope
from cdp_common.jobs import JobRunner, submit_job
from cdp_profile import handlers, rates, store
from cdp_profile.domain.identity import IdentifierKey
from cdp_profile.orders import (
    ORDERS_JOB,
    VALUATION_JOB,
    OrdersFromEvents,
    OrdersValuation,
    order_document,
)
from cdp_profile.resolution import resolve_event, resolve_events

from ..conftest import T0, ProfileDb, tracking, uid

pytestmark = pytest.mark.integration

TEA = {"sku": "TEA-1", "name": "Assam", "category": "Tea", "price": 70.0, "quantity": 1}
CUP = {"sku": "CUP-2", "name": "Cup", "category": "Kitchen", "price": 30.0, "quantity": 1}


def from_source(envelope: Envelope[Any], source: str) -> Envelope[Any]:
    """Return the event as another source sent it (its own message id, so its own envelope id)."""
    data = envelope.data.model_copy(update={"sourceId": source})
    return make_envelope(
        payload=data, source="ingest", subject=envelope.subject, id=f"{source}:{envelope.id}"
    )


def web_order(
    user: str,
    order_id: str,
    *,
    total: float = 100.0,
    currency: str = "EUR",
    at: datetime = T0,
    **extra: Any,
) -> Envelope[Any]:
    """The web shop's tag: an e-commerce track call."""
    return from_source(
        tracking(
            user_id=user,
            event="Order Completed",
            at=at,
            properties={
                "order_id": order_id,
                "total": total,
                "currency": currency,
                "products": [{**TEA, "product_id": TEA["sku"]}, {**CUP, "product_id": CUP["sku"]}],
                **extra,
            },
        ),
        "src_web",
    )


def card_of(card: str) -> dict[str, Any]:
    """Return the context of a call that names a loyalty card."""
    return {"externalIds": [{"id": card, "type": "loyalty_card", "collection": "users", "encoding": "none"}]}


def pos(
    user: str | None,
    order_id: str,
    kind: str,
    *,
    total: float,
    items: list[dict[str, Any]],
    minutes: float,
    card: str | None = None,
) -> Envelope[Any]:
    """The POS: a transaction as /v1/transactions turns it into a track call."""
    properties = {
        "order_id": order_id,
        "total": total,
        "revenue": total,
        "currency": "EUR",
        "channel": "store",
        "store_id": "berlin-1",
        "payment_method": "card",
        "products": [{**item, "product_id": item["sku"]} for item in items],
    }
    event = "Order Completed" if kind == "purchase" else "Order Refunded"
    sent = tracking(
        user_id=user,
        event=event,
        at=T0 + timedelta(minutes=minutes),
        properties=properties,
        context=card_of(card) if card else None,
    )
    return from_source(sent, "src_pos")


async def profile_of(db: ProfileDb, user: str, kind: str = "user_id") -> store.StoredProfile:
    async with transaction(db.sessions) as session:
        profile_id = await store.resolve_identifier(session=session, key=IdentifierKey(kind, user))
        assert profile_id is not None
        profile = await store.load_profile(session=session, profile_id=profile_id)
        assert profile is not None
        return profile


async def orders_of(db: ProfileDb, profile_id: str) -> list[dict[str, Any]]:
    async with transaction(db.sessions) as session:
        found = await store.list_orders(session=session, profile_id=profile_id, after=None, limit=100)
        return [order_document(o) for o in found]


async def order_messages(db: ProfileDb) -> list[OrderRecorded]:
    return [e.data for e in await db.published() if isinstance(e.data, OrderRecorded)]


async def test_the_same_order_from_the_web_tag_and_the_pos_counts_once(db: ProfileDb) -> None:
    user = uid()
    await db.resolve(
        web_order(user, "o-100"),
        pos(user, "o-100", "purchase", total=100.0, items=[TEA, CUP], minutes=2),
    )
    profile = await profile_of(db, user)
    assert profile.computed["orders"] == 1
    assert profile.computed["net_revenue"] == 100.0
    assert profile.computed["revenue"] == {"EUR": 100.0}
    assert profile.computed["rfm_frequency"] == 1
    assert profile.computed["event_counts"] == {"Order Completed": 2}
    [order] = await orders_of(db, profile.id)
    assert (order["order_id"], order["state"], order["total"], order["net"]) == (
        "o-100",
        "completed",
        100.0,
        100.0,
    )
    assert (order["value"], order["reporting_currency"], order["rate_missing"]) == (100.0, "EUR", False)
    # The POS completed what the web tag had not sent.
    assert (order["sources"], order["payment_method"]) == (["src_web", "src_pos"], "card")
    [recorded] = await order_messages(db)
    assert (recorded.order_id, recorded.profile_id, recorded.net, recorded.value) == (
        "o-100",
        profile.id,
        100.0,
        100.0,
    )


async def test_a_refund_by_line_leaves_the_rest_of_the_order(db: ProfileDb) -> None:
    user = uid()
    await db.resolve(
        web_order(user, "o-200"),
        pos(user, "o-200", "refund", total=30.0, items=[CUP], minutes=60),
    )
    profile = await profile_of(db, user)
    assert profile.computed["net_revenue"] == 70.0
    assert (profile.computed["orders"], profile.computed["refunded_orders"]) == (1, 1)
    assert profile.computed["favourite_category"] == "Tea"
    [order] = await orders_of(db, profile.id)
    assert (order["state"], order["refunded"], order["net"]) == ("partially_refunded", 30.0, 70.0)
    assert [(line["sku"], line["returned"]) for line in order["lines"]] == [("TEA-1", 0), ("CUP-2", 1)]
    messages = await order_messages(db)
    assert [m.state for m in messages] == ["completed", "partially_refunded"]
    # Each order message follows the profile change its event caused, at that change's version.
    published = await db.published()
    last_update = max(i for i, e in enumerate(published) if isinstance(e.data, ProfileUpdated))
    assert isinstance(published[last_update + 1].data, OrderRecorded)
    assert published[last_update + 1].data.version == published[last_update].data.version


async def test_a_cancelled_order_counts_for_nothing(db: ProfileDb) -> None:
    user = uid()
    cancel = tracking(
        user_id=user, event="Order Cancelled", at=T0 + timedelta(hours=1), properties={"order_id": "o-300"}
    )
    await db.resolve(web_order(user, "o-300"), web_order(user, "o-301", total=20.0), cancel)
    profile = await profile_of(db, user)
    assert (profile.computed["orders"], profile.computed["net_revenue"]) == (1, 20.0)
    assert profile.computed["revenue"] == {"EUR": 20.0}
    states = {o["order_id"]: o["state"] for o in await orders_of(db, profile.id)}
    assert states == {"o-300": "cancelled", "o-301": "completed"}


async def test_an_order_in_a_currency_without_any_rate_is_kept_flagged_and_left_out(db: ProfileDb) -> None:
    user = uid()
    # A currency of this test alone: the rates a process looked up are kept for it.
    kronor = "X" + "".join(secrets.choice(string.ascii_uppercase) for _ in range(2))
    await db.resolve(
        web_order(user, "o-400", total=40.0), web_order(user, "o-401", total=500.0, currency=kronor)
    )
    profile = await profile_of(db, user)
    assert profile.computed["orders"] == 2
    assert profile.computed["revenue"] == {"EUR": 40.0, kronor: 500.0}
    assert profile.computed["net_revenue"] == 40.0
    flagged = {o["order_id"]: (o["value"], o["rate_missing"]) for o in await orders_of(db, profile.id)}
    assert flagged == {"o-400": (40.0, False), "o-401": (None, True)}
    # The kronor's rates arrive later: loading them queues the job that values the order, which counts.
    async with transaction(db.sessions) as session:
        day = rates.DayOfRates(day=T0.date(), base="EUR", rates={kronor: Decimal("10")})
        await rates.load_rates(session=session, context=db.context, days=[day])
    job_id = await db.scalar(
        "SELECT id FROM jobs WHERE kind = :kind AND state = 'queued'", kind=VALUATION_JOB
    )
    assert await db.scalar("SELECT params FROM jobs WHERE id = :id", id=job_id) == {"currencies": [kronor]}
    published = len(await db.published())
    runner = JobRunner(
        service="profile",
        engine=db.engine,
        session_factory=db.sessions,
        kinds={VALUATION_JOB: OrdersValuation(context=db.context, batch_size=1)},
    )
    assert await runner.run_job(job_id)
    profile = await profile_of(db, user)
    assert profile.computed["net_revenue"] == 40.0 + 50.0
    flagged = {o["order_id"]: (o["value"], o["rate_missing"]) for o in await orders_of(db, profile.id)}
    assert flagged == {"o-400": (40.0, False), "o-401": (50.0, False)}
    told = [e.data for e in (await db.published())[published:]]
    assert [type(m).__name__ for m in told] == ["ProfileUpdated", "OrderRecorded"]
    assert (told[1].order_id, told[1].value) == ("o-401", 50.0)


async def test_an_order_in_another_currency_is_valued_at_the_rate_of_its_day(db: ProfileDb) -> None:
    user, day = uid(), T0.date()
    async with transaction(db.sessions) as session:
        await store.save_rates(
            session=session, day=day - timedelta(days=2), base="EUR", rates={"USD": Decimal("1.25")}
        )
        await store.save_rates(session=session, day=day, base="EUR", rates={"USD": Decimal("1.6")})
    await db.resolve(
        web_order(user, "o-700", total=100.0, currency="USD", at=T0 - timedelta(days=2)),
        web_order(user, "o-701", total=80.0, currency="USD", at=T0),
        # No rates that day: the latest earlier day's.
        web_order(user, "o-702", total=50.0, currency="USD", at=T0 + timedelta(days=1)),
    )
    profile = await profile_of(db, user)
    assert profile.computed["revenue"] == {"USD": 230.0}
    assert profile.computed["net_revenue"] == 80.0 + 50.0 + 31.25
    values = {o["order_id"]: (o["value"], o["rate_missing"]) for o in await orders_of(db, profile.id)}
    assert values == {"o-700": (80.0, False), "o-701": (50.0, False), "o-702": (31.25, False)}


async def test_an_order_sent_again_for_another_profile_counts_on_the_first_only(db: ProfileDb) -> None:
    web_user, card = uid(), uid("card")
    await db.resolve(web_order(web_user, "o-500"))
    # The POS sends the same order under a loyalty card no profile holds yet, then a refund of it.
    await db.resolve(
        pos(None, "o-500", "purchase", total=100.0, items=[TEA, CUP], minutes=1, card=card),
        pos(None, "o-500", "refund", total=30.0, items=[CUP], minutes=30, card=card),
    )
    first, second = await profile_of(db, web_user), await profile_of(db, card, "loyalty_card")
    assert first.id != second.id
    assert (first.computed["orders"], first.computed["net_revenue"]) == (1, 70.0)
    assert (second.computed["orders"], second.computed["net_revenue"]) == (0, 0.0)
    assert [o["order_id"] for o in await orders_of(db, first.id)] == ["o-500"]
    assert await orders_of(db, second.id) == []
    assert {m.profile_id for m in await order_messages(db)} == {first.id}
    # The customer links the card: the profiles merge, and the order is still one.
    linked = tracking(
        user_id=web_user, event="Card Linked", at=T0 + timedelta(hours=1), context=card_of(card)
    )
    [survivor] = await db.resolve(linked)
    assert survivor == first.id
    merged = await profile_of(db, card, "loyalty_card")
    assert (merged.id, merged.computed["orders"], merged.computed["net_revenue"]) == (first.id, 1, 70.0)
    # A split gives each profile back its own events, and the order to the one that holds its first.
    async with transaction(db.sessions) as session:
        [entry] = await store.ledger_of(session=session, profile_ids=[first.id])
        await handlers.split_merge(session=session, context=db.context, merge_id=entry["merge_id"])
    first, second = await profile_of(db, web_user), await profile_of(db, card, "loyalty_card")
    assert first.id != second.id
    assert (first.computed["orders"], first.computed["net_revenue"]) == (1, 70.0)
    assert (second.computed["orders"], second.computed["net_revenue"]) == (0, 0.0)
    assert [o["order_id"] for o in await orders_of(db, first.id)] == ["o-500"]


def history(prefix: str) -> list[Envelope[Any]]:
    """One customer's orders over the web and the POS, with an amendment of every kind."""
    user = f"{prefix}-user"
    return [
        web_order(user, f"{prefix}-a"),
        pos(user, f"{prefix}-a", "purchase", total=100.0, items=[TEA, CUP], minutes=1),
        web_order(user, f"{prefix}-b", total=60.0, coupon="SPRING"),
        tracking(
            user_id=user,
            event="Order Updated",
            at=T0 + timedelta(minutes=3),
            properties={"order_id": f"{prefix}-b", "total": 55.0},
        ),
        pos(user, f"{prefix}-a", "refund", total=30.0, items=[CUP], minutes=5),
        tracking(
            user_id=user,
            event="Order Cancelled",
            at=T0 + timedelta(minutes=6),
            properties={"order_id": f"{prefix}-b"},
        ),
        web_order(user, f"{prefix}-c", total=12.0, currency="SEK"),
        tracking(
            user_id=user,
            event="Order Refunded",
            at=T0 + timedelta(minutes=8),
            properties={"order_id": f"{prefix}-c"},
        ),
        web_order(user, f"{prefix}-d", total=25.0),
    ]


def without_ids(value: Any, prefix: str) -> Any:
    """Return a value with the history's own ids and times of writing left out, to compare two runs."""
    if isinstance(value, dict):
        return {
            k: without_ids(v, prefix)
            for k, v in value.items()
            if k not in ("first_event_id", "profile_id", "event_id")
        }
    if isinstance(value, list):
        return [without_ids(v, prefix) for v in value]
    return value.replace(prefix, "*") if isinstance(value, str) else value


async def test_the_batch_path_ends_exactly_as_the_one_event_path(db: ProfileDb) -> None:
    one, batch = history("one"), history("batch")
    async with transaction(db.sessions) as session:
        for envelope in one:
            await resolve_event(session=session, envelope=envelope, context=db.context)
    async with transaction(db.sessions) as session:
        await resolve_events(session=session, envelopes=batch, context=db.context)
    by_one, by_batch = await profile_of(db, "one-user"), await profile_of(db, "batch-user")
    assert by_one.computed == by_batch.computed
    # a (net of the cup's refund), c (refunded whole, in a currency without a rate) and d; b was cancelled.
    assert (by_one.computed["orders"], by_one.computed["net_revenue"]) == (3, 95.0)
    assert without_ids(await orders_of(db, by_one.id), "one") == without_ids(
        await orders_of(db, by_batch.id), "batch"
    )
    messages = await order_messages(db)
    told = {
        name: [without_ids(m.model_dump(mode="json"), name) for m in messages if m.profile_id == p.id]
        for name, p in (("one", by_one), ("batch", by_batch))
    }
    assert told["one"] == told["batch"]
    assert [m["state"] for m in told["one"]][-3:] == ["completed", "refunded", "completed"]


async def test_orders_of_events_stored_before_orders_existed_are_built_by_a_job(db: ProfileDb) -> None:
    user, other = uid(), uid()
    await db.resolve(
        web_order(user, "o-600"),
        pos(user, "o-600", "purchase", total=100.0, items=[TEA, CUP], minutes=1),
        pos(user, "o-600", "refund", total=30.0, items=[CUP], minutes=5),
        web_order(other, "o-601", total=20.0),
    )
    # As the store stood before orders: the state counted order events, and no order was kept.
    async with db.engine.begin() as conn:
        await conn.execute(sa.text("DELETE FROM orders"))
        await conn.execute(
            sa.text(
                "UPDATE profiles SET aggregates = aggregates - 'order_book'"
                ' || \'{"orders": 2, "gross": {"EUR": "200"}, "refunds": {"EUR": "30"}}\','
                " computed = computed - 'net_revenue'"
            )
        )
    published = len(await db.published())
    async with transaction(db.sessions) as session:
        job = await submit_job(session=session, kind=ORDERS_JOB, params={})
    runner = JobRunner(
        service="profile",
        engine=db.engine,
        session_factory=db.sessions,
        kinds={ORDERS_JOB: OrdersFromEvents(context=db.context, batch_size=1)},
    )
    assert await runner.run_job(job["id"])
    profile = await profile_of(db, user)
    assert (profile.computed["orders"], profile.computed["net_revenue"]) == (1, 70.0)
    assert "gross" not in profile.aggregates
    [order] = await orders_of(db, profile.id)
    assert (order["state"], order["net"], order["sources"]) == (
        "partially_refunded",
        70.0,
        ["src_web", "src_pos"],
    )
    assert (await profile_of(db, other)).computed["net_revenue"] == 20.0
    other_id = (await profile_of(db, other)).id
    told = sorted((type(e.data).__name__, e.data.profile_id) for e in (await db.published())[published:])
    assert told == sorted(
        (kind, pid) for kind in ("ProfileUpdated", "OrderRecorded") for pid in (profile.id, other_id)
    )
    async with transaction(db.sessions) as session:
        again = await submit_job(session=session, kind=ORDERS_JOB, params={})
    assert await runner.run_job(again["id"])
    assert len(await db.published()) == published + 4, "a second run finds nothing left to build"
