"""Identity resolution on the real PostgreSQL: every rule, merges with their ledger, late events, replays."""

from __future__ import annotations

from datetime import timedelta
from typing import Any

import pytest
from cdp_common.db import transaction
from cdp_common.events import ProfileCreated, ProfileMerged, ProfileUpdated
from cdp_profile import resolution, store
from cdp_profile.domain.identity import IdentifierKey, IdentityRules

from ..conftest import T0, ProfileDb, tracking, uid

pytestmark = pytest.mark.integration


async def profile_of(db: ProfileDb, kind: str, value: str) -> store.StoredProfile | None:
    async with transaction(db.sessions) as session:
        profile_id = await store.resolve_identifier(session=session, key=IdentifierKey(kind, value))
        return (
            None if profile_id is None else await store.load_profile(session=session, profile_id=profile_id)
        )


async def set_rules(db: ProfileDb, **fields: Any) -> None:
    async with transaction(db.sessions) as session:
        await store.save_rules(session=session, rules=IdentityRules.from_json(fields))


async def profile_count(db: ProfileDb) -> int:
    return int(await db.scalar("SELECT count(*) FROM profiles WHERE status = 'active'"))


async def test_a_new_person_gets_a_profile_published_as_created_with_version_one(db: ProfileDb) -> None:
    user = uid()
    [profile_id] = await db.resolve(tracking(user_id=user, context_traits={"first_name": "Ada"}))
    published = await db.published()
    assert [type(e.data) for e in published] == [ProfileCreated]
    created = published[0]
    assert created.id == f"{profile_id}:v1"
    assert created.subject == profile_id
    assert created.data.changed_traits == {"first_name": "Ada"}
    assert created.data.previous_traits == {"first_name": None}
    assert created.data.changed_computed_traits["event_counts"] == {"Page Viewed": 1}


async def test_anonymous_browsing_then_sign_up_stays_one_profile_and_gathers_identifiers(
    db: ProfileDb,
) -> None:
    anon, user = uid("a"), uid()
    first, second, third = await db.resolve(
        tracking(anonymous_id=anon),
        tracking(type="identify", user_id=user, anonymous_id=anon, traits={"email": " Jane@Example.COM "}),
        tracking(type="track", context_traits={"email": "jane@example.com"}, event="Newsletter Opened"),
    )
    assert first == second == third
    profile = await profile_of(db, "email", "jane@example.com")
    assert profile is not None
    assert set(profile.identifiers) == {
        IdentifierKey("anonymous_id", anon),
        IdentifierKey("user_id", user),
        IdentifierKey("email", "jane@example.com"),
    }


async def test_blocked_values_exact_and_regex_never_identify_anybody(db: ProfileDb) -> None:
    await set_rules(db, blocked_patterns=[r"^guest-\d+$"])
    results = await db.resolve(
        tracking(user_id="null"),
        tracking(user_id="undefined", anonymous_id="0"),
        tracking(user_id="guest-17"),
        tracking(anonymous_id="anonymous", context_traits={"email": "TEST@test.com"}),
    )
    assert results == [None, None, None, None]
    assert await profile_count(db) == 0
    real = uid()
    [profile_id] = await db.resolve(tracking(user_id=real, anonymous_id="-1"))
    assert profile_id is not None
    held = await profile_of(db, "user_id", real)
    assert held is not None
    assert held.identifiers == [IdentifierKey("user_id", real)]


async def test_rules_changed_between_two_polls_hold_for_the_second(db: ProfileDb) -> None:
    known = uid("guest")
    [profile_id] = await db.resolve(tracking(user_id=known))
    assert profile_id is not None
    await set_rules(db, blocked_patterns=[r"^guest-"])
    assert await db.resolve(tracking(user_id=uid("guest")), tracking(user_id=known)) == [None, None]
    assert await profile_count(db) == 1
    await set_rules(db)
    [again] = await db.resolve(tracking(user_id=known))
    assert again == profile_id


async def test_two_known_customers_sharing_a_device_are_never_merged(db: ProfileDb) -> None:
    device, alice, bob = uid("dev"), uid("alice"), uid("bob")
    a, b = await db.resolve(
        tracking(user_id=alice, anonymous_id=device),
        tracking(user_id=bob, anonymous_id=device),
    )
    assert a is not None
    assert b is not None
    assert a != b
    bob_profile = await profile_of(db, "user_id", bob)
    assert bob_profile is not None
    # The device id is the lowest-priority identifier of Bob's event: it was dropped, not moved.
    assert bob_profile.identifiers == [IdentifierKey("user_id", bob)]
    assert await db.scalar("SELECT count(*) FROM merges") == 0


async def test_per_type_limit_drops_the_lowest_priority_identifier_and_matches_again(db: ProfileDb) -> None:
    await set_rules(db, limits={"user_id": 1, "email": 2})
    user = uid()
    emails = [f"{uid('e')}@example.com" for _ in range(3)]
    for email in emails[:2]:
        await db.resolve(tracking(user_id=user, context_traits={"email": email}))
    [third] = await db.resolve(tracking(user_id=user, context_traits={"email": emails[2]}))
    profile = await profile_of(db, "user_id", user)
    assert profile is not None
    assert profile.id == third
    assert sorted(k.value for k in profile.identifiers if k.type == "email") == sorted(emails[:2])


async def test_priority_order_is_configurable(db: ProfileDb) -> None:
    # With phone ranked above e-mail, an event tying two phone-holding profiles drops the e-mail.
    await set_rules(
        db, limits={"user_id": 1, "phone": 1}, priority=["user_id", "phone", "email", "anonymous_id"]
    )
    email = f"{uid('e')}@example.com"
    a, b = await db.resolve(
        tracking(context_traits={"phone": "+49 30 1234567", "email": email}),
        tracking(context_traits={"phone": "+49 30 7654321", "email": email}),
    )
    assert a != b
    profile = await profile_of(db, "phone", "+49307654321")
    assert profile is not None
    assert IdentifierKey("email", email) not in profile.identifiers


async def test_an_identifier_tying_too_many_profiles_is_quarantined_listed_and_never_merges(
    db: ProfileDb,
) -> None:
    await set_rules(db, supernode_threshold=3)
    kiosk = uid("kiosk")
    users = [uid() for _ in range(5)]
    for user in users:
        await db.resolve(tracking(user_id=user, anonymous_id=kiosk))
    async with transaction(db.sessions) as session:
        listed = await store.list_quarantined(session=session, after=None, limit=10)
    assert [(q["type"], q["value"]) for q in listed] == [("anonymous_id", kiosk)]
    assert listed[0]["profiles_tied"] >= 4
    assert await profile_count(db) == 5
    assert await db.scalar("SELECT count(*) FROM merges") == 0
    # An anonymous visitor on the kiosk with a new e-mail does not pull that e-mail into anyone.
    [visitor] = await db.resolve(tracking(anonymous_id=kiosk, context_traits={"email": "walkin@example.com"}))
    owner = await profile_of(db, "email", "walkin@example.com")
    assert owner is not None
    assert owner.id == visitor


async def test_shared_identifier_merges_with_a_ledger_entry_and_published_on_both_keys(db: ProfileDb) -> None:
    anon, email = uid("a"), f"{uid('m')}@example.com"
    browsing, shopper = await db.resolve(
        tracking(anonymous_id=anon, properties={"n": 1}),
        tracking(
            context_traits={"email": email},
            event="Order Completed",
            properties={"total": 10, "currency": "EUR"},
        ),
    )
    assert browsing != shopper
    merge_event = tracking(anonymous_id=anon, context_traits={"email": email}, event="Signed In")
    [survivor] = await db.resolve(merge_event)
    assert survivor is not None
    assert shopper is not None
    assert survivor == browsing  # the older profile survives
    async with transaction(db.sessions) as session:
        ledger = await store.ledger_of(session=session, profile_ids=[survivor])
        assert await store.resolve_profile_id(session=session, profile_id=shopper) == survivor
        merged = await store.load_profile(session=session, profile_id=survivor)
    assert [(e["kind"], e["survivor_id"], e["absorbed_id"], e["event_id"]) for e in ledger] == [
        ("merge", survivor, shopper, merge_event.id)
    ]
    assert ledger[0]["rule"] == "shared_identifier:email"
    assert ledger[0]["identifiers"] == [{"type": "email", "value": email}]
    assert merged is not None
    assert merged.computed["event_counts"] == {"Order Completed": 1, "Page Viewed": 1, "Signed In": 1}
    assert merged.computed["revenue"] == {"EUR": 10.0}
    merges = [e for e in await db.published() if isinstance(e.data, ProfileMerged)]
    assert sorted(e.subject for e in merges) == sorted([survivor, shopper])
    assert {e.data.merge_id for e in merges} == {ledger[0]["merge_id"]}
    versions = [e.data.version for e in await db.published() if e.subject == survivor]
    assert versions == sorted(versions)
    assert len(set(versions)) == len(versions)


async def test_events_of_one_batch_merge_and_resolve_together(db: ProfileDb) -> None:
    anon, user = uid("a"), uid()
    results = await db.resolve(
        tracking(anonymous_id=anon),
        tracking(user_id=user),
        tracking(user_id=user, anonymous_id=anon),
        tracking(anonymous_id=anon),
    )
    assert len(set(results)) == 2
    assert results[2] == results[3]
    assert await profile_count(db) == 1


async def test_phone_in_e164_with_the_default_region_custom_ids_and_the_reserved_profile_id(
    db: ProfileDb,
) -> None:
    crm = uid("crm")
    [profile_id] = await db.resolve(
        tracking(
            context_traits={"phone": "030 1234567"}, context={"externalIds": [{"type": "crm_id", "id": crm}]}
        )
    )
    by_phone = await profile_of(db, "phone", "+49301234567")
    by_crm = await profile_of(db, "crm_id", crm)
    assert by_phone is not None
    assert by_crm is not None
    assert by_phone.id == by_crm.id == profile_id
    [again] = await db.resolve(tracking(event="Email Opened", context={"profile_id": profile_id}))
    assert again == profile_id


async def test_a_late_event_never_overwrites_a_newer_trait(db: ProfileDb) -> None:
    user = uid()
    await db.resolve(
        tracking(type="identify", user_id=user, traits={"city": "Berlin"}, at=T0 + timedelta(hours=2))
    )
    await db.resolve(tracking(type="identify", user_id=user, traits={"city": "Bonn", "plan": "pro"}, at=T0))
    profile = await profile_of(db, "user_id", user)
    assert profile is not None
    assert profile.traits["city"].value == "Berlin"
    assert profile.traits["plan"].value == "pro"
    assert profile.computed["first_seen"] == T0.isoformat()


async def test_replaying_every_event_changes_no_profile_and_no_computed_trait(db: ProfileDb) -> None:
    anon, user, email = uid("a"), uid(), f"{uid('r')}@example.com"
    events = [
        tracking(anonymous_id=anon, type="page", name="Home"),
        tracking(user_id=user, anonymous_id=anon, context_traits={"email": email}),
        tracking(
            user_id=user,
            event="Order Completed",
            properties={"order_id": "o1", "total": 30, "currency": "EUR"},
        ),
        tracking(
            user_id=user, event="Order Refunded", properties={"order_id": "o1", "total": 5, "currency": "EUR"}
        ),
    ]
    for envelope in events:
        await db.resolve(envelope)
    before = await profile_of(db, "user_id", user)
    published = len(await db.published())
    await db.resolve(*events)
    for envelope in events:
        await db.resolve(envelope)
    after = await profile_of(db, "user_id", user)
    assert before is not None
    assert after is not None
    assert (after.version, after.traits, after.computed) == (before.version, before.traits, before.computed)
    assert len(await db.published()) == published
    assert after.computed["revenue"] == {"EUR": 25.0}


async def test_unresolvable_refs_are_invalid_references() -> None:
    from cdp_profile.domain.identity import InvalidReference, parse_ref

    with pytest.raises(InvalidReference):
        parse_ref("Email:x@example.com")
    with pytest.raises(InvalidReference):
        parse_ref("phone:not a number")
    assert parse_ref("6d0f5a52") is None


async def test_events_of_an_updated_profile_carry_before_and_after(db: ProfileDb) -> None:
    user = uid()
    await db.resolve(tracking(type="identify", user_id=user, traits={"plan": "free"}))
    await db.resolve(tracking(type="identify", user_id=user, traits={"plan": "pro"}))
    update = [e for e in await db.published() if isinstance(e.data, ProfileUpdated)][-1]
    assert update.data.changed_traits == {"plan": "pro"}
    assert update.data.previous_traits == {"plan": "free"}


async def test_concurrent_transactions_on_the_same_new_person_converge_on_one_profile(db: ProfileDb) -> None:
    import asyncio

    user, anon = uid(), uid("a")

    async def one(envelope: Any) -> str | None:
        async with transaction(db.sessions) as session:
            return await resolution.resolve_event(session=session, envelope=envelope, context=db.context)

    results = await asyncio.gather(*(one(tracking(user_id=user, anonymous_id=anon)) for _ in range(6)))
    assert len(set(results)) == 1
    assert await profile_count(db) == 1
