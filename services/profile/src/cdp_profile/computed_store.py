"""Tables and queries of who owns a computed trait, and of the deletions whose states are still
being removed (see migration 0006)."""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import sqlalchemy as sa
from cdp_common.db import forget_for_transaction
from sqlalchemy.dialects import postgresql
from sqlalchemy.ext.asyncio import AsyncSession

from cdp_profile.store import (
    CONFIGURATION,
    DEFINITIONS_LOCK,
    computed_definitions,
    computed_values,
    profiles,
)

metadata = sa.MetaData()

owners = sa.Table(
    "computed_trait_owners",
    metadata,
    sa.Column("key", sa.Text, primary_key=True),
    sa.Column("owner", sa.Text, primary_key=True),
    sa.Column("created_at", sa.DateTime(timezone=True), nullable=False, server_default=sa.func.now()),
)

purges = sa.Table(
    "computed_trait_purges",
    metadata,
    sa.Column("key", sa.Text, primary_key=True),
    sa.Column("job_id", sa.Text, nullable=False),
    sa.Column("created_at", sa.DateTime(timezone=True), nullable=False, server_default=sa.func.now()),
)


async def lock_definitions(*, session: AsyncSession) -> None:
    """Take the definitions lock exclusively: every transaction that read the definitions has ended."""
    await session.execute(sa.select(sa.func.pg_advisory_xact_lock(DEFINITIONS_LOCK)))


async def add_owner(*, session: AsyncSession, key: str, owner: str) -> None:
    """Record an owner of a definition (once)."""
    await session.execute(postgresql.insert(owners).values(key=key, owner=owner).on_conflict_do_nothing())


async def remove_owner(*, session: AsyncSession, key: str, owner: str) -> bool:
    """Forget an owner of a definition; False when it was not one."""
    result = await session.execute(
        owners.delete().where(owners.c.key == key, owners.c.owner == owner).returning(owners.c.owner)
    )
    return result.first() is not None


async def owners_of(*, session: AsyncSession, keys: Sequence[str]) -> dict[str, list[str]]:
    """Return the owners of each of these definitions, sorted (an empty list for one without)."""
    found: dict[str, list[str]] = {key: [] for key in keys}
    rows = await session.execute(
        sa.select(owners.c.key, owners.c.owner).where(owners.c.key.in_(keys)).order_by(owners.c.owner)
    )
    for key, owner in rows:
        found[key].append(owner)
    return found


async def purge_job_of(*, session: AsyncSession, key: str) -> str | None:
    """Return the job removing a deleted definition's states, while there is one."""
    job_id = await session.scalar(sa.select(purges.c.job_id).where(purges.c.key == key))
    return None if job_id is None else str(job_id)


async def delete_definition(*, session: AsyncSession, key: str, purge_job_id: str) -> None:
    """Delete a definition (its owners with it) and record the job that removes its states.

    Run under the exclusive definitions lock, so no transaction folds events into it afterwards.
    """
    await session.execute(computed_definitions.delete().where(computed_definitions.c.key == key))
    await session.execute(postgresql.insert(purges).values(key=key, job_id=purge_job_id))
    forget_for_transaction(session, CONFIGURATION)


async def lock_definition(*, session: AsyncSession, key: str) -> Any:
    """Return a definition's row, locked for the rest of the transaction, or None."""
    return (
        await session.execute(
            sa.select(computed_definitions).where(computed_definitions.c.key == key).with_for_update()
        )
    ).first()


async def count_states(*, session: AsyncSession, key: str) -> int:
    """Return how many profiles hold a state of a key."""
    count = await session.scalar(
        sa.select(sa.func.count()).select_from(computed_values).where(computed_values.c.key == key)
    )
    return int(count or 0)


async def purge_states(*, session: AsyncSession, key: str, limit: int) -> int:
    """Remove up to `limit` states of a deleted key and its value from those profiles; return how many.

    The profiles are locked in id order, the order every writer locks them in.
    """
    batch = (
        sa.select(computed_values.c.profile_id)
        .where(computed_values.c.key == key)
        .order_by(computed_values.c.profile_id)
        .limit(limit)
    )
    profile_ids = list((await session.execute(batch)).scalars())
    if not profile_ids:
        return 0
    await session.execute(
        sa.select(profiles.c.id)
        .where(profiles.c.id.in_(profile_ids))
        .order_by(profiles.c.id)
        .with_for_update()
    )
    await session.execute(
        profiles.update()
        .where(profiles.c.id.in_(profile_ids), profiles.c.computed.has_key(key))
        .values(computed=profiles.c.computed.op("-")(sa.literal(key, sa.Text)))
    )
    await session.execute(
        computed_values.delete().where(
            computed_values.c.key == key, computed_values.c.profile_id.in_(profile_ids)
        )
    )
    return len(profile_ids)


async def finish_purge(*, session: AsyncSession, key: str) -> None:
    """Forget a finished deletion: the key may be defined again."""
    await session.execute(purges.delete().where(purges.c.key == key))
