"""Rules on account traits: the person's accounts come on profile's change messages; a member of a
Retail account enters, leaves when the account's industry changes, and the SQL of batch builds
means exactly what the real-time evaluation means."""

from __future__ import annotations

from typing import Any

import pytest
from cdp_common.events import AccountOfProfile, ProfileCreated, ProfileUpdated, SegmentEntered, SegmentExited
from cdp_segment import handlers, store
from cdp_segment.compiler import members_query
from cdp_segment.domain.evaluation import ProfileFacts, evaluate
from cdp_segment.domain.rules import RuleError, parse_rule

from .conftest import FakeProfile, SegmentDb

pytestmark = pytest.mark.integration

RETAIL = {"account_trait": "industry", "op": "eq", "value": "Retail"}


def accounts(*traits: dict[str, Any]) -> list[AccountOfProfile]:
    return [AccountOfProfile(group_id=f"g{i}", traits=t) for i, t in enumerate(traits)]


async def define(db: SegmentDb, key: str, rule: dict[str, Any]) -> dict[str, Any]:
    async with db.sessions() as session, session.begin():
        _, job = await handlers.create_segment(
            session=session, context=db.context, key=key, name=key, description="", rule=rule
        )
    return job


async def test_a_member_of_a_retail_account_enters_and_leaves_when_its_industry_changes(
    db: SegmentDb,
) -> None:
    await define(db, "retail_buyers", RETAIL)
    await db.jobs_done()
    await db.apply(
        ProfileCreated(profile_id="p1", version=1, accounts=accounts({"name": "Acme", "industry": "Retail"}))
    )
    await db.apply(ProfileCreated(profile_id="p2", version=1, changed_traits={"plan": "pro"}))
    assert await db.members("retail_buyers") == {"p1"}
    # Another change that leaves the accounts alone keeps the person in.
    await db.apply(ProfileUpdated(profile_id="p1", version=2, changed_traits={"first_name": "Ada"}))
    assert await db.members("retail_buyers") == {"p1"}
    await db.apply(
        ProfileUpdated(
            profile_id="p1", version=3, accounts=accounts({"name": "Acme", "industry": "Wholesale"})
        )
    )
    assert await db.members("retail_buyers") == set()
    # A person of several accounts is in when one of them matches.
    await db.apply(
        ProfileUpdated(
            profile_id="p2", version=2, accounts=accounts({"industry": "Banking"}, {"industry": "Retail"})
        )
    )
    assert await db.members("retail_buyers") == {"p2"}
    changes = [e.data for e in await db.published() if e.data.segment_key == "retail_buyers"]
    assert [(type(c), c.profile_id) for c in changes] == [
        (SegmentEntered, "p1"),
        (SegmentExited, "p1"),
        (SegmentEntered, "p2"),
    ]
    assert changes[1].reason["cause"]["changed"] == ["account:*"]
    assert changes[1].reason["conditions"] == {
        "type": "account_trait",
        "label": "industry",
        "path": "industry",
        "op": "eq",
        "expected": "Retail",
        "result": False,
    }
    async with db.sessions() as session:
        why = await handlers.explain_membership(
            session=session, context=db.context, ref="retail_buyers", profile_id="p1"
        )
    assert why is not None
    assert why["explanation"]["actual"] == ["Wholesale"]


async def test_a_segment_built_in_batch_finds_the_members_of_accounts(db: SegmentDb) -> None:
    await db.apply(ProfileCreated(profile_id="a", version=1, accounts=accounts({"industry": "Retail"})))
    await db.apply(ProfileCreated(profile_id="b", version=1, accounts=accounts({"industry": "Banking"})))
    await db.apply(ProfileCreated(profile_id="c", version=1))
    await define(db, "retail_buyers", RETAIL)
    await define(db, "no_account", {"account_trait": "name", "op": "not_exists"})
    await db.jobs_done(FakeProfile())
    assert await db.members("retail_buyers") == {"a"}
    assert await db.members("no_account") == {"a", "b", "c"}


ACCOUNT_VALUES: list[Any] = [
    None, 0, 120, 120.0, 5000, True, "", "Retail", "retail", "Retail & Wholesale", ["saas", "b2b"], {"tier": 1},
]  # fmt: skip

ACCOUNT_RULES: list[dict[str, Any]] = [
    *(
        {"account_trait": "v", "op": op, "value": value}
        for op, value in [
            ("eq", "Retail"), ("eq", 120), ("neq", "Retail"), ("gt", 100), ("between", [0, 200]),
            ("in", ["Retail", 120]), ("not_in", ["Retail"]), ("contains", "Retail"), ("contains", "b2b"),
            ("starts_with", "Ret"), ("regex", "(?i)^retail$"),
        ]
    ),
    {"account_trait": "v", "op": "exists"},
    {"account_trait": "v", "op": "not_exists"},
    {"account_trait": "v.tier", "op": "eq", "value": 1},
    {"not": RETAIL | {"account_trait": "v"}},
]  # fmt: skip


async def test_every_account_condition_means_the_same_in_sql(db: SegmentDb) -> None:
    for i, value in enumerate(ACCOUNT_VALUES):
        # Alone, beside an account without the trait, and beside one that is Retail.
        for j, others in enumerate(([], [{"name": "x"}], [{"v": "Retail"}])):
            await db.apply(
                ProfileCreated(profile_id=f"p{i}-{j}", version=1, accounts=accounts({"v": value}, *others))
            )
    await db.apply(ProfileCreated(profile_id="none", version=1))
    for rule in ACCOUNT_RULES:
        parsed = parse_rule(rule).root
        async with db.sessions() as session:
            in_sql = set((await session.execute(members_query(parsed, db.clock()))).scalars())
            rows = (await session.execute(store.profiles.select().where(store.profiles.c.version > 0))).all()
        in_python = {
            row.profile_id
            for row in rows
            if evaluate(parsed, ProfileFacts(accounts=tuple(a["traits"] for a in row.accounts)), db.clock())
        }
        assert in_sql == in_python, rule
        assert in_python, rule


def test_an_account_rule_is_checked_like_any_condition() -> None:
    assert parse_rule(RETAIL).dependencies == frozenset({"account:industry"})
    with pytest.raises(RuleError) as bad:
        parse_rule({"account_trait": "industry", "op": "near", "value": "Retail"})
    assert bad.value.where == "rule.op"
    with pytest.raises(RuleError):
        parse_rule({"account_trait": "", "op": "exists"})
