"""Built-in models on hand-made customers with known answers: RFM, lifecycle (also as time passes), clusters, CLV.

Every run is a job, run by the real job runner."""

from __future__ import annotations

import asyncio
from datetime import datetime, timedelta
from typing import Any

import pytest
from cdp_common.events import ProfileCreated, ProfileUpdated
from cdp_common.outbox import lock_outbox_writes
from cdp_segment import handlers, store
from cdp_segment.domain.clv import BgNbd, simulate_customers

from .conftest import SegmentDb

pytestmark = pytest.mark.integration

# name: (days since last order, orders); revenue is 100 per order, so M equals F.
RFM_CUSTOMERS = {
    "c0": (1, 9, "champions"),
    "c1": (2, 1, "new"),
    "c2": (10, 5, "potential_loyalists"),
    "c3": (20, 2, "promising"),
    "c4": (40, 6, "need_attention"),
    "c5": (60, 7, "loyal"),
    "c6": (100, 8, "at_risk"),
    "c7": (150, 3, "hibernating"),
    "c8": (300, 10, "cant_lose"),
    "c9": (400, 4, "lost"),
}


def orders(
    now: datetime, *, first_days: float, last_days: float, count: int, revenue: float, recent: int = 0
) -> dict[str, Any]:
    """Computed traits as profile publishes them: its built-ins and the counts segment defined."""
    return {
        "orders": count,
        "net_revenue": revenue,
        "seg_orders_count": count,
        "seg_orders_revenue": revenue,
        "seg_orders_last_30d": recent,
        "first_seen": (now - timedelta(days=first_days)).isoformat(),
        "last_order_date": (now - timedelta(days=last_days)).date().isoformat(),
    }


async def with_builtins(db: SegmentDb) -> None:
    async with db.sessions() as session, session.begin():
        created = await handlers.ensure_builtin_segments(session=session)
    assert len(created) == 15


async def test_rfm_scores_and_named_segments(db: SegmentDb) -> None:
    await with_builtins(db)
    now = db.clock()
    for name, (recency, count, _) in RFM_CUSTOMERS.items():
        computed = orders(now, first_days=500, last_days=recency, count=count, revenue=100.0 * count)
        await db.apply(ProfileCreated(profile_id=name, version=1, changed_computed_traits=computed))
    await db.apply(ProfileCreated(profile_id="browser", version=1, changed_traits={"plan": "free"}))

    job = await db.run_model("rfm")
    result = job["result"]

    for name, (_, _, expected) in RFM_CUSTOMERS.items():
        assert await db.members(f"rfm_{expected}") == {name}, expected
    assert result["summary"]["segments"] == {expected: 1 for _, _, expected in RFM_CUSTOMERS.values()}
    async with db.sessions() as session:
        champion = await store.load_profile(session=session, profile_id="c0")
        browser = await store.load_profile(session=session, profile_id="browser")
    assert champion is not None
    assert champion.model["rfm"] == {"r": 5, "f": 5, "m": 5, "score": "555", "segment": "champions"}
    assert browser is not None
    assert "rfm" not in browser.model


async def test_rfm_monetary_is_the_net_revenue_in_the_reporting_currency(db: SegmentDb) -> None:
    """Not the sum of order totals: those add kronor to euros and ignore refunds and cancellations."""
    await with_builtins(db)
    now = db.clock()
    # name: (net revenue in EUR, sum of order totals as sent, in whatever currency)
    spent = {
        "m1": (20.0, 9000.0),
        "m2": (40.0, 700.0),
        "m3": (60.0, 500.0),
        "m4": (80.0, 300.0),
        "m5": (99.0, 99.0),
    }
    for name, (net, totals) in spent.items():
        computed = {**orders(now, first_days=90, last_days=3, count=1, revenue=totals), "net_revenue": net}
        await db.apply(ProfileCreated(profile_id=name, version=1, changed_computed_traits=computed))
    await db.run_model("rfm")
    scores = {}
    async with db.sessions() as session:
        for name in spent:
            profile = await store.load_profile(session=session, profile_id=name)
            assert profile is not None
            scores[name] = profile.model["rfm"]["m"]
    assert [scores[name] for name in sorted(spent)] == [1, 2, 3, 4, 5]


async def test_a_model_round_that_changes_no_profile_leaves_the_outbox_writers_alone(db: SegmentDb) -> None:
    """With nothing to change, the round neither waits for nor holds the outbox write lock."""
    await with_builtins(db)
    now = db.clock()
    computed = orders(now, first_days=500, last_days=1, count=9, revenue=900.0)
    await db.apply(ProfileCreated(profile_id="c0", version=1, changed_computed_traits=computed))
    assert (await db.run_model("rfm"))["result"]["profiles_changed"] == 1
    published = len(await db.published())

    async with db.sessions() as writer, writer.begin():
        await lock_outbox_writes(session=writer)
        again = (await asyncio.wait_for(db.run_model("rfm"), timeout=30))["result"]
    assert again["profiles_changed"] == 0
    assert again["segments"] == {}
    assert len(await db.published()) == published
    assert await db.members("rfm_champions") == {"c0"}


async def test_lifecycle_stages_in_real_time_and_as_time_passes(db: SegmentDb) -> None:
    await with_builtins(db)
    now = db.clock()
    customers = {
        "fresh": orders(now, first_days=10, last_days=5, count=1, revenue=20, recent=1),
        "regular": orders(now, first_days=300, last_days=20, count=6, revenue=300, recent=1),
        "fading": orders(now, first_days=300, last_days=120, count=3, revenue=90),
        "gone": orders(now, first_days=400, last_days=200, count=2, revenue=50),
    }
    for name, computed in customers.items():
        await db.apply(ProfileCreated(profile_id=name, version=1, changed_computed_traits=computed))
    assert await db.members("lifecycle_new") == {"fresh"}
    assert await db.members("lifecycle_active") == {"regular"}
    assert await db.members("lifecycle_at_risk") == {"fading"}
    assert await db.members("lifecycle_churned") == {"gone"}

    # The churned customer orders again: reactivated at once.
    comeback = {
        "last_order_date": (now - timedelta(days=1)).date().isoformat(),
        "seg_orders_count": 3,
        "seg_orders_last_30d": 1,
    }
    await db.apply(ProfileUpdated(profile_id="gone", version=2, changed_computed_traits=comeback))
    assert await db.members("lifecycle_reactivated") == {"gone"}
    assert await db.members("lifecycle_churned") == set()

    # 100 days later, without any event, the scheduler moves everyone on (profile has
    # meanwhile expired the 30-day counts).
    db.clock.advance(days=100)
    for version, name in enumerate(("fresh", "regular", "gone"), start=3):
        await db.apply(
            ProfileUpdated(
                profile_id=name, version=version, changed_computed_traits={"seg_orders_last_30d": 0}
            )
        )
    queued = await db.tick()
    assert set(queued) == {"lifecycle", "rfm", "clusters", "clv"}
    await db.jobs_done()
    assert await db.members("lifecycle_at_risk") == {"fresh", "regular", "gone"}
    assert await db.members("lifecycle_churned") == {"fading"}
    assert await db.members("lifecycle_new") == set()
    history = [
        e.data
        for e in await db.published()
        if e.data.profile_id == "fading" and e.data.segment_key.startswith("lifecycle_")
    ]
    assert {(type(e).__name__, e.segment_key) for e in history[-2:]} == {
        ("SegmentEntered", "lifecycle_churned"),
        ("SegmentExited", "lifecycle_at_risk"),
    }
    assert history[-1].reason["cause"] == {"type": "recompute", "trigger": "model:lifecycle"}


async def test_clock_conditions_are_re_evaluated_by_the_scheduler(db: SegmentDb) -> None:
    async with db.sessions() as session, session.begin():
        await handlers.create_segment(
            session=session,
            context=db.context,
            key="recent_signups",
            name="Recent sign-ups",
            description="",
            rule={"trait": "signed_up_at", "op": "within_last", "value": {"days": 7}},
        )
    signed_up = (db.clock() - timedelta(days=2)).isoformat()
    await db.apply(ProfileCreated(profile_id="p1", version=1, changed_traits={"signed_up_at": signed_up}))
    assert await db.members("recent_signups") == {"p1"}
    await db.jobs_done()
    db.clock.advance(days=4)
    assert "clock_segments" in await db.tick()
    await db.jobs_done()
    assert await db.members("recent_signups") == {"p1"}
    db.clock.advance(days=2)
    assert "clock_segments" in await db.tick()
    await db.jobs_done()
    assert await db.members("recent_signups") == set()
    exited = [e.data for e in await db.published() if e.data.segment_key == "recent_signups"][-1]
    assert type(exited).__name__ == "SegmentExited"
    assert exited.reason["cause"] == {"type": "recompute", "trigger": "clock"}


async def test_clusters_and_customer_value(db: SegmentDb) -> None:
    now = db.clock()
    simulated, _ = simulate_customers(
        count=80, calibration_days=365, holdout_days=1, params=BgNbd(r=0.6, alpha=30.0, a=0.8, b=3.0), seed=5
    )
    for i in range(80):
        repeat = int(simulated.frequency[i])
        age = float(simulated.age[i])
        computed = orders(
            now,
            first_days=age,
            last_days=age - float(simulated.recency[i]),
            count=repeat + 1,
            revenue=round(float(simulated.monetary[i] or 30.0) * (repeat + 1), 2),
        )
        await db.apply(ProfileCreated(profile_id=f"s{i:02d}", version=1, changed_computed_traits=computed))
    clusters = (await db.run_model("clusters", cluster_count=3))["result"]
    found = clusters["summary"]["clusters"]
    assert [c["id"] for c in found] == [0, 1, 2]
    assert sum(c["size"] for c in found) == 80
    assert all(" against " in c["description"] for c in found)

    value = (await db.run_model("clv"))["result"]
    assert value["summary"]["customers"] == 80
    assert set(value["parameters"]["bgnbd"]) == {"r", "alpha", "a", "b"}
    async with db.sessions() as session:
        profile = await store.load_profile(session=session, profile_id="s00")
    assert profile is not None
    assert 0 <= profile.model["clv"]["churn_probability"] <= 1
    assert profile.model["clv"]["value"] >= 0
    assert profile.model["cluster"]["id"] in {0, 1, 2}
