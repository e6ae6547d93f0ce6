"""A consumer poll's profile changes and segment events applied together end exactly as they
would one at a time: late versions skipped, the same profile changed twice in one poll,
contact points normalised (or left alone when unusable), memberships entered, entered twice and left."""

from __future__ import annotations

import secrets
from datetime import UTC, datetime
from typing import Any

import pytest
import sqlalchemy as sa
from cdp_campaign import handlers, store
from cdp_common.db import transaction
from cdp_common.envelope import Envelope
from cdp_common.events import ProfileCreated, ProfileUpdated, SegmentEntered, SegmentExited, make_envelope

from ..conftest import CampaignUnderTest

pytestmark = pytest.mark.integration

AT = datetime(2026, 5, 1, tzinfo=UTC)


def _changes(profile_id: str) -> list[Envelope[Any]]:
    """A created profile, two updates, an older update arriving late, and one more update."""
    payloads = [
        ProfileCreated(
            profile_id=profile_id,
            version=1,
            changed_traits={"first_name": "Ada", "email": " Ada@Example.COM "},
        ),
        ProfileUpdated(
            profile_id=profile_id,
            version=3,
            changed_traits={"city": "Berlin", "email": "ada.l@example.com"},
            changed_computed_traits={"orders": 2},
        ),
        ProfileUpdated(
            profile_id=profile_id, version=2, changed_traits={"first_name": "Late", "phone": "+49 30 1234567"}
        ),
        ProfileUpdated(
            profile_id=profile_id, version=4, changed_traits={"locale": "de-DE", "phone": "call me maybe"}
        ),
        ProfileUpdated(profile_id=profile_id, version=5, changed_computed_traits={"orders": 3}),
    ]
    return [make_envelope(payload=p, source="profile", subject=profile_id) for p in payloads]


async def _contact(campaign: CampaignUnderTest, profile_id: str) -> dict[str, Any]:
    async with transaction(campaign.ctx.session_factory) as session:
        contact = (await store.contacts_of(session=session, profile_ids=[profile_id]))[profile_id]
        version = (
            await session.execute(
                sa.select(store.known_profiles.c.version).where(
                    store.known_profiles.c.profile_id == profile_id
                )
            )
        ).scalar_one()
    return {
        "known_version": version,
        **{k: contact[k] for k in ("version", "email", "phone", "locale", "timezone", "traits", "computed")},
    }


async def test_a_poll_of_profile_changes_ends_as_one_change_at_a_time(campaign: CampaignUnderTest) -> None:
    together, alone = f"bulk-{secrets.token_hex(4)}", f"single-{secrets.token_hex(4)}"
    async with transaction(campaign.ctx.session_factory) as session:
        # The poll's changes of both people interleaved, as a partition delivers them.
        await handlers.on_profiles_changed(
            session=session,
            envelopes=[
                e for pair in zip(_changes(together), _changes(together + "-b"), strict=True) for e in pair
            ],
            ctx=campaign.ctx,
        )
    for envelope in _changes(alone):
        async with transaction(campaign.ctx.session_factory) as session:
            await handlers.on_profile_changed(session=session, envelope=envelope, ctx=campaign.ctx)

    expected = {
        "known_version": 5,
        "version": 5,
        "email": "ada.l@example.com",
        "phone": None,
        "locale": "de-DE",
        "timezone": None,
        "traits": {
            "first_name": "Ada",
            "email": "ada.l@example.com",
            "city": "Berlin",
            "locale": "de-DE",
            "phone": "call me maybe",
        },
        "computed": {"orders": 3},
    }
    assert await _contact(campaign, alone) == expected
    assert await _contact(campaign, together) == expected
    assert await _contact(campaign, together + "-b") == expected


async def test_a_poll_of_segment_events_keeps_memberships_as_one_at_a_time(
    campaign: CampaignUnderTest,
) -> None:
    person = f"member-{secrets.token_hex(4)}"

    def entered(key: str) -> Envelope[Any]:
        return make_envelope(
            payload=SegmentEntered(profile_id=person, segment_key=key, segment_version=1, at=AT),
            source="segment",
            subject=person,
        )

    left = make_envelope(
        payload=SegmentExited(profile_id=person, segment_key="vip", segment_version=1, at=AT),
        source="segment",
        subject=person,
    )
    async with transaction(campaign.ctx.session_factory) as session:
        # Entered twice (a redelivery under another id) and into two segments, then left one.
        await handlers.on_segments_entered(
            session=session, envelopes=[entered("vip"), entered("new"), entered("vip")], ctx=campaign.ctx
        )
        assert (await store.segments_of(session=session, profile_ids=[person]))[person] == ["new", "vip"]
        await handlers.on_segments_exited(session=session, envelopes=[left, left], ctx=campaign.ctx)
        assert (await store.segments_of(session=session, profile_ids=[person]))[person] == ["new"]
