"""Batch membership in SQL equals the real-time path, condition by condition and on a synthetic shop."""

from __future__ import annotations

import random
from datetime import timedelta
from typing import Any

import pytest
from cdp_common.events import ConsentDenied, ConsentGranted, ProfileCreated, ProfileUpdated
from cdp_segment import handlers, store
from cdp_segment.batch import recompute_segment
from cdp_segment.compiler import members_query
from cdp_segment.domain.evaluation import ProfileFacts, evaluate
from cdp_segment.domain.rules import parse_rule

from .conftest import SegmentDb

pytestmark = pytest.mark.integration

TRICKY_VALUES: list[Any] = [
    None, 0, 1, 1.0, 50, 50.5, -3, True, False, "", "pro", "Pro", "PRO plan", "ada@gmail.com", "+4930123",
    "10115", "2025-06-14", "2025-06-14T10:00:00Z", "2024-01-01T00:00:00+02:00", "2025-02-30", "yesterday",
    ["vip", "new"], [1, 2], {"nested": 1}, "ord-123", "München",
]  # fmt: skip

RULES: list[dict[str, Any]] = [
    *(
        {"trait": "v", "op": op, "value": value}
        for op, value in [
            ("eq", "pro"), ("eq", 1), ("eq", True), ("neq", "pro"), ("lt", 50), ("lte", 50), ("gt", 0),
            ("gte", 1), ("between", [0, 50]), ("in", ["pro", 1, "vip"]), ("not_in", ["pro", 1]),
            ("contains", "gmail"), ("contains", "vip"), ("contains", 1), ("starts_with", "+49"),
            ("regex", "^ord-[0-9]+$"), ("regex", "(?i)^pro"), ("within_last", {"days": 30}),
            ("more_than_ago", {"days": 100}), ("before", "2025-01-01"), ("after", "2025-06-01"),
        ]
    ),
    {"trait": "v", "op": "exists"},
    {"trait": "v", "op": "not_exists"},
    {"not": {"trait": "v", "op": "gt", "value": 10}},
    {"trait": "v.nested", "op": "eq", "value": 1},
    {"gender": ["pro", "münchen"]},
    {"geo": {"country": ["de"], "postal_code_prefix": "10"}},
    {"age": {"op": "between", "value": [18, 40]}},
    {"birthday_today": True},
    {"consent": {"purpose": "marketing", "channel": "email"}},
    {"event": "Order Completed", "op": "eq", "value": 0},
    {"event": "Order Completed", "measure": "last", "property": "placed_at", "op": "within_last", "value": {"days": 7}},
    {"model": "rfm.segment", "op": "eq", "value": "champions"},
]  # fmt: skip


async def _sql_members(db: SegmentDb, rule: dict[str, Any]) -> set[str]:
    async with db.sessions() as session:
        rows = await session.execute(members_query(parse_rule(rule).root, db.clock()))
        return {str(profile_id) for profile_id in rows.scalars()}


async def _python_members(db: SegmentDb, rule: dict[str, Any]) -> set[str]:
    parsed = parse_rule(rule).root
    matched = set()
    async with db.sessions() as session:
        rows = await session.execute(store.profiles.select().where(store.profiles.c.version > 0))
        for row in rows:
            members = await store.member_keys(session=session, profile_id=row.profile_id)
            facts = ProfileFacts(
                traits=row.traits,
                computed=row.computed,
                model=row.model,
                consents=row.consents,
                segments=frozenset(members),
            )
            if evaluate(parsed, facts, db.clock()):
                matched.add(row.profile_id)
    return matched


async def test_every_condition_means_the_same_in_sql(db: SegmentDb) -> None:
    order_key = parse_rule(RULES[-2]).computed_traits[0].key
    for i, value in enumerate(TRICKY_VALUES):
        traits = {
            "v": value,
            "gender": value,
            "birthday": value,
            "address": {"country": value, "postal_code": value},
        }
        computed = {order_key: value}
        async with db.sessions() as session, session.begin():
            await store.apply_profile_change(
                session=session,
                profile_id=f"p{i}",
                version=1,
                changed_traits=traits,
                changed_computed=computed,
            )
            await store.set_profile_documents(
                session=session,
                profile_id=f"p{i}",
                model={"rfm": {"segment": value}},
                consents={"marketing:email": {"status": value}},
            )
    birthday_today = db.clock().date().isoformat().replace("2025", "1990")
    async with db.sessions() as session, session.begin():
        await store.apply_profile_change(
            session=session,
            profile_id="birthday",
            version=1,
            changed_traits={"birthday": birthday_today},
            changed_computed={},
        )
    for rule in RULES:
        assert await _sql_members(db, rule) == await _python_members(db, rule), rule


def _synthetic_shop(seed: int, profiles: int) -> list[tuple[str, dict[str, Any], dict[str, Any]]]:
    """Profiles of a small shop: plans, cities, birthdays, sign-up dates and order aggregates."""
    rng = random.Random(seed)
    shop = []
    for i in range(profiles):
        traits = {
            "plan": rng.choice(["free", "pro", "team", None]),
            "address": {
                "city": rng.choice(["Berlin", "berlin", "Paris", "Lyon"]),
                "country": rng.choice(["DE", "FR"]),
            },
            "birthday": f"{rng.randint(1950, 2010)}-{rng.randint(1, 12):02d}-{rng.randint(1, 28):02d}",
            "signed_up_at": f"2025-{rng.randint(1, 6):02d}-{rng.randint(1, 28):02d}T10:00:00Z",
            "email": rng.choice(["a@gmail.com", "b@shop.de", None]),
        }
        computed = {
            "seg_orders_count": rng.choice([0, 1, 2, 5, 12]),
            "seg_orders_revenue": round(rng.uniform(0, 900), 2),
        }
        shop.append((f"shop-{i:04d}", traits, computed))
    return shop


SHOP_SEGMENTS: dict[str, dict[str, Any]] = {
    "shop_pro": {"trait": "plan", "op": "in", "value": ["pro", "team"]},
    "shop_berlin": {"geo": {"city": "berlin", "country": "DE"}},
    "shop_young": {"age": {"op": "lt", "value": 30}},
    "shop_recent": {"trait": "signed_up_at", "op": "within_last", "value": {"days": 60}},
    "shop_big_spenders": {"all": [{"computed": "seg_orders_revenue", "op": "gt", "value": 500}, {"computed": "seg_orders_count", "op": "gte", "value": 2}]},
    "shop_gmail": {"trait": "email", "op": "regex", "value": "@gmail\\.com$"},
    "shop_emailable": {"consent": {"purpose": "marketing", "channel": "email"}},
    "shop_target": {"all": [{"segment": "shop_berlin"}, {"any": [{"segment": "shop_pro"}, {"segment": "shop_big_spenders"}]}, {"not": {"segment": "shop_young"}}]},
}  # fmt: skip


async def test_real_time_membership_equals_batch_on_a_synthetic_shop(db: SegmentDb) -> None:
    for key, rule in SHOP_SEGMENTS.items():
        async with db.sessions() as session, session.begin():
            await handlers.create_segment(
                session=session, context=db.context, key=key, name=key, description="", rule=rule
            )
    rng = random.Random(3)
    for profile_id, traits, computed in _synthetic_shop(seed=11, profiles=80):
        await db.apply(
            ProfileCreated(profile_id=profile_id, version=1, changed_traits={"plan": traits["plan"]})
        )
        await db.apply(
            ProfileUpdated(
                profile_id=profile_id, version=2, changed_traits=traits, changed_computed_traits=computed
            )
        )
        consent = rng.choice([ConsentGranted, ConsentDenied, None])
        if consent is not None:
            await db.apply(
                consent(
                    profile_id=profile_id,
                    purpose="marketing",
                    channel="email",
                    at=db.clock() - timedelta(days=1),
                    source="web",
                )
            )
    for key, rule in SHOP_SEGMENTS.items():
        real_time = await db.members(key)
        assert real_time == await _sql_members(db, rule), key
    assert await db.members("shop_target"), "the shop should have some target customers"
    async with db.sessions() as session, session.begin():
        for key in SHOP_SEGMENTS:
            segment = await store.get_segment(session=session, ref=key)
            assert segment is not None
            changes = await recompute_segment(
                session=session,
                segment=segment,
                now=db.clock(),
                topic=db.context.segments_topic,
                trigger="test",
            )
            assert changes == {"entered": 0, "exited": 0}, key
