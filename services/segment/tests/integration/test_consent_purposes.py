"""Consent purposes enforced by segment: without profiling a person is in no segment and has no model
results, without analytics they are left out of the runs' summaries; opt-in mode from the environment."""

from __future__ import annotations

from datetime import UTC, datetime
from typing import Any

import pytest
import sqlalchemy as sa
from cdp_common.events import (
    ConsentDenied,
    ConsentGranted,
    ConsentWithdrawn,
    ProfileCreated,
    ProfileUpdated,
    SegmentExited,
)
from cdp_common.purposes import PROFILING, PurposePolicy
from cdp_segment import handlers, store
from cdp_segment.compiler import members_query
from cdp_segment.domain.rules import parse_rule
from cdp_segment.handlers import SegmentContext

from .conftest import FakeProfile, SegmentDb
from .test_models import orders, with_builtins
from .test_realtime import define

pytestmark = pytest.mark.integration

PRO = {"trait": "plan", "op": "eq", "value": "pro"}


def decision(
    kind: type[Any], profile_id: str, *, purpose: str = PROFILING, channel: str = "email", day: int = 1
) -> Any:
    return kind(
        profile_id=profile_id,
        purpose=purpose,
        channel=channel,
        at=datetime(2025, 6, day, tzinfo=UTC),
        source="preference-centre",
    )


async def explain(db: SegmentDb, key: str, profile_id: str) -> dict[str, Any]:
    async with db.sessions() as session:
        found = await handlers.explain_membership(
            session=session, context=db.context, ref=key, profile_id=profile_id
        )
    assert found is not None
    return found


async def models_of(db: SegmentDb, profile_id: str) -> dict[str, Any]:
    async with db.sessions() as session:
        row = await store.load_profile(session=session, profile_id=profile_id)
    assert row is not None
    return row.model


async def test_a_withdrawal_of_profiling_takes_a_person_out_of_every_segment_until_they_grant_again(
    db: SegmentDb,
) -> None:
    await with_builtins(db)
    await define(db, "pro_users", PRO)
    await db.jobs_done(FakeProfile())
    now = db.clock()
    active = orders(now, first_days=100, last_days=5, count=3, revenue=300.0, recent=1)
    for name in ("ada", "bob"):
        await db.apply(
            ProfileCreated(
                profile_id=name, version=1, changed_traits={"plan": "pro"}, changed_computed_traits=active
            )
        )
    assert await db.members("pro_users") == {"ada", "bob"}
    assert await db.members("lifecycle_active") == {"ada", "bob"}

    withdrawal = await db.apply(decision(ConsentWithdrawn, "ada"))
    assert await db.members("pro_users") == {"bob"}
    assert await db.members("lifecycle_active") == {"bob"}
    assert await models_of(db, "ada") == {}
    exits = [e.data for e in await db.published() if isinstance(e.data, SegmentExited)]
    assert sorted(e.segment_key for e in exits) == ["lifecycle_active", "pro_users"]
    for exited in exits:
        assert exited.profile_id == "ada"
        assert exited.reason["cause"]["why"] == "consent"
        assert exited.reason["cause"]["event_id"] == withdrawal.id
        assert exited.reason["conditions"] == {
            "type": "consent_withheld",
            "purpose": PROFILING,
            "result": False,
        }
    async with db.sessions() as session:
        history = await store.page_history(
            session=session, segment_id=None, profile_id="ada", before_id=None, limit=10
        )
    assert [(h["change"], h["reason"]["cause"].get("why")) for h in history][:2] == [
        ("exited", "consent")
    ] * 2

    explained = await explain(db, "pro_users", "ada")
    assert explained["member"] is False
    assert explained["matches_now"] is False
    assert explained["excluded"] == {
        "reason": "consent",
        "purpose": PROFILING,
        "basis": "legitimate_interest",
        "decisions": {"profiling_segmentation:email": "withdrawn"},
    }
    assert explained["explanation"]["conditions"][0]["type"] == "consent_withheld"
    # The rule alone would still match: the explanation says so beside the consent.
    assert explained["explanation"]["conditions"][1]["result"] is True
    assert (await explain(db, "pro_users", "bob"))["excluded"] is None

    # While excluded, no change of theirs puts them in a segment or gives them a stage.
    await db.apply(
        ProfileUpdated(
            profile_id="ada",
            version=2,
            changed_traits={"plan": "pro", "tier": "gold"},
            changed_computed_traits=active,
        )
    )
    assert "ada" not in await db.members("pro_users")
    assert await models_of(db, "ada") == {}

    # A grant on the same channel replaces the withdrawal: they are evaluated again and come back.
    published = len(await db.published())
    await db.apply(decision(ConsentGranted, "ada", day=3))
    assert await db.members("pro_users") == {"ada", "bob"}
    assert await db.members("lifecycle_active") == {"ada", "bob"}
    back = [e.data for e in (await db.published())[published:]]
    assert sorted((type(e).__name__, e.segment_key) for e in back) == [
        ("SegmentEntered", "lifecycle_active"),
        ("SegmentEntered", "pro_users"),
    ]

    # A denial on any other channel is enough under legitimate interest.
    await db.apply(decision(ConsentDenied, "ada", channel="push", day=4))
    assert await db.members("pro_users") == {"bob"}


async def test_a_person_without_profiling_gets_no_rfm_or_clv_score_and_one_without_analytics_is_not_counted(
    db: SegmentDb,
) -> None:
    await with_builtins(db)
    now = db.clock()
    for i in range(30):
        count = 1 + i % 6
        computed = orders(
            now, first_days=300 + 5 * i, last_days=(37 * i) % 280, count=count, revenue=40.0 * count + i
        )
        await db.apply(ProfileCreated(profile_id=f"s{i:02d}", version=1, changed_computed_traits=computed))
    first = (await db.run_model("rfm"))["result"]
    assert sum(first["summary"]["segments"].values()) == 30
    assert "rfm" in await models_of(db, "s00")
    rfm_segments = [key for key, _, _ in handlers.BUILTIN_SEGMENTS if key.startswith("rfm_")]
    assert any(["s00" in await db.members(key) for key in rfm_segments])

    # s00 refuses profiling, s01 analytics (the consent service publishes both).
    await db.apply(decision(ConsentWithdrawn, "s00"))
    await db.apply(decision(ConsentDenied, "s01", purpose="analytics"))
    assert not any(["s00" in await db.members(key) for key in rfm_segments])

    rfm = (await db.run_model("rfm"))["result"]
    clv = (await db.run_model("clv"))["result"]
    assert "rfm" not in await models_of(db, "s00")
    assert "clv" not in await models_of(db, "s00")
    assert {"rfm", "clv"} <= set(await models_of(db, "s01"))
    assert not any(["s00" in await db.members(key) for key in rfm_segments])
    # The summaries count neither: s00 is not scored, s01 is scored but kept out of the figures.
    assert rfm["parameters"]["customers"] == 29
    assert sum(rfm["summary"]["segments"].values()) == 28
    assert clv["summary"]["customers"] == 28

    # Granted again: the next run scores them.
    await db.apply(decision(ConsentGranted, "s00", day=5))
    await db.run_model("rfm")
    assert "rfm" in await models_of(db, "s00")


async def test_opt_in_set_in_the_environment_excludes_a_person_until_they_grant(
    db: SegmentDb, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("CDP_OPT_IN_PURPOSES", "profiling_segmentation")
    db.context = SegmentContext(segments_topic=db.context.segments_topic, clock=db.clock)
    await db.apply(ProfileCreated(profile_id="granted", version=1, changed_traits={"plan": "pro"}))
    await db.apply(ProfileCreated(profile_id="silent", version=1, changed_traits={"plan": "pro"}))
    await db.apply(decision(ConsentGranted, "granted"))
    # The segment's build (the batch path) takes only the one who granted.
    await define(db, "pro_users", PRO)
    await db.jobs_done(FakeProfile())
    assert await db.members("pro_users") == {"granted"}
    explained = await explain(db, "pro_users", "silent")
    assert explained["excluded"] == {
        "reason": "consent",
        "purpose": PROFILING,
        "basis": "opt_in",
        "decisions": {},
    }

    # A new person is in no segment until they grant; then they enter at once.
    await db.apply(ProfileCreated(profile_id="newcomer", version=1, changed_traits={"plan": "pro"}))
    assert await db.members("pro_users") == {"granted"}
    await db.apply(decision(ConsentGranted, "newcomer", channel="push"))
    assert await db.members("pro_users") == {"granted", "newcomer"}


async def test_a_restart_with_a_purpose_switched_to_opt_in_takes_members_without_a_grant_out(
    db: SegmentDb,
) -> None:
    legitimate, opt_in = PurposePolicy(), PurposePolicy(opt_in=frozenset({PROFILING}))
    async with db.sessions() as session, session.begin():
        await handlers.ensure_builtin_segments(session=session, purposes=legitimate)
    await define(db, "pro_users", PRO)
    await db.jobs_done(FakeProfile())
    await db.apply(ProfileCreated(profile_id="silent", version=1, changed_traits={"plan": "pro"}))
    await db.apply(ProfileCreated(profile_id="granted", version=1, changed_traits={"plan": "pro"}))
    await db.apply(decision(ConsentGranted, "granted"))
    assert await db.members("pro_users") == {"silent", "granted"}

    # The service starts again with the same bases: nothing to rebuild.
    async with db.sessions() as session, session.begin():
        await handlers.ensure_builtin_segments(session=session, purposes=legitimate)
        segment = await store.get_segment(session=session, ref="pro_users")
    assert segment is not None
    assert segment.status == "ready"

    # It starts with profiling on opt-in: every segment is built again under the new basis.
    db.context = SegmentContext(segments_topic=db.context.segments_topic, clock=db.clock, purposes=opt_in)
    async with db.sessions() as session, session.begin():
        await handlers.ensure_builtin_segments(session=session, purposes=opt_in)
    await db.jobs_done(FakeProfile())
    assert await db.members("pro_users") == {"granted"}
    exited = [e.data for e in await db.published() if isinstance(e.data, SegmentExited)]
    assert exited[-1].profile_id == "silent"
    assert exited[-1].reason == {
        "cause": {"type": "recompute", "trigger": "consent purposes", "why": "consent"},
        "conditions": {"type": "consent_withheld", "purpose": PROFILING, "result": False},
    }


CONSENT_CASES: dict[str, dict[str, Any]] = {
    "none": {},
    "granted": {"profiling_segmentation:email": "granted"},
    "denied": {"profiling_segmentation:sms": "denied"},
    "mixed": {"profiling_segmentation:email": "granted", "profiling_segmentation:push": "withdrawn"},
    "other_purpose": {"analytics:email": "withdrawn", "personalisation:email": "denied"},
    "lookalike": {"profiling_segmentation_extra:email": "denied"},
}


@pytest.mark.parametrize("opt_in", [frozenset(), frozenset({PROFILING})])
async def test_the_sql_and_the_python_rule_exclude_the_same_people(
    db: SegmentDb, opt_in: frozenset[str]
) -> None:
    policy = PurposePolicy(opt_in=opt_in)
    async with db.sessions() as session, session.begin():
        for name, statuses in CONSENT_CASES.items():
            await session.execute(
                sa.insert(store.profiles).values(
                    profile_id=name,
                    version=1,
                    traits={"plan": "pro"},
                    computed={},
                    model={},
                    consents={
                        k: {"status": s, "at": "2025-06-01T00:00:00+00:00"} for k, s in statuses.items()
                    },
                )
            )
    async with db.sessions() as session:
        rows = await session.execute(members_query(parse_rule(PRO).root, db.clock(), policy=policy))
        in_sql = {str(row[0]) for row in rows}
    in_python = {name for name, statuses in CONSENT_CASES.items() if not policy.excluded(PROFILING, statuses)}
    assert in_sql == in_python
    assert ("none" in in_sql) is not bool(opt_in)
    assert "denied" not in in_sql
    assert "mixed" not in in_sql
