"""Queries of the claims segments hold on profile's computed traits (see migration 0005)."""

from __future__ import annotations

from collections.abc import Collection
from dataclasses import dataclass
from typing import Any

import sqlalchemy as sa
from sqlalchemy.dialects import postgresql
from sqlalchemy.ext.asyncio import AsyncSession

from cdp_segment.store import computed_trait_requests

metadata = sa.MetaData()

claims = sa.Table(
    "computed_trait_claims",
    metadata,
    sa.Column("key", sa.Text, primary_key=True),
    sa.Column("segment_key", sa.Text, primary_key=True),
    sa.Column("claimed", sa.Boolean, nullable=False),
    sa.Column("released", sa.Boolean, nullable=False),
    sa.Column("error", sa.Text),
)


@dataclass(frozen=True)
class Claim:
    """A segment's claim on a computed trait that profile has not settled yet, and the trait's spec."""

    key: str
    segment_key: str
    released: bool
    spec: dict[str, Any] | None


async def claim_traits(*, session: AsyncSession, segment_key: str, keys: Collection[str]) -> None:
    """Record that a segment relies on exactly these computed traits: new ones are claimed, the
    ones it no longer uses are released."""
    if keys:
        statement = postgresql.insert(claims).values(
            [{"key": key, "segment_key": segment_key, "claimed": False, "released": False} for key in keys]
        )
        await session.execute(
            statement.on_conflict_do_update(
                index_elements=[claims.c.key, claims.c.segment_key], set_={"released": False}
            )
        )
    await session.execute(
        claims.update()
        .where(claims.c.segment_key == segment_key, claims.c.key.not_in(list(keys)))
        .values(released=True)
    )


async def unsettled_claims(*, session: AsyncSession) -> list[Claim]:
    """Return the claims profile has not recorded yet and the releases it has not, with each spec."""
    rows = await session.execute(
        sa.select(claims.c.key, claims.c.segment_key, claims.c.released, computed_trait_requests.c.spec)
        .select_from(claims.outerjoin(computed_trait_requests, computed_trait_requests.c.key == claims.c.key))
        .where(sa.or_(claims.c.released, sa.not_(claims.c.claimed)))
        .order_by(claims.c.key, claims.c.segment_key)
    )
    return [Claim(key=r.key, segment_key=r.segment_key, released=r.released, spec=r.spec) for r in rows]


async def settle_claim(*, session: AsyncSession, claim: Claim, error: str | None) -> None:
    """Record what profile answered for a claim: claimed, released (forgotten), or the error to retry."""
    where = (claims.c.key == claim.key, claims.c.segment_key == claim.segment_key)
    if error is not None:
        await session.execute(claims.update().where(*where).values(error=error))
    elif claim.released:
        await session.execute(claims.delete().where(*where, claims.c.released))
        # Claimed again meanwhile: profile has let go of the owner, so it is claimed anew.
        await session.execute(claims.update().where(*where).values(claimed=False))
    else:
        await session.execute(claims.update().where(*where).values(claimed=True, error=None))
