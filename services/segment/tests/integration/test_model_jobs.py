"""Model runs, the clock recompute and deletions as jobs over a base of several steps: a run's
memberships equal those of one pass over the whole base, an interrupted run finishes with the same
result, the scheduler never queues two runs of one model, a deleted segment's members leave through
its job, and a preview past its time answers an estimate."""

from __future__ import annotations

import random
from datetime import timedelta
from typing import Any

import pytest
import sqlalchemy as sa
from cdp_common.events import ProfileCreated, SegmentExited
from cdp_segment import handlers
from cdp_segment.domain.rfm import named_segment, quintile_scores
from cdp_segment.models import MODEL_JOB, order_features, submit_model_run
from cdp_segment.store.models import OrderAggregates

from .conftest import SegmentDb
from .test_models import orders, with_builtins

pytestmark = pytest.mark.integration

CUSTOMERS = 240
STEP = 35


async def _shop(db: SegmentDb) -> dict[str, dict[str, Any]]:
    """Create customers with many ties (whole days, few order counts) and some who never ordered."""
    await with_builtins(db)
    rng = random.Random(11)
    now = db.clock()
    made: dict[str, dict[str, Any]] = {}
    for i in range(CUSTOMERS):
        name = f"c{i:04d}"
        if i % 9 == 0:
            computed: dict[str, Any] = {"first_seen": (now - timedelta(days=40)).isoformat()}
        else:
            count = rng.choice([1, 1, 2, 3, 5, 8])
            computed = orders(
                now,
                first_days=rng.randint(200, 700),
                last_days=rng.randint(0, 199),
                count=count,
                revenue=rng.choice([25.0, 60.0, 99.5]) * count,
            )
        made[name] = computed
        await db.apply(ProfileCreated(profile_id=name, version=1, changed_computed_traits=computed))
    return made


def _expected_rfm(db: SegmentDb, customers: dict[str, dict[str, Any]]) -> dict[str, set[str]]:
    """Score every customer in one pass over the whole base, as a run in one transaction did."""
    now = db.clock()
    buyers = [
        f
        for f in (
            order_features(
                OrderAggregates(
                    profile_id=name,
                    orders=c.get("orders"),
                    revenue=c.get("net_revenue"),
                    last_order=c.get("last_order_date"),
                    first_seen=c.get("first_seen"),
                ),
                now,
            )
            for name, c in sorted(customers.items())
        )
        if f is not None
    ]
    recency = quintile_scores([-c.recency_days for c in buyers])
    frequency = quintile_scores([c.orders for c in buyers])
    monetary = quintile_scores([c.revenue for c in buyers])
    members: dict[str, set[str]] = {}
    for c, r, f, m in zip(buyers, recency, frequency, monetary, strict=True):
        members.setdefault(f"rfm_{named_segment(r, f, m)}", set()).add(c.profile_id)
    return members


async def _rfm_members(db: SegmentDb) -> dict[str, set[str]]:
    found = {}
    for key in handlers.BUILTIN_SEGMENTS:
        if key[0].startswith("rfm_"):
            members = await db.members(key[0])
            if members:
                found[key[0]] = members
    return found


async def test_a_model_run_is_a_job_whose_memberships_equal_one_pass_over_the_base(db: SegmentDb) -> None:
    customers = await _shop(db)
    expected = _expected_rfm(db, customers)
    assert len(expected) >= 5, "the shop spreads over several named segments"

    job = await db.run_model("rfm", model_batch_size=STEP)

    assert job["done"] == job["total"] == 2 * CUSTOMERS, "extracted and scored, each profile once"
    assert await _rfm_members(db) == expected
    assert job["result"]["profiles_changed"] == sum(len(v) for v in expected.values())
    assert job["result"]["summary"]["segments"] == {k[4:]: len(v) for k, v in sorted(expected.items())}
    # The steps' ranges are done with: nothing is left between fit and scoring.
    async with db.sessions() as session:
        left = await session.scalar(sa.text("SELECT count(*) FROM model_features"))
    assert left == 0


async def test_a_model_job_interrupted_after_some_steps_finishes_with_the_same_result(db: SegmentDb) -> None:
    customers = await _shop(db)
    expected = _expected_rfm(db, customers)
    async with db.sessions() as session, session.begin():
        job, new = await submit_model_run(session=session, name="rfm", at=db.clock())
    assert new
    kind = db.kinds(model_batch_size=STEP)[MODEL_JOB]
    # Through the extraction and the fit, and into the scoring.
    steps = -(-CUSTOMERS // STEP) + 1 + 2
    await db.run_steps(MODEL_JOB, kind, job["id"], steps=steps)
    stopped = await db.job(job["id"])
    assert 0 < stopped["done"] < 2 * CUSTOMERS
    partly = await _rfm_members(db)
    assert 0 < sum(len(v) for v in partly.values()) < sum(len(v) for v in expected.values())

    await db.jobs_done(model_batch_size=STEP)

    finished = await db.job(job["id"])
    assert finished["state"] == "succeeded"
    assert finished["done"] == finished["total"] == 2 * CUSTOMERS
    assert await _rfm_members(db) == expected
    entered = [
        (e.data.profile_id, e.data.segment_key)
        for e in await db.published()
        if type(e.data).__name__ == "SegmentEntered" and e.data.segment_key.startswith("rfm_")
    ]
    assert len(entered) == len(set(entered)) == sum(len(v) for v in expected.values()), "nobody entered twice"


async def test_clusters_and_value_fitted_on_a_sample_score_every_customer(db: SegmentDb) -> None:
    customers = await _shop(db)
    buyers = {name for name, c in customers.items() if "seg_orders_count" in c}
    clusters = await db.run_model("clusters", model_batch_size=STEP, model_sample_size=100, cluster_count=3)
    value = await db.run_model("clv", model_batch_size=STEP, model_sample_size=100)
    assert clusters["result"]["parameters"]["fitted_on"] == 100
    assert sum(c["size"] for c in clusters["result"]["summary"]["clusters"]) == len(buyers)
    assert value["result"]["parameters"]["fitted_on"] == 100
    assert value["result"]["summary"]["customers"] == len(buyers)
    async with db.sessions() as session:
        scored = await session.execute(
            sa.text("SELECT profile_id FROM known_profiles WHERE model ? 'cluster' AND model ? 'clv'")
        )
        assert set(scored.scalars()) == buyers


async def test_the_scheduler_never_queues_two_runs_of_one_model(db: SegmentDb) -> None:
    await with_builtins(db)
    first = await db.tick()
    assert set(first) == {"lifecycle", "rfm", "clusters", "clv"}
    db.clock.advance(hours=2)
    assert await db.tick() == {}, "the runs queued before are still queued"
    async with db.sessions() as session, session.begin():
        asked, new = await submit_model_run(session=session, name="rfm", at=db.clock())
    assert not new
    assert asked["id"] == first["rfm"]["id"]
    await db.jobs_done()
    assert set(await db.tick()) == {"lifecycle", "rfm", "clusters", "clv"}, "due: they ran at 0h"
    await db.jobs_done()
    db.clock.advance(minutes=10)
    assert set(await db.tick()) == {"lifecycle"}, "the other models ran 10 minutes ago"


async def test_a_deleted_segment_is_gone_at_once_and_its_members_leave_through_its_job(db: SegmentDb) -> None:
    for i in range(25):
        await db.apply(ProfileCreated(profile_id=f"p{i:02d}", version=1, changed_traits={"plan": "pro"}))
    async with db.sessions() as session, session.begin():
        await handlers.create_segment(
            session=session,
            context=db.context,
            key="pros",
            name="Pros",
            description="",
            rule={"trait": "plan", "op": "eq", "value": "pro"},
        )
    await db.jobs_done()
    assert len(await db.members("pros")) == 25

    async with db.sessions() as session, session.begin():
        job = await handlers.delete_segment(session=session, ref="pros")
    assert job["state"] == "queued"
    async with db.sessions() as session:
        with pytest.raises(handlers.SegmentNotFound):
            await handlers.delete_segment(session=session, ref="pros")
    assert len(await db.members("pros")) == 25, "members leave through the job, not the request"

    await db.jobs_done(batch_size=10)
    finished = await db.job(job["id"])
    assert finished["done"] == finished["total"] == 25
    assert finished["result"] == {"exited": 25}
    assert await db.members("pros") == set()
    exits = [e.data for e in await db.published() if isinstance(e.data, SegmentExited)]
    assert sorted(e.profile_id for e in exits) == [f"p{i:02d}" for i in range(25)]
    assert {e.reason["cause"]["trigger"] for e in exits} == {"deleted"}


async def test_a_preview_past_its_time_answers_an_estimate_and_a_sample(db: SegmentDb) -> None:
    async with db.sessions() as session, session.begin():
        await session.execute(
            sa.text(
                """
                INSERT INTO known_profiles (profile_id, version, traits)
                SELECT 'bulk' || lpad(i::text, 6, '0'), 1,
                       jsonb_build_object('email', 'someone' || i || CASE WHEN i % 4 = 0 THEN '@shop.example'
                                                                          ELSE '@mail.example' END)
                  FROM generate_series(1, 40000) AS i
                """
            )
        )
    rule = {"trait": "email", "op": "regex", "value": "^some.*[0-9]+@shop\\.example$"}
    async with db.sessions() as session:
        exact = await handlers.preview_segment(session=session, context=db.context, rule=rule, sample_size=3)
    assert exact["exact"] is True
    assert exact["size"] == exact["estimate"] == 10_000
    assert exact["sample"] == ["bulk000004", "bulk000008", "bulk000012"]

    async with db.sessions() as session:
        bounded = await handlers.preview_segment(
            session=session, context=db.context, rule=rule, sample_size=3, timeout_s=0.001
        )
    assert bounded["size"] is None
    assert bounded["exact"] is False
    assert bounded["estimate"] == pytest.approx(10_000, rel=0.2)
    assert len(bounded["sample"]) == 3
    assert all(int(p[4:]) % 4 == 0 for p in bounded["sample"])
