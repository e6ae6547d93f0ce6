"""The campaign store: where each person stands in a journey."""

from __future__ import annotations

from datetime import datetime
from typing import Any

import sqlalchemy as sa
from sqlalchemy.dialects import postgresql
from sqlalchemy.ext.asyncio import AsyncSession

from cdp_campaign.store.tables import (
    journey_positions,
)


async def get_position(
    *, session: AsyncSession, journey_id: str, profile_id: str, for_update: bool = False
) -> dict[str, Any] | None:
    """Return a person's position in a journey."""
    query = sa.select(journey_positions).where(
        journey_positions.c.journey_id == journey_id, journey_positions.c.profile_id == profile_id
    )
    if for_update:
        query = query.with_for_update()
    row = (await session.execute(query)).mappings().first()
    return None if row is None else dict(row)


async def save_position(
    *, session: AsyncSession, journey_id: str, profile_id: str, entered_at: datetime, **values: Any
) -> None:
    """Store a person's position in a journey."""
    statement = postgresql.insert(journey_positions).values(
        journey_id=journey_id, profile_id=profile_id, entered_at=entered_at, **values
    )
    await session.execute(
        statement.on_conflict_do_update(
            index_elements=[journey_positions.c.journey_id, journey_positions.c.profile_id],
            set_={**values, "updated_at": sa.func.now()},
        )
    )


async def positions_due(*, session: AsyncSession, now: datetime, limit: int = 1000) -> list[dict[str, Any]]:
    """Return waiting positions whose time has come, locked for this replica."""
    query = (
        sa.select(journey_positions)
        .where(journey_positions.c.state == "waiting", journey_positions.c.wake_at <= now)
        .order_by(journey_positions.c.wake_at)
        .limit(limit)
        .with_for_update(skip_locked=True)
    )
    return [dict(r) for r in (await session.execute(query)).mappings()]


async def positions_waiting_for(*, session: AsyncSession, profile_id: str) -> list[dict[str, Any]]:
    """Return a profile's positions in journeys that are still going."""
    query = sa.select(journey_positions).where(
        journey_positions.c.profile_id == profile_id, journey_positions.c.state.in_(("waiting", "active"))
    )
    return [dict(r) for r in (await session.execute(query)).mappings()]
