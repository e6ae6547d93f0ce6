"""The profile store: computed."""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from datetime import datetime
from typing import Any

import sqlalchemy as sa
from cdp_common.db import forget_for_transaction, json_text
from sqlalchemy.dialects import postgresql
from sqlalchemy.ext.asyncio import AsyncSession

from cdp_profile.domain.computed import Definition, StoredEvent
from cdp_profile.store.events import _stored_event
from cdp_profile.store.tables import (
    CONFIGURATION,
    DEFINITIONS_LOCK,
    StoredProfile,
    _profile_of,
    computed_definitions,
    computed_values,
    events,
    profiles,
)

# --- computed traits -----------------------------------------------------------------------------


async def defined_states(*, session: AsyncSession, profile_id: str) -> dict[str, dict[str, Any]]:
    """Return the state of every user-defined computed trait of a profile."""
    rows = await session.execute(
        sa.select(computed_values.c.key, computed_values.c.state).where(
            computed_values.c.profile_id == profile_id
        )
    )
    return {r.key: r.state for r in rows}


async def save_defined_states(
    *, session: AsyncSession, profile_id: str, states: dict[str, tuple[dict[str, Any], datetime | None]]
) -> None:
    """Write the state (and next window change) of user-defined computed traits of a profile."""
    if not states:
        return
    statement = postgresql.insert(computed_values).values(
        [
            {"profile_id": profile_id, "key": key, "state": state, "next_change_at": due}
            for key, (state, due) in states.items()
        ]
    )
    await session.execute(
        statement.on_conflict_do_update(
            index_elements=[computed_values.c.profile_id, computed_values.c.key],
            set_={"state": statement.excluded.state, "next_change_at": statement.excluded.next_change_at},
        )
    )


async def delete_defined_states(*, session: AsyncSession, profile_id: str) -> None:
    """Forget a profile's user-defined states (its events moved elsewhere)."""
    await session.execute(computed_values.delete().where(computed_values.c.profile_id == profile_id))


async def insert_definition(*, session: AsyncSession, definition: Definition, job_id: str) -> bool:
    """Store a new definition, marked as building by a job, under the exclusive definitions lock;
    False when the key exists.

    Taking the lock exclusively waits for every transaction that read the definitions before,
    so every event stored after this commits is folded by the event flow, and every event
    stored before it is in the store for the backfill to find.
    """
    await session.execute(sa.select(sa.func.pg_advisory_xact_lock(DEFINITIONS_LOCK)))
    result = await session.execute(
        postgresql.insert(computed_definitions)
        .values(key=definition.key, definition={**definition.to_json(), "building": True}, job_id=job_id)
        .on_conflict_do_nothing()
        .returning(computed_definitions.c.key)
    )
    forget_for_transaction(session, CONFIGURATION)
    return result.first() is not None


def _definition_body(row: Any) -> dict[str, Any]:
    stored = dict(row.definition)
    building = bool(stored.pop("building", False))
    return {
        **stored,
        "status": "building" if building else "ready",
        "job_id": row.job_id,
        "created_at": row.created_at.isoformat(),
        "backfilled_profiles": row.backfilled_profiles,
    }


async def list_definitions(*, session: AsyncSession) -> list[dict[str, Any]]:
    """Return every user-defined computed trait with its status."""
    rows = await session.execute(sa.select(computed_definitions).order_by(computed_definitions.c.key))
    return [_definition_body(r) for r in rows]


async def get_definition(*, session: AsyncSession, key: str) -> dict[str, Any] | None:
    """Return one user-defined computed trait with its status, or None."""
    row = (
        await session.execute(sa.select(computed_definitions).where(computed_definitions.c.key == key))
    ).first()
    return None if row is None else _definition_body(row)


async def load_definition(*, session: AsyncSession, key: str) -> Definition | None:
    """Return the parsed definition of a key, or None."""
    raw = await session.scalar(
        sa.select(computed_definitions.c.definition).where(computed_definitions.c.key == key)
    )
    return None if raw is None else Definition.from_json(raw)


async def mark_backfilled(*, session: AsyncSession, key: str, profiles_count: int) -> None:
    """Mark a definition as built, under the exclusive definitions lock, with the profiles it touched."""
    await session.execute(sa.select(sa.func.pg_advisory_xact_lock(DEFINITIONS_LOCK)))
    await session.execute(
        computed_definitions.update()
        .where(computed_definitions.c.key == key)
        .values(
            definition=computed_definitions.c.definition.op("-")(sa.literal("building", sa.Text)),
            backfilled_profiles=profiles_count,
        )
    )
    forget_for_transaction(session, CONFIGURATION)


async def count_profiles(*, session: AsyncSession) -> int:
    """Return how many profiles there are (of any status): the items a backfill walks through."""
    return int(await session.scalar(sa.select(sa.func.count()).select_from(profiles)) or 0)


async def next_profile_range(*, session: AsyncSession, after: str, limit: int) -> tuple[int, str | None]:
    """Return how many of the next `limit` profile ids (of any status) there are after one, and the last."""
    following = (
        sa.select(profiles.c.id).where(profiles.c.id > after).order_by(profiles.c.id).limit(limit).subquery()
    )
    row = (await session.execute(sa.select(sa.func.count(), sa.func.max(following.c.id)))).one()
    return int(row[0]), row[1]


def _selected_events(definition: Definition, *, low: str, high: str, since: datetime | None) -> Any:
    """The events of the profiles in (low, high] that a definition's name, type and window select."""
    conditions = [events.c.profile_id > low, events.c.profile_id <= high]
    if definition.event_name is not None:
        conditions.append(events.c.name == definition.event_name)
    if definition.event_type is not None:
        conditions.append(events.c.type == definition.event_type)
    if since is not None:
        conditions.append(events.c.timestamp > since)
    return sa.and_(*conditions)


# Python's isoformat of a UTC time, which the folds write into a state's first and last stamps.
_ISO = """(to_char({t} AT TIME ZONE 'UTC', 'YYYY-MM-DD"T"HH24:MI:SS')
          || CASE WHEN date_part('microseconds', {t})::bigint % 1000000 = 0 THEN ''
                  ELSE to_char({t} AT TIME ZONE 'UTC', '.US') END || '+00:00')"""

# One step of a count backfill, set-based: count each profile's selected events, write the
# states `fold_defined` would reach, and return the profiles that published another value
# (the caller publishes the new one).
_BACKFILL_COUNTS = """
    WITH counted AS (
        SELECT e.profile_id, count(*) AS n,
               min(e.timestamp) AS first_at,
               (array_agg(e.event_id ORDER BY e.timestamp, e.event_id COLLATE "C"))[1] AS first_id,
               max(e.timestamp) AS last_at,
               (array_agg(e.event_id ORDER BY e.timestamp DESC, e.event_id COLLATE "C" DESC))[1] AS last_id
          FROM events e
         WHERE e.profile_id > :low AND e.profile_id <= :high {conditions}
         GROUP BY e.profile_id
    ), live AS (
        SELECT c.*, p.computed -> CAST(:key AS text) AS current
          FROM counted c JOIN profiles p ON p.id = c.profile_id AND p.status = 'active'
    ), saved AS (
        INSERT INTO computed_values (profile_id, key, state, next_change_at)
        SELECT l.profile_id, CAST(:key AS text),
               jsonb_build_object(
                   'count', l.n,
                   'first', jsonb_build_array({first_iso}, l.first_id, NULL),
                   'last', jsonb_build_array({last_iso}, l.last_id, NULL)),
               l.first_at + CAST(:window AS interval)
          FROM live l
        ON CONFLICT (profile_id, key) DO UPDATE SET state = excluded.state, next_change_at = excluded.next_change_at
        RETURNING 1
    )
    SELECT l.profile_id, l.n, (SELECT count(*) FROM saved) AS holding
      FROM live l
     WHERE l.current IS NOT NULL AND l.current IS DISTINCT FROM to_jsonb(l.n)
    UNION ALL
    SELECT NULL, NULL, (SELECT count(*) FROM saved)
"""


@dataclass(frozen=True)
class CountedBackfill:
    """What one set-based step of a count backfill did."""

    holding: int
    changed: dict[str, int]


async def backfill_counts(
    *, session: AsyncSession, definition: Definition, low: str, high: str, since: datetime | None
) -> CountedBackfill:
    """Backfill a count without property or filters for the profiles in (low, high] in one statement."""
    conditions = ""
    params: dict[str, Any] = {"low": low, "high": high, "key": definition.key}
    if definition.event_name is not None:
        conditions += " AND e.name = :name"
        params["name"] = definition.event_name
    if definition.event_type is not None:
        conditions += " AND e.type = :type"
        params["type"] = definition.event_type
    if since is not None:
        conditions += " AND e.timestamp > :since"
        params["since"] = since
    params["window"] = definition.window
    statement = _BACKFILL_COUNTS.format(
        conditions=conditions, first_iso=_ISO.format(t="l.first_at"), last_iso=_ISO.format(t="l.last_at")
    )
    rows = (await session.execute(sa.text(statement), params)).all()
    return CountedBackfill(
        holding=int(rows[-1].holding),
        changed={r.profile_id: int(r.n) for r in rows if r.profile_id is not None},
    )


async def selected_events(
    *, session: AsyncSession, definition: Definition, low: str, high: str, since: datetime | None
) -> dict[str, list[StoredEvent]]:
    """Return the events of every profile in (low, high] that a definition's name, type and window select."""
    query = (
        sa.select(
            events.c.profile_id,
            events.c.event_id,
            events.c.type,
            events.c.name,
            events.c.timestamp,
            events.c.properties,
        )
        .where(_selected_events(definition, low=low, high=high, since=since))
        .order_by(events.c.profile_id, events.c.timestamp, events.c.event_id)
    )
    found: dict[str, list[StoredEvent]] = {}
    for row in await session.execute(query):
        found.setdefault(row.profile_id, []).append(_stored_event(row))
    return found


async def published_values(
    *, session: AsyncSession, profile_ids: Sequence[str], key: str
) -> dict[str, tuple[bool, Any]]:
    """Return, per active profile, whether it holds (and so has published) a value of a key, and the value."""
    if not profile_ids:
        return {}
    value = profiles.c.computed[key]
    rows = await session.execute(
        sa.select(profiles.c.id, value.is_not(None).label("known"), value.label("value")).where(
            profiles.c.id.in_(list(profile_ids)), profiles.c.status == "active"
        )
    )
    return {r.id: (bool(r.known), r.value) for r in rows}


_SAVE_STATES = sa.text(
    """
    INSERT INTO computed_values (profile_id, key, state, next_change_at)
    SELECT u.id, CAST(:key AS text), u.state::jsonb, u.due
      FROM unnest(CAST(:ids AS text[]), CAST(:states AS text[]), CAST(:dues AS timestamptz[])) AS u(id, state, due)
    ON CONFLICT (profile_id, key) DO UPDATE SET state = excluded.state, next_change_at = excluded.next_change_at
    """
)


async def save_states_of_key(
    *, session: AsyncSession, key: str, states: Sequence[tuple[str, dict[str, Any], datetime | None]]
) -> None:
    """Write one trait's state for many profiles in one statement."""
    if not states:
        return
    await session.execute(
        _SAVE_STATES,
        {
            "key": key,
            "ids": [s[0] for s in states],
            "states": [json_text(s[1]) for s in states],
            "dues": [s[2] for s in states],
        },
    )


async def trait_states(
    *, session: AsyncSession, key: str, after: str, limit: int
) -> list[tuple[str, dict[str, Any]]]:
    """Return the state of one computed trait of active profiles that hold one, in profile id order."""
    rows = await session.execute(
        sa.select(computed_values.c.profile_id, computed_values.c.state)
        .join(profiles, profiles.c.id == computed_values.c.profile_id)
        .where(
            computed_values.c.key == key,
            computed_values.c.profile_id > after,
            profiles.c.status == "active",
        )
        .order_by(computed_values.c.profile_id)
        .limit(limit)
    )
    return [(r.profile_id, r.state) for r in rows]


async def due_profiles(*, session: AsyncSession, now: datetime, limit: int) -> list[str]:
    """Return profiles with a windowed trait whose oldest event has aged out by now.

    States of a deleted trait, until its deletion job has removed them, are never due.
    """
    rows = await session.execute(
        sa.select(computed_values.c.profile_id)
        .where(
            computed_values.c.next_change_at <= now,
            computed_values.c.key.in_(sa.select(computed_definitions.c.key)),
        )
        .group_by(computed_values.c.profile_id)
        .order_by(sa.func.min(computed_values.c.next_change_at))
        .limit(limit)
    )
    return list(rows.scalars())


async def lock_profile_if_free(*, session: AsyncSession, profile_id: str) -> StoredProfile | None:
    """Lock a live profile unless another transaction holds it."""
    row = (
        await session.execute(
            sa.select(profiles)
            .where(profiles.c.id == profile_id, profiles.c.status == "active")
            .with_for_update(skip_locked=True)
        )
    ).first()
    return None if row is None else _profile_of(row)
