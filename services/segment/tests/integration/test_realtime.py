"""Real-time membership: profile changes, consents, merges, splits and erasures move profiles in and out."""

from __future__ import annotations

from datetime import UTC, datetime
from typing import Any

import pytest
import sqlalchemy as sa
from cdp_common.events import (
    ConsentGranted,
    ConsentWithdrawn,
    ProfileCreated,
    ProfileMerged,
    ProfileSplit,
    ProfileUpdated,
    SegmentEntered,
    SegmentExited,
    make_envelope,
)
from cdp_segment import handlers, store
from cdp_segment.domain.rules import parse_rule

from .conftest import FakeProfile, SegmentDb

pytestmark = pytest.mark.integration


async def define(db: SegmentDb, key: str, rule: dict[str, Any]) -> store.SegmentRow:
    async with db.sessions() as session, session.begin():
        segment, _ = await handlers.create_segment(
            session=session, context=db.context, key=key, name=key, description="", rule=rule
        )
    return segment


def created(profile_id: str, version: int = 1, **traits: Any) -> ProfileCreated:
    return ProfileCreated(profile_id=profile_id, version=version, changed_traits=traits)


def updated(profile_id: str, version: int, traits: Any = None, computed: Any = None) -> ProfileUpdated:
    return ProfileUpdated(
        profile_id=profile_id,
        version=version,
        event_id=f"evt-{profile_id}-{version}",
        changed_traits=traits or {},
        changed_computed_traits=computed or {},
    )


async def test_a_trait_change_enters_and_leaves_with_its_reason(db: SegmentDb) -> None:
    await define(db, "pro_users", {"trait": "plan", "op": "eq", "value": "pro"})
    await db.apply(created("p1", plan="free"))
    assert await db.members("pro_users") == set()

    cause = await db.apply(updated("p1", 2, traits={"plan": "pro"}))
    assert await db.members("pro_users") == {"p1"}
    await db.apply(updated("p1", 3, traits={"plan": None}))
    assert await db.members("pro_users") == set()

    events = [e for e in await db.published() if e.data.segment_key == "pro_users"]
    assert [type(e.data) for e in events] == [SegmentEntered, SegmentExited]
    entered = events[0].data
    assert entered.profile_id == "p1"
    assert entered.segment_version == 1
    assert entered.reason["cause"]["event_id"] == cause.id
    assert entered.reason["cause"]["tracking_event_id"] == "evt-p1-2"
    assert entered.reason["cause"]["changed"] == ["trait:plan"]
    assert entered.reason["conditions"] == {
        "type": "trait", "label": "plan", "path": "plan", "op": "eq", "expected": "pro", "result": True
    }  # fmt: skip
    assert events[0].subject == "p1"


async def test_an_older_version_changes_nothing(db: SegmentDb) -> None:
    await define(db, "pro_users", {"trait": "plan", "op": "eq", "value": "pro"})
    await db.apply(created("p1", version=5, plan="pro"))
    await db.apply(updated("p1", 4, traits={"plan": "free"}))
    assert await db.members("pro_users") == {"p1"}


async def test_only_the_segments_a_change_can_affect_are_evaluated(db: SegmentDb) -> None:
    await define(db, "pro_users", {"trait": "plan", "op": "eq", "value": "pro"})
    await define(db, "never_seen", {"not": {"trait": "seen", "op": "exists"}})
    await db.apply(updated("p2", 1, traits={"plan": "pro"}))
    # An update that changes only `plan` does not evaluate `never_seen`, which depends on `seen`.
    assert await db.members("never_seen") == set()
    assert await db.members("pro_users") == {"p2"}
    await db.apply(created("p3"))
    # A new profile is evaluated against every segment.
    assert await db.members("never_seen") == {"p3"}


async def test_event_conditions_follow_the_computed_traits_profile_publishes(db: SegmentDb) -> None:
    rule = {
        "event": "Order Completed",
        "op": "gte",
        "value": 2,
        "within_days": 30,
        "where": [{"property": "properties.total", "op": "gt", "value": 50}],
    }
    await define(db, "repeat_buyers", rule)
    key = parse_rule(rule).computed_traits[0].key
    async with db.sessions() as session:
        requested = await store.list_computed_traits(session=session)
    assert [r["key"] for r in requested if r["key"] == key] == [key]
    # Profile builds the trait (nobody has ordered yet); once segment holds it, messages move members.
    profile = FakeProfile()
    profile.build(key, {})
    await db.jobs_done(profile)
    await db.apply(created("p1"))
    await db.apply(updated("p1", 2, computed={key: 2}))
    assert await db.members("repeat_buyers") == {"p1"}
    # Profile expires the window and publishes the lower count: the profile leaves.
    await db.apply(updated("p1", 3, computed={key: 1}))
    assert await db.members("repeat_buyers") == set()


async def test_consents_and_segments_of_segments(db: SegmentDb) -> None:
    await define(db, "emailable", {"consent": {"purpose": "marketing", "channel": "email"}})
    await define(db, "vip", {"trait": "tier", "op": "in", "value": ["gold", "platinum"]})
    await define(db, "vip_emailable", {"all": [{"segment": "vip"}, {"segment": "emailable"}]})
    at = datetime(2025, 6, 1, tzinfo=UTC)
    await db.apply(created("p1", tier="gold"))
    await db.apply(ConsentGranted(profile_id="p1", purpose="marketing", channel="email", at=at, source="web"))
    assert await db.members("vip_emailable") == {"p1"}
    late_grant = ConsentGranted(profile_id="p1", purpose="marketing", channel="email", at=at, source="web")
    await db.apply(
        ConsentWithdrawn(
            profile_id="p1",
            purpose="marketing",
            channel="email",
            at=datetime(2025, 6, 2, tzinfo=UTC),
            source="web",
        )
    )
    await db.apply(late_grant.model_copy(update={"at": datetime(2025, 5, 1, tzinfo=UTC)}))
    assert await db.members("emailable") == set()
    assert await db.members("vip_emailable") == set()


async def test_a_merge_moves_membership_to_the_survivor_and_a_split_restores_it(db: SegmentDb) -> None:
    await define(db, "berliners", {"geo": {"city": "Berlin"}})
    await define(
        db,
        "pro_berliners",
        {"all": [{"segment": "berliners"}, {"trait": "plan", "op": "eq", "value": "pro"}]},
    )
    await db.apply(created("survivor", plan="pro"))
    await db.apply(created("absorbed", address={"city": "BERLIN"}))
    assert await db.members("berliners") == {"absorbed"}

    merge = ProfileMerged(
        profile_id="survivor", absorbed_profile_id="absorbed", version=7, merge_id="m1", rule="email"
    )
    await db.apply(merge)
    await db.apply(merge, subject="absorbed")
    assert await db.members("berliners") == {"survivor"}
    assert await db.members("pro_berliners") == {"survivor"}
    exits = [e.data for e in await db.published() if isinstance(e.data, SegmentExited)]
    assert [(e.profile_id, e.segment_key) for e in exits] == [("absorbed", "berliners")]
    assert exits[0].reason["cause"]["merged_into"] == "survivor"

    await db.apply(
        ProfileSplit(profile_id="survivor", restored_profile_id="absorbed", version=8, merge_id="m1")
    )
    assert "absorbed" in await db.members("berliners")


async def test_erasure_removes_the_copy_and_memberships_and_export_includes_them(db: SegmentDb) -> None:
    await define(db, "pro_users", {"trait": "plan", "op": "eq", "value": "pro"})
    await db.apply(created("p1", plan="pro"))
    async with db.sessions() as session:
        exported = await store.export_profile(session=session, profile_id="p1")
    assert exported is not None
    assert exported["traits"] == {"plan": "pro"}
    assert [m["segment_key"] for m in exported["memberships"]] == ["pro_users"]
    assert [h["change"] for h in exported["membership_history"]] == ["entered"]
    async with db.sessions() as session, session.begin():
        details = await store.erase_profiles(session=session, profile_ids=["p1"])
    assert details == {"known_profiles": 1, "memberships": 1, "membership_history": 1}
    assert await db.members("pro_users") == set()
    async with db.sessions() as session:
        assert await store.export_profile(session=session, profile_id="p1") is None


async def test_explain_gives_each_condition_and_the_event_of_the_last_entry(db: SegmentDb) -> None:
    await define(
        db,
        "adult_pros",
        {"all": [{"trait": "plan", "op": "eq", "value": "pro"}, {"age": {"op": "gte", "value": 18}}]},
    )
    await db.apply(created("p1", plan="free", birthday="2000-01-01"))
    cause = await db.apply(updated("p1", 2, traits={"plan": "pro"}))
    async with db.sessions() as session:
        explained = await handlers.explain_membership(
            session=session, context=db.context, ref="adult_pros", profile_id="p1"
        )
    assert explained is not None
    assert explained["member"] is True
    assert [(c["actual"], c["result"]) for c in explained["explanation"]["conditions"]] == [
        ("pro", True),
        (25, True),
    ]
    assert explained["last_change"]["change"] == "entered"
    assert explained["last_change"]["reason"]["cause"]["event_id"] == cause.id


async def _apply_batch(db: SegmentDb, payloads: list[Any]) -> None:
    """Hand consecutive profile changes to the batch handler in one transaction, as the consumer does."""
    envelopes = [make_envelope(payload=p, source="test", subject=p.profile_id) for p in payloads]
    async with db.sessions() as session, session.begin():
        await handlers.apply_profile_changes(session=session, context=db.context, envelopes=envelopes)


async def test_a_batch_of_changes_ends_as_one_change_at_a_time_would(db: SegmentDb) -> None:
    await define(db, "pro_users", {"trait": "plan", "op": "eq", "value": "pro"})
    await define(
        db, "pro_buyers", {"all": [{"segment": "pro_users"}, {"computed": "orders", "op": "gte", "value": 1}]}
    )
    await db.apply(created("p3", plan="pro"))
    await _apply_batch(
        db,
        [
            created("p1", plan="pro"),
            created("p2", plan="free"),
            updated("p1", 2, traits={"plan": "free"}),
            updated("p2", 2, traits={"plan": "pro"}, computed={"orders": 3}),
            updated("p3", 1, traits={"plan": "free"}),  # older than the copy held: ignored
            updated("p1", 3, traits={"plan": "pro"}),
        ],
    )
    assert await db.members("pro_users") == {"p1", "p2", "p3"}
    assert await db.members("pro_buyers") == {"p2"}
    changes = [(e.data.profile_id, e.data.segment_key, type(e.data)) for e in await db.published()]
    assert [c for c in changes if c[0] == "p1"] == [
        ("p1", "pro_users", SegmentEntered),
        ("p1", "pro_users", SegmentExited),
        ("p1", "pro_users", SegmentEntered),
    ]
    assert [c for c in changes if c[0] == "p2"] == [
        ("p2", "pro_users", SegmentEntered),
        ("p2", "pro_buyers", SegmentEntered),
    ]
    async with db.sessions() as session:
        history = await store.page_history(
            session=session, segment_id=None, profile_id="p1", before_id=None, limit=10
        )
    assert [h["change"] for h in history] == ["entered", "exited", "entered"]
    assert history[0]["reason"]["cause"]["tracking_event_id"] == "evt-p1-3"


async def test_a_changed_definition_is_used_by_the_next_change(db: SegmentDb) -> None:
    segment = await define(db, "pro_users", {"trait": "plan", "op": "eq", "value": "pro"})
    await db.apply(created("p1", plan="team"))
    async with db.sessions() as session, session.begin():
        await handlers.update_segment(
            session=session,
            context=db.context,
            ref=segment.key,
            name="paying",
            description="",
            rule={"trait": "plan", "op": "in", "value": ["pro", "team"]},
        )
    # The new version's members are computed by its job.
    await db.jobs_done()
    assert await db.members("pro_users") == {"p1"}
    await db.apply(updated("p1", 2, traits={"plan": "trial"}))
    assert await db.members("pro_users") == set()
    await db.apply(updated("p1", 3, traits={"plan": "team"}))
    assert await db.members("pro_users") == {"p1"}


async def test_entries_hold_the_outbox_write_lock_until_commit_so_rows_go_out_in_commit_order(
    db: SegmentDb,
) -> None:
    """A second writer waits for the first's commit, so outbox ids follow commit order."""
    await define(db, "pro_users", {"trait": "plan", "op": "eq", "value": "pro"})
    try_lock = sa.text(
        "SELECT pg_try_advisory_xact_lock(hashtextextended('cdp-outbox-write:' || current_schema(), 0))"
    )
    async with db.sessions() as writing, writing.begin():
        await handlers.apply_profile_changes(
            session=writing,
            context=db.context,
            envelopes=[make_envelope(payload=created("p1", plan="pro"), source="test", subject="p1")],
        )
        async with db.sessions() as other, other.begin():
            assert (await other.execute(try_lock)).scalar_one() is False, "the lock is held until commit"
    async with db.sessions() as other, other.begin():
        assert (await other.execute(try_lock)).scalar_one() is True
    assert [e.data.segment_key for e in await db.published()] == ["pro_users"]
