"""A service's record of the profiles it has heard of, kept from cdp.profiles.v1.

Segment, campaign and consent each keep one in their own schema: the latest version
applied per profile (so an older message never overwrites a newer one), where a
merged-away profile went, and nothing once a profile is erased.
"""

from __future__ import annotations

import functools
from collections.abc import Sequence
from datetime import datetime
from typing import Any

import sqlalchemy as sa
from sqlalchemy.ext.asyncio import AsyncSession

from cdp_common.envelope import Envelope, Payload
from cdp_common.events import (
    ProfileChanged,
    ProfileCreated,
    ProfileErased,
    ProfileMerged,
    ProfileSplit,
    ProfileUpdated,
)
from cdp_common.kafka import Handler
from cdp_common.privacy import EraseProfiles, erasure_handler


def known_profiles_table(metadata: sa.MetaData) -> sa.Table:
    """Define the known-profiles table in a service's metadata."""
    return sa.Table(
        "known_profiles",
        metadata,
        sa.Column("profile_id", sa.Text, primary_key=True),
        sa.Column("version", sa.BigInteger, nullable=False),
        sa.Column("merged_into", sa.Text),
        sa.Column("first_seen_at", sa.DateTime(timezone=True), nullable=False, server_default=sa.func.now()),
        sa.Column("updated_at", sa.DateTime(timezone=True), nullable=False, server_default=sa.func.now()),
    )


@functools.cache
def _versions_upsert(table_name: str) -> sa.TextClause:
    """Build a table's version upsert once: every poll runs it, with only its arrays bound."""
    return sa.text(
        f"INSERT INTO {table_name} (profile_id, version, merged_into)"  # noqa: S608 - a table name of our own
        " SELECT * FROM unnest(CAST(:profile_ids AS text[]), CAST(:versions AS bigint[]),"
        " CAST(:merged_into AS text[]))"
        " ON CONFLICT (profile_id) DO UPDATE SET version = excluded.version,"
        f" merged_into = excluded.merged_into, updated_at = now() WHERE {table_name}.version < excluded.version"
        " RETURNING profile_id"
    )


async def apply_profile_version(
    *, session: AsyncSession, table: sa.Table, profile_id: str, version: int, merged_into: str | None = None
) -> bool:
    """Record a profile at a version unless a newer one is held; True when it was newer."""
    applied = await apply_profile_versions(
        session=session, table=table, versions=[(profile_id, version, merged_into)]
    )
    return profile_id in applied


async def apply_profile_versions(
    *, session: AsyncSession, table: sa.Table, versions: Sequence[tuple[str, int, str | None]]
) -> set[str]:
    """Record (profile id, version, merged into) in one statement, as one after another would; return those newer.

    Of a profile's entries only its newest (the first of equal ones) can take effect, so it alone is sent.
    """
    newest: dict[str, tuple[int, str | None]] = {}
    for profile_id, version, merged_into in versions:
        if profile_id not in newest or version > newest[profile_id][0]:
            newest[profile_id] = (version, merged_into)
    if not newest:
        return set()
    result = await session.execute(
        _versions_upsert(table.name),
        {
            "profile_ids": list(newest),
            "versions": [version for version, _ in newest.values()],
            "merged_into": [merged_into for _, merged_into in newest.values()],
        },
    )
    return set(result.scalars())


def profile_version_handlers(table: sa.Table) -> dict[type[Payload], Handler]:
    """Return handlers that keep the known-profiles table current, by payload type."""

    async def on_profile_changed(*, session: AsyncSession, envelope: Envelope[Any]) -> None:
        data: ProfileChanged = envelope.data
        await apply_profile_version(
            session=session, table=table, profile_id=data.profile_id, version=data.version
        )

    async def on_profile_merged(*, session: AsyncSession, envelope: Envelope[Any]) -> None:
        data: ProfileMerged = envelope.data
        await apply_profile_version(
            session=session, table=table, profile_id=data.profile_id, version=data.version
        )
        await apply_profile_version(
            session=session,
            table=table,
            profile_id=data.absorbed_profile_id,
            version=data.version,
            merged_into=data.profile_id,
        )

    async def on_profile_split(*, session: AsyncSession, envelope: Envelope[Any]) -> None:
        data: ProfileSplit = envelope.data
        for profile_id in (data.profile_id, data.restored_profile_id):
            await apply_profile_version(
                session=session, table=table, profile_id=profile_id, version=data.version
            )

    return {
        ProfileCreated: on_profile_changed,
        ProfileUpdated: on_profile_changed,
        ProfileMerged: on_profile_merged,
        ProfileSplit: on_profile_split,
    }


async def erase_known_profiles(*, session: AsyncSession, table: sa.Table, profile_ids: list[str]) -> int:
    """Delete the records of erased profiles; return how many went."""
    result = await session.execute(table.delete().where(table.c.profile_id.in_(profile_ids)))
    return int(getattr(result, "rowcount", 0) or 0)


async def export_known_profile(
    *, session: AsyncSession, table: sa.Table, profile_id: str
) -> dict[str, Any] | None:
    """Return what the table holds about one profile, for an access request."""
    row = (await session.execute(sa.select(table).where(table.c.profile_id == profile_id))).mappings().first()
    if row is None:
        return None
    return {key: value.isoformat() if isinstance(value, datetime) else value for key, value in row.items()}


def profiles_consumer_handlers(
    *, service: str, privacy_topic: str, table: sa.Table, erase: EraseProfiles
) -> dict[type[Payload], Handler]:
    """Return the cdp.profiles.v1 handlers of a service that keeps a known-profiles table."""
    handlers = profile_version_handlers(table)
    handlers[ProfileErased] = erasure_handler(service=service, privacy_topic=privacy_topic, erase=erase)
    return handlers
