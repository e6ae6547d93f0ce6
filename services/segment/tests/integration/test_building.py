"""Segments build as jobs: an event condition waits for profile's computed trait, its values are
copied into segment's copy (never over a value that came by message), the members follow, and
preview and explain say what is still building meanwhile. A job run again carries on from its cursor."""

from __future__ import annotations

from typing import Any

import pytest
import sqlalchemy as sa
from cdp_common.events import ProfileCreated, ProfileUpdated, SegmentEntered
from cdp_common.jobs import jobs_table
from cdp_common.testing import wait_for
from cdp_segment import handlers, store
from cdp_segment.computed_traits import FILL_JOB, advance_traits
from cdp_segment.domain.rules import parse_rule
from cdp_segment.jobs import job_kinds

from .conftest import FakeProfile, SegmentDb

pytestmark = pytest.mark.integration

VIEWED = {"event": "Product Viewed", "op": "gte", "value": 1, "within_days": 7}
KEY = parse_rule(VIEWED).computed_traits[0].key


async def _segment(db: SegmentDb, key: str) -> store.SegmentRow:
    async with db.sessions() as session:
        segment = await store.get_segment(session=session, ref=key)
    assert segment is not None
    return segment


async def _explain(db: SegmentDb, key: str, profile_id: str) -> dict[str, Any]:
    async with db.sessions() as session:
        explained = await handlers.explain_membership(
            session=session, context=db.context, ref=key, profile_id=profile_id
        )
    assert explained is not None
    return explained


async def _preview(db: SegmentDb, rule: dict[str, Any]) -> dict[str, Any]:
    async with db.sessions() as session:
        return await handlers.preview_segment(session=session, context=db.context, rule=rule, sample_size=10)


async def test_an_event_segment_builds_while_profile_builds_its_trait_then_has_the_right_members(
    db: SegmentDb,
) -> None:
    for name in ("p1", "p2", "p3", "p4", "p5"):
        await db.apply(ProfileCreated(profile_id=name, version=1, changed_traits={"plan": "pro"}))
    # p1's count came by message (the event flow) before the backfill finished: it is newer.
    await db.apply(ProfileUpdated(profile_id="p1", version=2, changed_computed_traits={KEY: 0}))

    async with db.sessions() as session, session.begin():
        segment, job = await handlers.create_segment(
            session=session, context=db.context, key="viewers", name="Viewers", description="", rule=VIEWED
        )
        await handlers.create_segment(
            session=session,
            context=db.context,
            key="not_viewers",
            name="Not viewers",
            description="",
            rule={"not": VIEWED},
        )
    assert segment.status == "building"
    assert job["state"] == "queued"
    assert segment.job_id == job["id"]

    profile = FakeProfile(base=100)
    async with db.jobs_running(profile, page_size=2, batch_size=2):

        async def defined() -> bool:
            return KEY in profile.defined

        await wait_for(defined, what="segment to define the computed trait in profile")
        profile.progress[KEY] = 40

        async def risen() -> dict[str, Any] | None:
            body = await db.job(job["id"])
            return body if body["done"] >= 40 else None

        running = await wait_for(risen, what="the job's done to rise with profile's progress")
        assert running["state"] == "queued", "it waits parked, holding no worker"
        assert running["total"] > running["done"]
        assert (await _segment(db, "viewers")).status == "building"

        # Meanwhile the condition is not answered false: it is building for profiles without a value.
        explained = await _explain(db, "viewers", "p2")
        assert explained["building"] == [KEY]
        assert explained["matches_now"] is None
        assert explained["explanation"]["state"] == "building"
        assert explained["explanation"]["result"] is None
        # p1's value came by message: it is known, and decides.
        held = await _explain(db, "viewers", "p1")
        assert held["building"] == []
        assert held["matches_now"] is False
        preview = await _preview(db, VIEWED)
        assert preview["status"] == "building"
        assert preview["building"] == [KEY]
        # A new profile does not enter a segment still waiting for its data (a missing count reads
        # as 0 and would match "not viewed").
        await db.apply(ProfileCreated(profile_id="p6", version=1, changed_traits={"plan": "team"}))
        assert await db.members("not_viewers") == set()

        # Profile finishes: its backfill says p1 viewed 3 (older than the message), p9 is unknown here.
        profile.build(KEY, {"p1": 3, "p2": 2, "p3": 1, "p4": 0, "p9": 4})

        async def ready() -> store.SegmentRow | None:
            found = await _segment(db, "viewers")
            return found if found.status == "ready" else None

        await wait_for(ready, timeout=60, what="the segment to be ready")

        async def others_ready() -> bool:
            return (await _segment(db, "not_viewers")).status == "ready"

        await wait_for(others_ready, timeout=60, what="the other segment to be ready")

    assert await db.members("viewers") == {"p2", "p3"}
    assert await db.members("not_viewers") == {"p1", "p4", "p5", "p6"}
    finished = await db.job(job["id"])
    assert finished["state"] == "succeeded"
    assert finished["done"] == finished["total"]
    assert finished["result"]["segments"]["viewers"] == {"entered": 2, "exited": 0}
    async with db.sessions() as session:
        p1 = await store.load_profile(session=session, profile_id="p1")
        p9 = await store.load_profile(session=session, profile_id="p9")
        traits = {t["key"]: t for t in await store.list_computed_traits(session=session)}
    assert p1 is not None
    assert p1.computed[KEY] == 0, "the fill never overwrites a value that came by message"
    assert p9 is None, "a profile segment has not heard of is left to its created message"
    assert traits[KEY]["status"] == "ready"
    assert traits[KEY]["profile_job_id"] == f"profile_job_{KEY}"
    entered = [
        e
        for e in await db.published()
        if isinstance(e.data, SegmentEntered) and e.data.segment_key == "viewers"
    ]
    assert sorted(e.data.profile_id for e in entered) == ["p2", "p3"]
    assert entered[0].data.reason["cause"] == {"type": "recompute", "trigger": "created"}

    explained = await _explain(db, "viewers", "p4")
    assert explained["building"] == []
    assert explained["matches_now"] is False
    assert explained["segment_status"] == "ready"
    assert (await _preview(db, VIEWED))["status"] == "ready"
    # Now messages move profiles in real time.
    await db.apply(ProfileUpdated(profile_id="p4", version=2, changed_computed_traits={KEY: 1}))
    assert await db.members("viewers") == {"p2", "p3", "p4"}


async def test_a_segment_on_a_building_segment_says_so_and_follows_it(db: SegmentDb) -> None:
    for name, plan in (("p1", "pro"), ("p2", "pro"), ("p3", "free")):
        await db.apply(ProfileCreated(profile_id=name, version=1, changed_traits={"plan": plan}))
    async with db.sessions() as session, session.begin():
        await handlers.create_segment(
            session=session, context=db.context, key="viewers", name="Viewers", description="", rule=VIEWED
        )
    rule = {"all": [{"segment": "viewers"}, {"trait": "plan", "op": "eq", "value": "pro"}]}
    async with db.sessions() as session, session.begin():
        await handlers.create_segment(
            session=session,
            context=db.context,
            key="pro_viewers",
            name="Pro viewers",
            description="",
            rule=rule,
        )
    preview = await _preview(db, rule)
    assert preview["building"] == ["viewers"]
    explained = await _explain(db, "pro_viewers", "p3")
    # The plan decides p3 whatever the other segment holds: false is known.
    assert explained["matches_now"] is False
    assert explained["explanation"]["conditions"][0]["state"] == "building"

    profile = FakeProfile()
    profile.build(KEY, {"p1": 2, "p3": 5})
    await db.jobs_done(profile)
    assert await db.members("viewers") == {"p1", "p3"}
    assert await db.members("pro_viewers") == {"p1"}
    assert (await _segment(db, "pro_viewers")).status == "ready"


async def test_a_changed_rule_builds_again_and_cancels_the_job_of_the_older_rule(db: SegmentDb) -> None:
    for name, plan in (("p1", "pro"), ("p2", "free")):
        await db.apply(ProfileCreated(profile_id=name, version=1, changed_traits={"plan": plan}))
    async with db.sessions() as session, session.begin():
        _, first = await handlers.create_segment(
            session=session, context=db.context, key="paying", name="Paying", description="", rule=VIEWED
        )
    async with db.sessions() as session, session.begin():
        segment, second = await handlers.update_segment(
            session=session,
            context=db.context,
            ref="paying",
            name="Paying",
            description="",
            rule={"trait": "plan", "op": "eq", "value": "pro"},
        )
    assert segment.status == "building"
    assert segment.awaiting_data is False
    await db.jobs_done()
    assert await db.members("paying") == {"p1"}
    assert (await db.job(first["id"]))["state"] == "cancelled"
    assert (await db.job(second["id"]))["result"]["outcome"] == "ready"
    assert (await _segment(db, "paying")).status == "ready"


async def test_a_job_run_again_carries_on_from_its_cursor(db: SegmentDb) -> None:
    names = [f"p{i}" for i in range(1, 8)]
    for name in names:
        await db.apply(ProfileCreated(profile_id=name, version=1, changed_traits={}))
    async with db.sessions() as session, session.begin():
        await handlers.create_segment(
            session=session, context=db.context, key="viewers", name="Viewers", description="", rule=VIEWED
        )
    profile = FakeProfile()
    profile.build(KEY, {name: 1 for name in names[::2]})  # p1, p3, p5, p7
    # The build job would do this too; done here so the fill job exists to be run step by step.
    async with db.sessions() as session, session.begin():
        await advance_traits(session=session, client=profile, keys=[KEY])  # defines it
    async with db.sessions() as session, session.begin():
        await advance_traits(session=session, client=profile, keys=[KEY])  # sees it ready
    async with db.sessions() as session:
        fill_id = (
            await session.execute(sa.select(jobs_table.c.id).where(jobs_table.c.kind == FILL_JOB))
        ).scalar_one()

    kinds = job_kinds(context=db.context, client=profile, page_size=1, batch_size=2)
    await db.run_steps(FILL_JOB, kinds[FILL_JOB], fill_id, steps=2)
    stopped = await db.job(fill_id)
    assert stopped["done"] == 2
    assert profile.pages_asked == [(KEY, None), (KEY, "p1")]

    # Run again by the runner (as after a restart): it asks for the page after the recorded cursor.
    async with db.jobs_running(profile, page_size=1, batch_size=2):

        async def ready() -> bool:
            return (await _segment(db, "viewers")).status == "ready"

        await wait_for(ready, timeout=60, what="the segment to be ready")
    assert [after for _, after in profile.pages_asked] == [None, "p1", "p3", "p5", "p7"]
    filled = await db.job(fill_id)
    assert filled["state"] == "succeeded"
    assert filled["done"] == 4, "no value counted twice"
    assert filled["result"]["filled"] == 4
    assert await db.members("viewers") == {"p1", "p3", "p5", "p7"}
