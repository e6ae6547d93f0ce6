"""The campaign store: campaigns and journeys, and the definitions the handlers read once per transaction."""

from __future__ import annotations

from datetime import datetime
from typing import Any

import sqlalchemy as sa
from cdp_common.db import forget_for_transaction, once_per_transaction
from sqlalchemy.ext.asyncio import AsyncSession

from cdp_campaign.store.tables import (
    campaigns,
    journeys,
)


async def insert_definition(
    *, session: AsyncSession, table: sa.Table, id: str, name: str, status: str, spec: dict[str, Any]
) -> dict[str, Any]:
    """Insert a campaign or journey and return its row."""
    _forget_definitions(session)
    row = (
        (
            await session.execute(
                table.insert().values(id=id, name=name, status=status, spec=spec).returning(*table.c)
            )
        )
        .mappings()
        .one()
    )
    return dict(row)


async def get_definition(
    *, session: AsyncSession, table: sa.Table, id: str, for_update: bool = False
) -> dict[str, Any] | None:
    """Return a campaign or journey row, or None."""
    query = sa.select(table).where(table.c.id == id)
    if for_update:
        query = query.with_for_update()
    row = (await session.execute(query)).mappings().first()
    return None if row is None else dict(row)


async def list_definitions(
    *, session: AsyncSession, table: sa.Table, after: str | None, limit: int
) -> list[dict[str, Any]]:
    """Return a page of campaigns or journeys in id order."""
    query = sa.select(table).order_by(table.c.id).limit(limit)
    if after is not None:
        query = query.where(table.c.id > after)
    return [dict(r) for r in (await session.execute(query)).mappings()]


async def update_definition(*, session: AsyncSession, table: sa.Table, id: str, **values: Any) -> None:
    """Change fields of a campaign or journey."""
    _forget_definitions(session)
    await session.execute(table.update().where(table.c.id == id).values(updated_at=sa.func.now(), **values))


async def delete_definition(*, session: AsyncSession, table: sa.Table, id: str) -> None:
    """Delete a campaign or journey."""
    _forget_definitions(session)
    await session.execute(table.delete().where(table.c.id == id))


# The definitions the event handlers look up, read once per transaction (a consumer's poll
# applies every event against the same ones) and dropped by any write of a definition in it.
def _forget_definitions(session: AsyncSession) -> None:
    for key in _DEFINITION_QUERIES:
        forget_for_transaction(session, key)


# Built once: the handlers ask for them for every event of a poll.
_DEFINITION_QUERIES: dict[str, sa.Select[Any]] = {
    "campaigns:running": sa.select(campaigns).where(campaigns.c.status == "running"),
    "campaigns:unfinished": sa.select(campaigns).where(campaigns.c.status != "completed"),
    "journeys:active": sa.select(journeys).where(journeys.c.status == "active"),
}


async def _definitions(session: AsyncSession, key: str) -> list[dict[str, Any]]:
    async def load() -> list[dict[str, Any]]:
        return [dict(r) for r in (await session.execute(_DEFINITION_QUERIES[key])).mappings()]

    return await once_per_transaction(session, key, load)


async def running_campaigns(*, session: AsyncSession) -> list[dict[str, Any]]:
    """Return the running campaigns (rows shared within the transaction: not to be changed)."""
    return await _definitions(session, "campaigns:running")


async def unfinished_campaigns(*, session: AsyncSession) -> list[dict[str, Any]]:
    """Return the campaigns that are not completed (rows shared within the transaction: not to be changed)."""
    return await _definitions(session, "campaigns:unfinished")


async def active_journeys(*, session: AsyncSession) -> list[dict[str, Any]]:
    """Return the active journeys (rows shared within the transaction: not to be changed)."""
    return await _definitions(session, "journeys:active")


async def due_campaigns(*, session: AsyncSession, now: datetime) -> list[dict[str, Any]]:
    """Return scheduled or running campaigns whose next run is due, locked for this replica."""
    query = (
        sa.select(campaigns)
        .where(campaigns.c.status.in_(("scheduled", "running")), campaigns.c.next_run_at <= now)
        .with_for_update(skip_locked=True)
    )
    return [dict(r) for r in (await session.execute(query)).mappings()]
