"""The profile store: events."""

from __future__ import annotations

from collections.abc import Sequence
from datetime import datetime
from typing import Any

import sqlalchemy as sa
from sqlalchemy.dialects import postgresql
from sqlalchemy.ext.asyncio import AsyncSession

from cdp_profile.domain.computed import StoredEvent
from cdp_profile.domain.identity import IdentifierKey
from cdp_profile.store.tables import events

# --- event store ------------------------------------------------------------------------------


def event_row(
    *,
    event_id: str,
    profile_id: str,
    event: StoredEvent,
    received_at: datetime,
    source_id: str,
    traits: dict[str, Any],
    keys: Sequence[IdentifierKey],
) -> dict[str, Any]:
    """Return the event store's row of one event of a profile."""
    return {
        "event_id": event_id,
        "profile_id": profile_id,
        "origin_profile_id": profile_id,
        "type": event.type,
        "name": event.name,
        "timestamp": event.timestamp,
        "received_at": received_at,
        "source_id": source_id,
        "properties": event.properties,
        "traits": traits,
        "identifiers": [{"type": k.type, "value": k.value} for k in keys],
    }


async def store_event(
    *,
    session: AsyncSession,
    event_id: str,
    profile_id: str,
    event: StoredEvent,
    received_at: datetime,
    source_id: str,
    traits: dict[str, Any],
    keys: Sequence[IdentifierKey],
) -> bool:
    """Store an event of a profile once; False when the store already held it (a replay)."""
    row = event_row(
        event_id=event_id,
        profile_id=profile_id,
        event=event,
        received_at=received_at,
        source_id=source_id,
        traits=traits,
        keys=keys,
    )
    statement = (
        postgresql.insert(events)
        .values(**row)
        .on_conflict_do_nothing(index_elements=[events.c.event_id])
        .returning(events.c.seq)
    )
    return (await session.execute(statement)).first() is not None


def _stored_event(row: Any) -> StoredEvent:
    return StoredEvent(
        event_id=row.event_id,
        type=row.type,
        name=row.name,
        timestamp=row.timestamp,
        properties=row.properties,
    )


async def events_for_fold(
    *, session: AsyncSession, profile_id: str, name: str | None = None, since: datetime | None = None
) -> list[StoredEvent]:
    """Return a profile's events (optionally one name, optionally since a time) in time order."""
    query = sa.select(
        events.c.event_id, events.c.type, events.c.name, events.c.timestamp, events.c.properties
    ).where(events.c.profile_id == profile_id)
    if name is not None:
        query = query.where(events.c.name == name)
    if since is not None:
        query = query.where(events.c.timestamp > since)
    rows = await session.execute(query.order_by(events.c.timestamp, events.c.event_id))
    return [_stored_event(r) for r in rows]


async def events_of_profiles(
    *, session: AsyncSession, profile_ids: Sequence[str], names: Sequence[str] | None, since: datetime
) -> dict[str, list[StoredEvent]]:
    """Return the events of many profiles since a time (optionally only some names), per profile."""
    found: dict[str, list[StoredEvent]] = {pid: [] for pid in profile_ids}
    if not profile_ids:
        return found
    query = sa.select(
        events.c.profile_id,
        events.c.event_id,
        events.c.type,
        events.c.name,
        events.c.timestamp,
        events.c.properties,
    ).where(events.c.profile_id.in_(list(profile_ids)), events.c.timestamp > since)
    if names is not None:
        query = query.where(events.c.name.in_(list(names)))
    for row in await session.execute(query):
        found[row.profile_id].append(_stored_event(row))
    return found


async def asserted_traits(
    *, session: AsyncSession, profile_id: str
) -> list[tuple[dict[str, Any], str, str, datetime]]:
    """Return the traits each of a profile's events asserted, with provenance."""
    rows = await session.execute(
        sa.select(events.c.traits, events.c.source_id, events.c.event_id, events.c.timestamp).where(
            events.c.profile_id == profile_id, events.c.traits != sa.cast({}, postgresql.JSONB)
        )
    )
    return [(r.traits, r.source_id, r.event_id, r.timestamp) for r in rows]


async def list_events(
    *,
    session: AsyncSession,
    profile_id: str,
    event_type: str | None,
    name: str | None,
    since: datetime | None,
    until: datetime | None,
    after: tuple[datetime, int] | None,
    limit: int,
) -> list[dict[str, Any]]:
    """Return a page of a profile's events, newest first, filtered by type, name and time."""
    query = sa.select(events).where(events.c.profile_id == profile_id)
    if event_type is not None:
        query = query.where(events.c.type == event_type)
    if name is not None:
        query = query.where(events.c.name == name)
    if since is not None:
        query = query.where(events.c.timestamp >= since)
    if until is not None:
        query = query.where(events.c.timestamp < until)
    if after is not None:
        query = query.where(sa.tuple_(events.c.timestamp, events.c.seq) < sa.tuple_(*after))
    rows = await session.execute(query.order_by(events.c.timestamp.desc(), events.c.seq.desc()).limit(limit))
    return [
        {
            "seq": r.seq,
            "event_id": r.event_id,
            "type": r.type,
            "name": r.name,
            "timestamp": r.timestamp,
            "received_at": r.received_at.isoformat(),
            "source_id": r.source_id,
            "properties": r.properties,
            "traits": r.traits,
            "identifiers": r.identifiers,
        }
        for r in rows
    ]
