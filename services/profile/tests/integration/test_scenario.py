"""A generated shop (tools/shop, cdp_shop) of thousands of people resolved end to end against the
generator's own ground truth: anonymous browsing, sign-ups, several devices, household devices
shared by two people, e-mail changes, in-store purchases by e-mail, refunds, e-mail engagement,
junk user ids and loyalty cards, and a store kiosk every customer signs in at (a super-node).

Events reach the handlers as ingest would publish them, in time order and in consumer-sized batches
(one transaction per batch). The truth's `profiles` are the published identity rules applied to the
same calls in the same order (cdp_shop.identity); the test checks that the platform ends with exactly
those profiles: the same identifiers together, the same events, the same computed traits.

`CDP_SCENARIO_PEOPLE` makes the world smaller while developing; the committed size is SCENARIO_PEOPLE
(about 21,700 events, 11 per person).
"""

from __future__ import annotations

import os
from collections import defaultdict
from datetime import UTC, datetime
from typing import Any

import pytest
import sqlalchemy as sa
from cdp_common.envelope import Envelope
from cdp_common.events import TrackingEventReceived, make_envelope
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
        body = {
            "type": "track",
            "event": "Order Completed" if body["kind"] == "purchase" else "Order Refunded",
            "messageId": call.message_id,
            "timestamp": body["time"],
            "userId": customer.get("user_id"),
            "properties": {
                "order_id": body["order_id"],
                "total": body["total"],
                "revenue": body["total"],
                "currency": body["currency"],
                "channel": body["channel"],
                "store_id": body["store_id"],
                "payment_method": body.get("payment_method"),
                "products": [{**item, "product_id": item["sku"]} for item in body["items"]],
            },
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
        "last_order_date": values["last_order_date"],
        "favourite_category": values["favourite_category"],
        "preferred_payment_method": values["preferred_payment_method"],
    }


async def rows(db: ProfileDb, sql: str) -> list[Any]:
    """Return every row of one query."""
    async with db.engine.connect() as conn:
        return list(await conn.execute(sa.text(sql)))


async def test_a_generated_shop_ends_with_exactly_the_true_profiles_and_their_computed_traits(
    db: ProfileDb,
) -> None:
    people = PEOPLE if getattr(db, "batched", True) else FALLBACK_PEOPLE
    world = simulate(seed=7, people=people, end=END)
    truth = world.truth
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

    wrong: list[str] = []
    matched: set[str] = set()
    for profile in truth["profiles"]:
        keys = {(i["type"], i["value"]) for i in profile["identifiers"]}
        who = f"{profile['people']} {sorted(keys)[:3]}"
        owners = {holder.get(key) for key in keys}
        if len(owners) != 1 or None in owners:
            wrong.append(f"{who}: identifiers spread over {owners}")
            continue
        [profile_id] = owners
        assert profile_id is not None
        if profile_id in matched:
            wrong.append(f"{who}: shares profile {profile_id} with another expected profile")
            continue
        matched.add(profile_id)
        if held_by[profile_id] != keys:
            wrong.append(
                f"{who}: holds {sorted(held_by[profile_id] - keys)}, lacks {sorted(keys - held_by[profile_id])}"
            )
        if events_of[profile_id] != {event_id(m) for m in profile["message_ids"]}:
            wrong.append(f"{who}: {len(events_of[profile_id])} events, expected {profile['event_count']}")
        if profile_id not in active:
            wrong.append(f"{who}: profile {profile_id} is not active")
            continue
        actual, wanted = compared(active[profile_id]), compared(profile)
        differing = {name: (actual[name], wanted[name]) for name in wanted if actual[name] != wanted[name]}
        if differing:
            wrong.append(f"{who}: computed traits (actual, expected) {differing}")
    assert not wrong, f"{len(wrong)} of {len(truth['profiles'])} profiles differ:\n" + "\n".join(wrong[:20])
    assert set(active) == matched, f"{len(set(active) - matched)} profiles nobody expected"
    assert len(active) == truth["totals"]["profiles"]

    stored = {event for ids in events_of.values() for event in ids}
    assert {event_id(m) for m in truth["unresolved_message_ids"]}.isdisjoint(stored)
    assert truth["blocked_identifiers"], "the world sends junk identifiers"
    for blocked in truth["blocked_identifiers"]:
        assert (blocked["type"], blocked["value"]) not in holder, blocked
    assert quarantined == {(q["type"], q["value"]) for q in truth["quarantined_identifiers"]}
    if people >= SCENARIO_PEOPLE:
        assert quarantined, "the store kiosk ties more profiles than the threshold"
        assert any(len(p["people"]) > 1 for p in truth["profiles"]), "a shared device joins two people"
        assert len(truth["profiles"]) > len(truth["people"]), "devices of junk-only visitors stay apart"
