"""The profile store: search."""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import sqlalchemy as sa
from sqlalchemy.dialects import postgresql
from sqlalchemy.ext.asyncio import AsyncSession

from cdp_profile.domain.identity import PROFILE_ID
from cdp_profile.domain.traits import common_traits
from cdp_profile.store.accounts import unlink_statement
from cdp_profile.store.identity import resolve_profile_id
from cdp_profile.store.tables import (
    StoredProfile,
    _profile_of,
    computed_values,
    events,
    identifier_links,
    identifiers,
    merges,
    profiles,
    tombstones,
)

# --- search and duplicates ------------------------------------------------------------------------


async def search_profiles(
    *, session: AsyncSession, trait: str, value: Any, after: str | None, limit: int
) -> list[StoredProfile]:
    """Return live profiles whose trait has exactly this value."""
    query = (
        sa.select(profiles)
        .where(
            profiles.c.status == "active",
            profiles.c.traits.op("@>")(sa.cast({trait: {"value": value}}, postgresql.JSONB)),
        )
        .order_by(profiles.c.id)
        .limit(limit)
    )
    if after is not None:
        query = query.where(profiles.c.id > after)
    return [_profile_of(r) for r in await session.execute(query)]


# --- erasure ------------------------------------------------------------------------------------


async def find_by_hash(*, session: AsyncSession, subject_type: str, subject_hash: str) -> str | None:
    """Return the live profile a keyed-hash subject names, following merges."""
    if subject_type == PROFILE_ID:
        found = (
            await session.execute(sa.select(profiles.c.id).where(profiles.c.id_hash == subject_hash))
        ).scalar()
        return None if found is None else await resolve_profile_id(session=session, profile_id=found)
    found = (
        await session.execute(
            sa.select(identifiers.c.profile_id).where(
                identifiers.c.value_hash == subject_hash, identifiers.c.type == subject_type
            )
        )
    ).scalar()
    return None if found is None else await resolve_profile_id(session=session, profile_id=found)


async def merged_away_ids(*, session: AsyncSession, profile_id: str) -> list[str]:
    """Return the ids merged into a profile."""
    rows = await session.execute(
        sa.select(profiles.c.id).where(profiles.c.merged_into == profile_id).order_by(profiles.c.id)
    )
    return list(rows.scalars())


async def erase_profiles(
    *, session: AsyncSession, profile_ids: Sequence[str], request_id: str
) -> dict[str, int]:
    """Delete everything held about these profiles, keeping keyed-hash tombstones of their identifiers."""
    ids = list(profile_ids)
    hashes = set(
        (
            await session.execute(
                sa.select(identifiers.c.value_hash).where(identifiers.c.profile_id.in_(ids))
            )
        ).scalars()
    )
    hashes |= set(
        (await session.execute(sa.select(profiles.c.id_hash).where(profiles.c.id.in_(ids)))).scalars()
    )
    if hashes:
        await session.execute(
            postgresql.insert(tombstones)
            .values([{"value_hash": h, "request_id": request_id} for h in sorted(hashes)])
            .on_conflict_do_nothing()
        )
    counts: dict[str, int] = {}
    for name, statement in (
        ("events", events.delete().where(events.c.profile_id.in_(ids))),
        ("computed_values", computed_values.delete().where(computed_values.c.profile_id.in_(ids))),
        ("identifiers", identifiers.delete().where(identifiers.c.profile_id.in_(ids))),
        ("identifier_links", identifier_links.delete().where(identifier_links.c.profile_id.in_(ids))),
        ("account_links", unlink_statement(ids)),
        (
            "merges",
            merges.delete().where(sa.or_(merges.c.survivor_id.in_(ids), merges.c.absorbed_id.in_(ids))),
        ),
        ("profiles", profiles.delete().where(profiles.c.id.in_(ids))),
    ):
        result = await session.execute(statement)
        counts[name] = int(result.rowcount or 0)  # type: ignore[attr-defined]
    # Messages already relayed or still waiting carry the person's data in clear.
    await session.execute(sa.text("DELETE FROM outbox WHERE key = ANY(CAST(:ids AS text[]))"), {"ids": ids})
    counts["tombstones"] = len(hashes)
    return counts


def profile_document(profile: StoredProfile) -> dict[str, Any]:
    """Return the API form of a profile."""
    return {
        "id": profile.id,
        "version": profile.version,
        "traits": {name: trait.value for name, trait in profile.traits.items()},
        "common_traits": common_traits(profile.traits),
        "computed_traits": profile.computed,
        "identifiers": [{"type": k.type, "value": k.value} for k in profile.identifiers],
        "created_at": profile.created_at.isoformat(),
        "updated_at": profile.updated_at.isoformat(),
    }
