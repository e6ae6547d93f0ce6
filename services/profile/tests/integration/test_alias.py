"""Alias calls on the real PostgreSQL: `previousId` and `userId` become one profile, in any order of
arrival, through the identity rules; what the rules refuse is in the merge ledger with its reason."""

from __future__ import annotations

from typing import Any

import pytest
from cdp_common.db import transaction
from cdp_common.envelope import Envelope
from cdp_common.events import ProfileMerged
from cdp_profile import store
from cdp_profile.domain.identity import IdentifierKey, IdentityRules
from cdp_profile.handlers import split_merge

from ..conftest import ProfileDb, tracking, uid

pytestmark = pytest.mark.integration


def alias(previous_id: str, user_id: str, **fields: Any) -> Envelope[Any]:
    """Build the envelope of `alias {"previousId": previous_id, "userId": user_id}`."""
    envelope = tracking(type="alias", user_id=user_id, **fields)
    return envelope.model_copy(update={"data": envelope.data.model_copy(update={"previousId": previous_id})})


async def owner(db: ProfileDb, kind: str, value: str) -> str | None:
    async with transaction(db.sessions) as session:
        return await store.resolve_identifier(session=session, key=IdentifierKey(kind, value))


async def live_profiles(db: ProfileDb) -> int:
    return int(await db.scalar("SELECT count(*) FROM profiles WHERE status = 'active'"))


async def ledger(db: ProfileDb, profile_id: str | None) -> list[dict[str, Any]]:
    assert profile_id is not None
    async with transaction(db.sessions) as session:
        family = [profile_id, *await store.merged_away_ids(session=session, profile_id=profile_id)]
        return await store.ledger_of(session=session, profile_ids=family)


async def test_alias_after_both_profiles_exist_makes_them_one(db: ProfileDb) -> None:
    anon, user = uid("a"), uid()
    browsing, customer = await db.resolve(
        tracking(anonymous_id=anon, event="Product Viewed"),
        tracking(type="identify", user_id=user, traits={"first_name": "Ada"}),
    )
    assert browsing != customer
    [aliased] = await db.resolve(alias(anon, user))
    assert aliased == customer
    assert await owner(db, "anonymous_id", anon) == customer
    assert await live_profiles(db) == 1
    [entry] = await ledger(db, customer)
    assert (entry["kind"], entry["rule"], entry["absorbed_id"]) == ("merge", "alias", browsing)
    merged = [e.data for e in await db.published() if isinstance(e.data, ProfileMerged)]
    assert {m.absorbed_profile_id for m in merged} == {browsing}
    # What the anonymous visitor does next is the customer's.
    [later] = await db.resolve(tracking(anonymous_id=anon, event="Product Viewed"))
    assert later == customer
    assert customer is not None
    async with transaction(db.sessions) as session:
        profile = await store.load_profile(session=session, profile_id=customer)
    assert profile is not None
    assert profile.computed["event_counts"]["Product Viewed"] == 2


@pytest.mark.parametrize("order", ["alias_first", "alias_between"])
async def test_alias_in_any_order_of_arrival_ends_in_one_profile(db: ProfileDb, order: str) -> None:
    anon, user = uid("a"), uid()
    visit = tracking(anonymous_id=anon, event="Product Viewed")
    sign_up = tracking(type="identify", user_id=user, traits={"email": f"{user}@example.com"})
    events = (
        [alias(anon, user), sign_up, visit] if order == "alias_first" else [visit, alias(anon, user), sign_up]
    )
    resolved = await db.resolve(*events)
    assert len(set(resolved)) == 1
    assert await owner(db, "anonymous_id", anon) == await owner(db, "user_id", user) == resolved[0]
    assert await live_profiles(db) == 1


async def test_alias_of_an_earlier_user_id_follows_the_user_id_limit(db: ProfileDb) -> None:
    old, new = uid("old"), uid("new")
    [first] = await db.resolve(tracking(type="identify", user_id=old))
    async with transaction(db.sessions) as session:
        await store.save_rules(session=session, rules=IdentityRules.from_json({"limits": {"user_id": 2}}))
    [aliased] = await db.resolve(alias(old, new))
    assert aliased == first
    assert await owner(db, "user_id", new) == first
    assert await live_profiles(db) == 1


async def test_alias_of_two_known_customers_is_refused_and_in_the_ledger(db: ProfileDb) -> None:
    alice, bob = uid("alice"), uid("bob")
    a, b = await db.resolve(tracking(type="identify", user_id=alice), tracking(type="identify", user_id=bob))
    [resolved] = await db.resolve(alias(alice, bob))
    assert resolved == b
    assert await owner(db, "user_id", alice) == a
    assert await live_profiles(db) == 2
    [entry] = await ledger(db, b)
    assert entry["kind"] == "refused"
    assert entry["rule"] == "alias"
    assert (entry["survivor_id"], entry["absorbed_id"]) == (b, a)
    assert entry["reason"]["refused"] == "limit:user_id"
    assert "two known customers" in entry["reason"]["message"]
    assert entry["event_id"] is not None
    # Alice's side of the ledger names the refusal too, and it is no merge that could be split.
    assert [e["kind"] for e in await ledger(db, a)] == ["refused"]
    assert not [e for e in await db.published() if isinstance(e.data, ProfileMerged)]


async def test_alias_of_a_blocked_value_merges_nothing(db: ProfileDb) -> None:
    kiosk, user = uid("kiosk"), uid()
    shop_floor, customer = await db.resolve(
        tracking(anonymous_id=kiosk), tracking(type="identify", user_id=user)
    )
    async with transaction(db.sessions) as session:
        await store.save_rules(
            session=session, rules=IdentityRules.from_json({"blocked_patterns": [r"^kiosk-"]})
        )
    [resolved] = await db.resolve(alias(kiosk, user))
    assert resolved == customer
    assert await owner(db, "anonymous_id", kiosk) == shop_floor
    assert await live_profiles(db) == 2
    assert await ledger(db, customer) == []


async def test_alias_to_a_profile_an_operator_split_off_stays_refused(db: ProfileDb) -> None:
    anon, user = uid("a"), uid()
    *_, profile_id = await db.resolve(
        tracking(anonymous_id=anon),
        tracking(type="identify", user_id=user),
        tracking(user_id=user, anonymous_id=anon),
    )
    assert profile_id is not None
    [merge] = await ledger(db, profile_id)
    async with transaction(db.sessions) as session:
        await split_merge(session=session, context=db.context, merge_id=merge["merge_id"])
    [resolved] = await db.resolve(alias(anon, user))
    assert resolved == profile_id
    assert await live_profiles(db) == 2
    refusals = [e for e in await ledger(db, profile_id) if e["kind"] == "refused"]
    assert [r["reason"]["refused"] for r in refusals] == ["kept_apart"]
