"""A generated shop (tools/shop, cdp_shop) resolved end to end against its own ground truth: anonymous
browsing, sign-ups, several devices, in-store purchases by e-mail, refunds, e-mail engagement, junk ids.

Events reach the handlers as ingest would publish them, in time order and in consumer-sized batches
(one transaction per batch). The world is kept small because the test budget is minutes; the same
code runs over thousands of people with `cdp-shop` against `make up`."""

from __future__ import annotations

from datetime import UTC, datetime
from typing import Any

import pytest
from cdp_common.db import transaction
from cdp_common.envelope import Envelope
from cdp_common.events import TrackingEventReceived, make_envelope
from cdp_profile import store
from cdp_profile.domain.identity import IdentifierKey
from cdp_shop.world import Call, simulate

from ..conftest import ProfileDb

pytestmark = [pytest.mark.integration, pytest.mark.timeout(300)]

PEOPLE = 40
BATCH = 200


def as_event(call: Call, n: int) -> Envelope[Any]:
    """Turn a generated call into the envelope ingest publishes (transactions as ingest converts them)."""
    body = dict(call.body)
    if call.kind == "transaction":
        customer = body["customer"]
        external = [{"id": customer[k], "type": k} for k in ("email", "phone") if customer.get(k)]
        body = {
            "type": "track",
            "event": "Order Completed" if body["kind"] == "purchase" else "Order Refunded",
            "messageId": f"txn:{body['kind']}:{body['order_id']}",
            "timestamp": body["time"],
            "userId": customer.get("user_id"),
            "properties": {
                "order_id": body["order_id"],
                "total": body["total"],
                "currency": body["currency"],
                "payment_method": body.get("payment_method"),
                "products": body["items"],
            },
            "context": {
                "externalIds": external,
                "traits": {k: customer[k] for k in ("email", "phone") if customer.get(k)},
            },
        }
    payload = TrackingEventReceived.model_validate(
        {**body, "sourceId": "src_shop", "receivedAt": body["timestamp"]}
    )
    return make_envelope(payload=payload, source="ingest", subject=str(n), id=f"shop:{payload.messageId}")


async def test_a_generated_shop_ends_with_exactly_the_true_people_and_their_computed_traits(
    db: ProfileDb,
) -> None:
    world = simulate(seed=7, people=PEOPLE, end=datetime(2026, 11, 20, tzinfo=UTC))
    events = [as_event(call, n) for n, call in enumerate(world.calls)]
    for start in range(0, len(events), BATCH):
        await db.resolve(*events[start : start + BATCH])
    truth = world.truth["people"]
    async with transaction(db.sessions) as session:
        seen: set[str] = set()
        for person in truth:
            if not (person["user_id"] or person["emails"] or person["phones"]):
                # Only blocked junk ids ever stood beside this person's devices: nothing observable
                # ties them, so each device is rightly a profile of its own (the truth file counts
                # the real person once).
                for anonymous_id in person["anonymous_ids"]:
                    owner = await store.resolve_identifier(
                        session=session, key=IdentifierKey("anonymous_id", anonymous_id)
                    )
                    assert owner is not None
                    assert owner not in seen
                    seen.add(owner)
                    device = await store.load_profile(session=session, profile_id=owner)
                    assert device is not None
                    assert device.identifiers == [IdentifierKey("anonymous_id", anonymous_id)]
                continue
            keys = [IdentifierKey("user_id", person["user_id"])] if person["user_id"] else []
            keys += [IdentifierKey("anonymous_id", a) for a in person["anonymous_ids"]]
            keys += [IdentifierKey("email", e) for e in person["emails"]]
            keys += [IdentifierKey("phone", p) for p in person["phones"]]
            owners = {await store.resolve_identifier(session=session, key=k) for k in keys}
            assert len(owners) == 1, (person["key"], owners)
            [profile_id] = owners
            assert profile_id is not None
            assert profile_id not in seen, f"{person['key']} shares a profile with another person"
            seen.add(profile_id)
            profile = await store.load_profile(session=session, profile_id=profile_id)
            assert profile is not None
            assert set(profile.identifiers) == set(keys), person["key"]
            computed = profile.computed
            assert computed["orders"] - computed["refunded_orders"] == person["order_count"], person["key"]
            assert {c: v for c, v in computed["revenue"].items() if v} == person["revenue"], person["key"]
            assert computed["favourite_category"] == person["favourite_category"], person["key"]
            assert datetime.fromisoformat(computed["first_seen"]) == datetime.fromisoformat(
                person["first_seen"]
            )
            assert datetime.fromisoformat(computed["last_seen"]) == datetime.fromisoformat(
                person["last_seen"]
            )
            stored = await db.scalar("SELECT count(*) FROM events WHERE profile_id = :p", p=profile_id)
            assert stored == person["event_count"], person["key"]
    assert await db.scalar("SELECT count(*) FROM profiles WHERE status = 'active'") == len(seen)
    assert len(seen) >= len(truth)
    for blocked in world.truth["blocked_identifiers"]:
        held = await db.scalar(
            "SELECT count(*) FROM identifiers WHERE type = :t AND value = :v",
            t=blocked["type"],
            v=blocked["value"],
        )
        assert held == 0, blocked
