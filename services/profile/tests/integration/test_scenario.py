"""A generated shop (tools/shop, cdp_shop) of thousands of people resolved end to end against the
generator's own ground truth: anonymous browsing, sign-ups, several devices, household devices
shared by two people, e-mail changes, in-store purchases by e-mail, web orders the ERP sends
again, cancellations, whole and partial refunds and returns (some sent by the POS and the web shop
alike), orders in euros, pounds, francs and dollars (no rate), server-side aliases (some refused,
some of junk ids), B2B buyers in company accounts, quote requests spelling one company several
ways, e-mail engagement, junk user ids and loyalty cards, and a store kiosk every customer signs
in at (a super-node).

The world's exchange rates are loaded first, as an operator would with PUT /v1/exchange-rates.
Events reach the handlers as ingest would publish them, in time order and in consumer-sized batches
(one transaction per batch). The truth's `profiles` are the published identity and order rules
applied to the same calls in the same order (cdp_shop.identity, cdp_shop.orders); the test checks
that the platform ends with exactly those profiles: the same identifiers together, the same events,
the same orders in the same states worth the same in euros, the same computed traits, the same
accounts; that the merge ledger names the aliases that merged and those refused with their reason;
and that the duplicate queue, once its job ran, holds the profiles that spell one company apart.

`CDP_SCENARIO_PEOPLE` makes the world smaller while developing; the committed size is SCENARIO_PEOPLE
(about 22,800 events, 11 per person).
"""

from __future__ import annotations

import os
from collections import defaultdict
from datetime import UTC, date, datetime
from decimal import Decimal
from typing import Any

import pytest
import sqlalchemy as sa
from cdp_common.db import transaction
from cdp_common.envelope import Envelope
from cdp_common.events import TrackingEventReceived, make_envelope
from cdp_profile import accounts, duplicates, rates
from cdp_shop.world import Call, simulate

from ..conftest import ProfileDb

pytestmark = [pytest.mark.integration, pytest.mark.timeout(900)]

SCENARIO_PEOPLE = 2000
PEOPLE = int(os.environ.get("CDP_SCENARIO_PEOPLE", SCENARIO_PEOPLE))
# The one-at-a-time path (what the consumer falls back to after a failed batch) runs the same
# world, smaller: it exists for correctness, and at the per-event rate thousands take minutes.
FALLBACK_PEOPLE = min(PEOPLE, 150)
BATCH = 500
END = datetime(2026, 11, 20, tzinfo=UTC)


def as_event(call: Call, n: int) -> Envelope[Any]:
    """Turn a generated call into the envelope ingest publishes (transactions as ingest converts them)."""
    body = dict(call.body)
    if call.kind == "transaction":
        customer = body["customer"]
        external = [{"id": customer[k], "type": k} for k in ("email", "phone") if customer.get(k)]
        external += [{"id": v, "type": k} for k, v in customer.get("external_ids", {}).items()]
        properties = {
            "order_id": body["order_id"],
            "total": body["total"],
            "revenue": body["total"],
            "currency": body["currency"],
            "channel": body["channel"],
            "products": [{**item, "product_id": item["sku"]} for item in body["items"]],
        }
        properties.update({k: body[k] for k in ("store_id", "payment_method") if body.get(k)})
        body = {
            "type": "track",
            "event": "Order Completed" if body["kind"] == "purchase" else "Order Refunded",
            "messageId": call.message_id,
            "timestamp": body["time"],
            "userId": customer.get("user_id"),
            "properties": properties,
            "context": {
                "externalIds": external,
                "traits": {k: customer[k] for k in ("email", "phone") if customer.get(k)},
            },
        }
    payload = TrackingEventReceived.model_validate(
        {**body, "sourceId": "src_shop", "receivedAt": body["timestamp"]}
    )
    return make_envelope(payload=payload, source="ingest", subject=str(n), id=event_id(call.message_id))


def event_id(message_id: str) -> str:
    """Return the envelope id a generated call travels under."""
    return f"shop:{message_id}"


def compared(values: dict[str, Any]) -> dict[str, Any]:
    """Return the computed traits the truth states, from the truth or from a profile (same names),
    with times parsed and zero counts and amounts left out."""
    return {
        "first_seen": datetime.fromisoformat(values["first_seen"]),
        "last_seen": datetime.fromisoformat(values["last_seen"]),
        "page_views": values["page_views"],
        "event_counts": {name: n for name, n in values["event_counts"].items() if n},
        "orders": values["orders"],
        "refunded_orders": values["refunded_orders"],
        "revenue": {currency: v for currency, v in values["revenue"].items() if v},
        "average_order_value": {c: v for c, v in values["average_order_value"].items() if v},
        "net_revenue": values["net_revenue"],
        "last_order_date": values["last_order_date"],
        "favourite_category": values["favourite_category"],
        "preferred_payment_method": values["preferred_payment_method"],
    }


async def rows(db: ProfileDb, sql: str) -> list[Any]:
    """Return every row of one query."""
    async with db.engine.connect() as conn:
        return list(await conn.execute(sa.text(sql)))


async def load_rates(db: ProfileDb, days: list[dict[str, Any]]) -> None:
    """Load the world's reference rates as PUT /v1/exchange-rates does."""
    async with transaction(db.sessions) as session:
        await rates.load_rates(
            session=session,
            context=db.context,
            days=[
                rates.DayOfRates(
                    day=date.fromisoformat(d["date"]),
                    base=d["base"],
                    rates={c: Decimal(str(r)) for c, r in d["rates"].items()},
                )
                for d in days
            ],
        )


Order = tuple[str, str, float, float | None]


async def stored_orders(db: ProfileDb) -> dict[str, dict[str, Order]]:
    """Return every order per profile: its state, currency, net and value in the reporting currency."""
    held: dict[str, dict[str, Order]] = defaultdict(dict)
    for order_id, profile_id, state, currency, net, value in await rows(
        db, "SELECT order_id, profile_id, state, currency, net, value FROM orders"
    ):
        held[profile_id][order_id] = (state, currency, float(net), None if value is None else float(value))
    return held


def true_orders(profile: dict[str, Any]) -> dict[str, Order]:
    """Return the orders the truth says count on an expected profile."""
    return {
        o["order_id"]: (o["state"], o["currency"], o["net"], o["value"]) for o in profile["order_details"]
    }


async def queued_company_pairs(db: ProfileDb) -> set[frozenset[str]]:
    """Run the duplicate queue's job once, as the service does every interval, and return the open
    pairs that only a company name ties (GET /v1/duplicates, paged to its end)."""
    async with db.sessions() as session:
        await duplicates.keep_queue_current(session=session)
    found: set[frozenset[str]] = set()
    after = None
    while True:
        async with transaction(db.sessions) as session:
            page = await duplicates.list_duplicates(session=session, min_score=0.0, after=after, limit=1000)
        found |= {
            frozenset(item["profile_ids"]) for item in page["items"] if set(item["reasons"]) == {"company"}
        }
        if page["next"] is None:
            return found
        after = (page["next"]["s"], page["next"]["a"], page["next"]["b"])


async def test_a_generated_shop_ends_with_exactly_the_true_profiles_and_their_computed_traits(
    db: ProfileDb,
) -> None:
    people = PEOPLE if getattr(db, "batched", True) else FALLBACK_PEOPLE
    world = simulate(seed=7, people=people, end=END)
    truth = world.truth
    await load_rates(db, truth["exchange_rates"])
    events = [as_event(call, n) for n, call in enumerate(world.calls)]
    for start in range(0, len(events), BATCH):
        await db.resolve(*events[start : start + BATCH])

    holder: dict[tuple[str, str], str] = {}
    quarantined: set[tuple[str, str]] = set()
    for kind, value, profile_id, is_quarantined in await rows(
        db, "SELECT type, value, profile_id, quarantined_at IS NOT NULL FROM identifiers"
    ):
        holder[(kind, value)] = profile_id
        if is_quarantined:
            quarantined.add((kind, value))
    held_by: dict[str, set[tuple[str, str]]] = defaultdict(set)
    for key, profile_id in holder.items():
        held_by[profile_id].add(key)
    events_of: dict[str, set[str]] = defaultdict(set)
    for stored_id, profile_id in await rows(db, "SELECT event_id, profile_id FROM events"):
        events_of[profile_id].add(stored_id)
    active = {
        profile_id: computed
        for profile_id, computed in await rows(
            db, "SELECT id, computed FROM profiles WHERE status = 'active'"
        )
    }
    orders_of = await stored_orders(db)

    wrong: list[str] = []
    # The platform's profile id of each expected profile, in the truth's order.
    matched: dict[int, str] = {}
    for n, profile in enumerate(truth["profiles"]):
        keys = {(i["type"], i["value"]) for i in profile["identifiers"]}
        who = f"{profile['people']} {sorted(keys)[:3]}"
        owners = {holder.get(key) for key in keys}
        if len(owners) != 1 or None in owners:
            wrong.append(f"{who}: identifiers spread over {owners}")
            continue
        [profile_id] = owners
        assert profile_id is not None
        if profile_id in matched.values():
            wrong.append(f"{who}: shares profile {profile_id} with another expected profile")
            continue
        matched[n] = profile_id
        if held_by[profile_id] != keys:
            wrong.append(
                f"{who}: holds {sorted(held_by[profile_id] - keys)}, lacks {sorted(keys - held_by[profile_id])}"
            )
        if events_of[profile_id] != {event_id(m) for m in profile["message_ids"]}:
            wrong.append(f"{who}: {len(events_of[profile_id])} events, expected {profile['event_count']}")
        if orders_of[profile_id] != true_orders(profile):
            wrong.append(f"{who}: orders (actual, expected) {orders_of[profile_id], true_orders(profile)}")
        if profile_id not in active:
            wrong.append(f"{who}: profile {profile_id} is not active")
            continue
        actual, wanted = compared(active[profile_id]), compared(profile)
        differing = {name: (actual[name], wanted[name]) for name in wanted if actual[name] != wanted[name]}
        if differing:
            wrong.append(f"{who}: computed traits (actual, expected) {differing}")
    assert not wrong, f"{len(wrong)} of {len(truth['profiles'])} profiles differ:\n" + "\n".join(wrong[:20])
    assert set(active) == set(matched.values()), (
        f"{len(set(active) - set(matched.values()))} profiles nobody expected"
    )
    assert len(active) == truth["totals"]["profiles"]
    assert sum(len(held) for held in orders_of.values()) == truth["totals"]["orders"]

    stored = {event for ids in events_of.values() for event in ids}
    assert {event_id(m) for m in truth["unresolved_message_ids"]}.isdisjoint(stored)
    assert truth["blocked_identifiers"], "the world sends junk identifiers"
    for blocked in truth["blocked_identifiers"]:
        assert (blocked["type"], blocked["value"]) not in holder, blocked
    assert quarantined == {(q["type"], q["value"]) for q in truth["quarantined_identifiers"]}

    # Accounts: the traits of the latest group calls, and as members exactly the expected profiles.
    assert {r[0] for r in await rows(db, "SELECT group_id FROM accounts")} == {
        a["group_id"] for a in truth["accounts"]
    }
    for expected in truth["accounts"]:
        async with transaction(db.sessions) as session:
            account = await accounts.account_document(session=session, group_id=expected["group_id"])
        assert account is not None
        members = {
            matched[n] for n, p in enumerate(truth["profiles"]) if expected["group_id"] in p["accounts"]
        }
        assert (account["traits"], set(account["members"])) == (expected["traits"], members), expected[
            "group_id"
        ]

    # The merge ledger: every alias that merged profiles, and every one refused with its reason.
    alias_merges: list[str] = []
    refused: set[tuple[str, str]] = set()
    for stored_id, kind, reason in await rows(
        db, "SELECT event_id, kind, reason->>'refused' FROM merges WHERE rule = 'alias'"
    ):
        if kind == "refused":
            refused.add((stored_id, reason))
        else:
            alias_merges.append(stored_id)
    assert sorted(alias_merges) == sorted(event_id(m) for m in truth["alias_merges"])
    assert refused == {(event_id(r["message_id"]), r["reason"]) for r in truth["refused_aliases"]}

    # The duplicate queue: the profiles that spell one company apart, and no other company pair.
    pairs = {
        frozenset(holder[(i["type"], i["value"])] for i in pair["identifiers"])
        for pair in truth["duplicate_company_pairs"]
    }
    assert pairs, "quote requests spell one company several ways"
    assert await queued_company_pairs(db) == pairs

    if people >= SCENARIO_PEOPLE:
        assert quarantined, "the store kiosk ties more profiles than the threshold"
        assert any(len(p["people"]) > 1 for p in truth["profiles"]), "a shared device joins two people"
        assert len(truth["profiles"]) > len(truth["people"]), "devices of junk-only visitors stay apart"
        placed = [o for p in truth["people"] for o in p["orders"]]
        assert any(o["sent_by"] == ["web", "pos"] for o in placed), "the ERP sends web orders again"
        states = {o["state"] for o in placed}
        assert states == {"completed", "partially_refunded", "refunded", "cancelled"}, states
        assert any(o["value"] is None for o in placed), "orders in a currency without rates"
        assert alias_merges, "aliases merge profiles"
        assert refused, "an alias to another known customer is refused"
        assert len(truth["accounts"]) > 1
