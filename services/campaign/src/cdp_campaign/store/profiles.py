"""The campaign store: what the service keeps about profiles (contact points, traits, memberships, the
events its goals and journeys need, purchase lines for recommendations)."""

from __future__ import annotations

import functools
from collections.abc import Sequence
from datetime import datetime
from typing import Any

import sqlalchemy as sa
from sqlalchemy.dialects import postgresql
from sqlalchemy.ext.asyncio import AsyncSession

from cdp_campaign.store.tables import (
    _any_of,
    _dicts,
    contacts,
    memberships,
    profile_events,
    purchases,
)


@functools.cache
def _contact_upsert(fields: tuple[str, ...]) -> Any:
    """Build the upsert of a contact record for one set of contact fields, once."""
    names = ("profile_id", "version", "traits", "computed", *fields)
    statement = postgresql.insert(contacts).values(
        {name: sa.bindparam(name, type_=contacts.c[name].type) for name in names}
    )
    updates: dict[str, Any] = {
        "version": statement.excluded.version,
        "traits": contacts.c.traits.op("||")(statement.excluded.traits),
        "computed": contacts.c.computed.op("||")(statement.excluded.computed),
        "updated_at": sa.func.now(),
    }
    for name in fields:
        updates[name] = statement.excluded[name]
    return statement.on_conflict_do_update(
        index_elements=[contacts.c.profile_id],
        set_=updates,
        where=contacts.c.version < statement.excluded.version,
    )


async def apply_contact(
    *,
    session: AsyncSession,
    profile_id: str,
    version: int,
    fields: dict[str, Any],
    traits: dict[str, Any],
    computed: dict[str, Any],
) -> None:
    """Merge changed traits and contact points into a profile's record unless it holds a newer version."""
    change = {
        "profile_id": profile_id,
        "version": version,
        "fields": fields,
        "traits": traits,
        "computed": computed,
    }
    await apply_contacts(session=session, changes=[change])


async def apply_contacts(*, session: AsyncSession, changes: Sequence[dict[str, Any]]) -> None:
    """Apply contact changes as apply_contact would one after another, in a few batched statements.

    Each change holds profile_id, version, fields, traits and computed. A profile's changes
    go out in their order, one per round; within a round, changes with the same contact
    fields share one statement, sent with all its rows at once.
    """
    rounds: list[dict[tuple[str, ...], list[dict[str, Any]]]] = []
    seen: dict[str, int] = {}
    for change in changes:
        number = seen.get(change["profile_id"], 0)
        seen[change["profile_id"]] = number + 1
        if number == len(rounds):
            rounds.append({})
        fields = change["fields"]
        rounds[number].setdefault(tuple(sorted(fields)), []).append(
            {
                "profile_id": change["profile_id"],
                "version": change["version"],
                "traits": change["traits"],
                "computed": change["computed"],
                **fields,
            }
        )
    for statements in rounds:
        for fields, rows in statements.items():
            await session.execute(_contact_upsert(fields), rows)


async def contacts_of(*, session: AsyncSession, profile_ids: Sequence[str]) -> dict[str, dict[str, Any]]:
    """Return the records of profiles by id."""
    if not profile_ids:
        return {}
    rows = await session.execute(sa.select(contacts).where(_any_of(contacts.c.profile_id, profile_ids)))
    return {r["profile_id"]: r for r in _dicts(rows)}


_ENTER_MANY = sa.text(
    "INSERT INTO memberships (profile_id, segment_key, entered_at)"
    " SELECT * FROM unnest(CAST(:profile_ids AS text[]), CAST(:segment_keys AS text[]),"
    " CAST(:at AS timestamptz[]))"
    " ON CONFLICT DO NOTHING"
)
_LEAVE_MANY = sa.text(
    "DELETE FROM memberships m"
    " USING unnest(CAST(:profile_ids AS text[]), CAST(:segment_keys AS text[])) AS g(profile_id, segment_key)"
    " WHERE m.profile_id = g.profile_id AND m.segment_key = g.segment_key"
)


async def set_memberships(
    *, session: AsyncSession, changes: Sequence[tuple[str, str, datetime]], member: bool
) -> None:
    """Record that profiles entered (or left) segments: (profile_id, segment_key, at) each, in one statement."""
    if not changes:
        return
    values: dict[str, Any] = {
        "profile_ids": [profile_id for profile_id, _, _ in changes],
        "segment_keys": [segment_key for _, segment_key, _ in changes],
    }
    if member:
        await session.execute(_ENTER_MANY, {**values, "at": [at for _, _, at in changes]})
    else:
        await session.execute(_LEAVE_MANY, values)


async def segment_members(*, session: AsyncSession, segment_key: str) -> list[str]:
    """Return the profile ids in a segment."""
    rows = await session.execute(
        sa.select(memberships.c.profile_id).where(memberships.c.segment_key == segment_key)
    )
    return list(rows.scalars())


async def segments_of(*, session: AsyncSession, profile_ids: Sequence[str]) -> dict[str, list[str]]:
    """Return the segment keys of profiles."""
    result: dict[str, list[str]] = {pid: [] for pid in profile_ids}
    if not profile_ids:
        return result
    rows = await session.execute(
        sa.select(memberships.c.profile_id, memberships.c.segment_key)
        .where(_any_of(memberships.c.profile_id, profile_ids))
        .order_by(memberships.c.segment_key)
    )
    for profile_id, key in rows:
        result[profile_id].append(key)
    return result


async def record_event(
    *, session: AsyncSession, event_id: str, profile_id: str, event: str, at: datetime, revenue: float | None
) -> bool:
    """Keep an event a goal or journey needs; False when it was already kept."""
    statement = (
        postgresql.insert(profile_events)
        .values(event_id=event_id, profile_id=profile_id, event=event, at=at, revenue=revenue)
        .on_conflict_do_nothing()
        .returning(profile_events.c.event_id)
    )
    return (await session.execute(statement)).first() is not None


async def event_seen(*, session: AsyncSession, profile_id: str, event: str, since: datetime) -> bool:
    """Whether a profile did an event at or after a time."""
    query = sa.select(sa.literal(1)).where(
        profile_events.c.profile_id == profile_id,
        profile_events.c.event == event,
        profile_events.c.at >= since,
    )
    return (await session.execute(query.limit(1))).first() is not None


async def record_purchases(*, session: AsyncSession, rows: list[dict[str, Any]]) -> None:
    """Keep the product lines of an order."""
    if rows:
        await session.execute(postgresql.insert(purchases).values(rows).on_conflict_do_nothing())


async def purchase_history(*, session: AsyncSession, profile_id: str) -> list[dict[str, Any]]:
    """Return a profile's product lines."""
    rows = await session.execute(sa.select(purchases).where(purchases.c.profile_id == profile_id))
    return [dict(r) for r in rows.mappings()]


async def catalogue_sales(*, session: AsyncSession, limit: int = 20_000) -> list[dict[str, Any]]:
    """Return the most recent product lines of everyone, the base of best sellers and baskets."""
    rows = await session.execute(sa.select(purchases).order_by(purchases.c.at.desc()).limit(limit))
    return [dict(r) for r in rows.mappings()]
