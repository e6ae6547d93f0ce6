"""Segments claim the computed traits they read from profile, and release them, through the same
seam main.py uses (a fake profile stands in for profile's API), on the real PostgreSQL."""

from __future__ import annotations

import sqlalchemy as sa
from cdp_common.db import transaction
from cdp_segment import handlers
from cdp_segment.computed_traits import watch_computed_traits
from cdp_segment.domain.rules import parse_rule

from .conftest import FakeProfile, SegmentDb

VIEWED = {"event": "Product Viewed", "op": "gte", "value": 1, "within_days": 7}
ORDERED = {"event": "Order Completed", "op": "gte", "value": 2, "within_days": 30}
VIEWED_KEY = parse_rule(VIEWED).computed_traits[0].key
ORDERED_KEY = parse_rule(ORDERED).computed_traits[0].key


async def test_claims_follow_a_segments_versions_and_its_deletion(db: SegmentDb) -> None:
    profile = FakeProfile()

    async def watch() -> None:
        async with transaction(db.sessions) as session:
            await watch_computed_traits(session=session, client=profile)

    async with db.sessions() as session, session.begin():
        for key in ("viewers", "browsers"):
            await handlers.create_segment(
                session=session, context=db.context, key=key, name=key, description="", rule=VIEWED
            )
    await watch()
    assert profile.owners[VIEWED_KEY] == {"segment:viewers", "segment:browsers"}

    async with db.sessions() as session, session.begin():
        await handlers.update_segment(
            session=session, context=db.context, ref="viewers", name="Buyers", description="", rule=ORDERED
        )
        await handlers.delete_segment(session=session, ref="browsers")
    await watch()
    assert profile.owners[VIEWED_KEY] == set()
    assert profile.owners[ORDERED_KEY] == {"segment:viewers"}


async def test_segments_made_before_claims_existed_claim_their_traits_at_start(db: SegmentDb) -> None:
    profile = FakeProfile()
    async with db.sessions() as session, session.begin():
        await handlers.create_segment(
            session=session, context=db.context, key="viewers", name="Viewers", description="", rule=VIEWED
        )
        await session.execute(sa.text("DELETE FROM computed_trait_claims"))
    async with db.sessions() as session, session.begin():
        await handlers.ensure_builtin_segments(session=session)
    async with transaction(db.sessions) as session:
        await watch_computed_traits(session=session, client=profile)
    assert profile.owners[VIEWED_KEY] == {"segment:viewers"}
    lifecycle_owners = {owner for owners in profile.owners.values() for owner in owners} - {"segment:viewers"}
    assert lifecycle_owners
    assert all(owner.startswith("segment:lifecycle_") for owner in lifecycle_owners)
