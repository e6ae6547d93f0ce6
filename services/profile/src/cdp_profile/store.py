"""Tables and queries of the profile service, in its own schema."""

from __future__ import annotations

from dataclasses import dataclass
from datetime import datetime
from typing import Any

import sqlalchemy as sa
from sqlalchemy.dialects import postgresql
from sqlalchemy.ext.asyncio import AsyncSession

from cdp_profile.domain.identity import IdentifierKey
from cdp_profile.domain.traits import TraitValue

metadata = sa.MetaData()

profiles = sa.Table(
    "profiles",
    metadata,
    sa.Column("id", sa.Text, primary_key=True),
    sa.Column("version", sa.BigInteger, nullable=False),
    sa.Column("traits", postgresql.JSONB, nullable=False, server_default=sa.text("'{}'::jsonb")),
    sa.Column("merged_into", sa.Text),
    sa.Column("created_at", sa.DateTime(timezone=True), nullable=False, server_default=sa.func.now()),
    sa.Column("updated_at", sa.DateTime(timezone=True), nullable=False, server_default=sa.func.now()),
)

identifiers = sa.Table(
    "identifiers",
    metadata,
    sa.Column("type", sa.Text, primary_key=True),
    sa.Column("value", sa.Text, primary_key=True),
    sa.Column("profile_id", sa.Text, sa.ForeignKey("profiles.id"), nullable=False, index=True),
    sa.Column("first_seen_at", sa.DateTime(timezone=True), nullable=False, server_default=sa.func.now()),
)


@dataclass
class StoredProfile:
    """A profile as held: its version, traits with provenance, identifiers."""

    id: str
    version: int
    traits: dict[str, TraitValue]
    identifiers: list[IdentifierKey]
    created_at: datetime
    updated_at: datetime


async def find_profile_ids(*, session: AsyncSession, keys: list[IdentifierKey]) -> dict[IdentifierKey, str]:
    """Return the profile each known identifier belongs to, locking those rows."""
    if not keys:
        return {}
    condition = sa.tuple_(identifiers.c.type, identifiers.c.value).in_([(k.type, k.value) for k in keys])
    rows = (
        await session.execute(
            sa.select(identifiers.c.type, identifiers.c.value, identifiers.c.profile_id)
            .where(condition)
            .order_by(identifiers.c.type, identifiers.c.value)
            .with_for_update()
        )
    ).all()
    return {IdentifierKey(r.type, r.value): r.profile_id for r in rows}


async def create_profile(*, session: AsyncSession, profile_id: str) -> None:
    """Insert an empty profile at version 0."""
    await session.execute(profiles.insert().values(id=profile_id, version=0))


async def attach_identifiers(
    *, session: AsyncSession, profile_id: str, keys: list[IdentifierKey]
) -> list[IdentifierKey]:
    """Attach identifiers that belong to no profile yet; return those attached."""
    attached: list[IdentifierKey] = []
    for key in sorted(keys):
        statement = (
            postgresql.insert(identifiers)
            .values(type=key.type, value=key.value, profile_id=profile_id)
            .on_conflict_do_nothing()
            .returning(identifiers.c.type)
        )
        if (await session.execute(statement)).first() is not None:
            attached.append(key)
    return attached


async def load_profile(
    *, session: AsyncSession, profile_id: str, for_update: bool = False
) -> StoredProfile | None:
    """Load a profile with its identifiers."""
    query = sa.select(profiles).where(profiles.c.id == profile_id)
    if for_update:
        query = query.with_for_update()
    row = (await session.execute(query)).mappings().first()
    if row is None:
        return None
    keys = (
        await session.execute(
            sa.select(identifiers.c.type, identifiers.c.value)
            .where(identifiers.c.profile_id == profile_id)
            .order_by(identifiers.c.type, identifiers.c.value)
        )
    ).all()
    return StoredProfile(
        id=row["id"],
        version=row["version"],
        traits={name: TraitValue.from_json(raw) for name, raw in row["traits"].items()},
        identifiers=[IdentifierKey(k.type, k.value) for k in keys],
        created_at=row["created_at"],
        updated_at=row["updated_at"],
    )


async def save_profile_change(
    *, session: AsyncSession, profile_id: str, changed_traits: dict[str, TraitValue]
) -> int:
    """Merge changed traits into the profile and bump its version; return the new version."""
    patch = {name: trait.to_json() for name, trait in changed_traits.items()}
    statement = (
        profiles.update()
        .where(profiles.c.id == profile_id)
        .values(
            traits=profiles.c.traits.op("||")(sa.cast(patch, postgresql.JSONB)),
            version=profiles.c.version + 1,
            updated_at=sa.func.now(),
        )
        .returning(profiles.c.version)
    )
    version: int = (await session.execute(statement)).scalar_one()
    return version


async def resolve_ref(*, session: AsyncSession, key: IdentifierKey | None, ref: str) -> str | None:
    """Return the profile id a reference names: an identifier or a profile id (following merges)."""
    if key is not None:
        found = await session.execute(
            sa.select(identifiers.c.profile_id).where(
                identifiers.c.type == key.type, identifiers.c.value == key.value
            )
        )
        return found.scalar_one_or_none()
    row = (
        await session.execute(sa.select(profiles.c.id, profiles.c.merged_into).where(profiles.c.id == ref))
    ).first()
    if row is None:
        return None
    return str(row.merged_into or row.id)


def profile_document(profile: StoredProfile) -> dict[str, Any]:
    """Return the API form of a profile."""
    return {
        "id": profile.id,
        "version": profile.version,
        "traits": {name: trait.value for name, trait in profile.traits.items()},
        "identifiers": [{"type": k.type, "value": k.value} for k in profile.identifiers],
        "created_at": profile.created_at.isoformat(),
        "updated_at": profile.updated_at.isoformat(),
    }
