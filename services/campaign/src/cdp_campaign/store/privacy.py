"""The campaign store: erasing and exporting what is held about a person."""

from __future__ import annotations

from datetime import datetime
from typing import Any

import sqlalchemy as sa
from cdp_common.replica import erase_known_profiles, export_known_profile
from sqlalchemy.ext.asyncio import AsyncSession

from cdp_campaign.store.profiles import contacts_of, purchase_history, segments_of
from cdp_campaign.store.tables import (
    contacts,
    journey_positions,
    known_profiles,
    memberships,
    profile_events,
    purchases,
    sends,
)


async def erase_profiles(*, session: AsyncSession, profile_ids: list[str]) -> dict[str, int]:
    """Delete what is held about these profiles; sends keep only the hashed id and their outcome."""
    counts = {
        "known_profiles": await erase_known_profiles(
            session=session, table=known_profiles, profile_ids=profile_ids
        )
    }
    for table in (contacts, memberships, profile_events, purchases, journey_positions):
        result = await session.execute(table.delete().where(table.c.profile_id.in_(profile_ids)))
        counts[str(table.name)] = int(getattr(result, "rowcount", 0) or 0)
    result = await session.execute(
        sends.update()
        .where(sends.c.profile_id.in_(profile_ids))
        .values(profile_id=None, address=None, error=None, updated_at=sa.func.now())
    )
    counts["sends_anonymised"] = int(getattr(result, "rowcount", 0) or 0)
    return {name: count for name, count in counts.items() if count}


def _plain(row: dict[str, Any]) -> dict[str, Any]:
    return {k: v.isoformat() if isinstance(v, datetime) else v for k, v in row.items()}


async def export_profile(*, session: AsyncSession, profile_id: str) -> dict[str, Any] | None:
    """Return everything held about one profile, or None."""
    known = await export_known_profile(session=session, table=known_profiles, profile_id=profile_id)
    contact = (await contacts_of(session=session, profile_ids=[profile_id])).get(profile_id)
    send_rows = await session.execute(
        sa.select(sends).where(sends.c.profile_id == profile_id).order_by(sends.c.created_at)
    )
    sent = [_plain(dict(r)) for r in send_rows.mappings()]
    positions = await session.execute(
        sa.select(journey_positions).where(journey_positions.c.profile_id == profile_id)
    )
    segment_keys = (await segments_of(session=session, profile_ids=[profile_id]))[profile_id]
    if known is None and contact is None and not sent:
        return None
    return {
        "known_profile": known,
        "contact": None if contact is None else _plain(contact),
        "segments": segment_keys,
        "sends": sent,
        "journey_positions": [_plain(dict(r)) for r in positions.mappings()],
        "purchases": [_plain(p) for p in await purchase_history(session=session, profile_id=profile_id)],
    }
