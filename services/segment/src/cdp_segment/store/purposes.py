"""The consent purposes gating segment, evaluated over the copy's consents in SQL.

The copy keeps each profile's decisions keyed `purpose:channel` (`{"status", "at"}`); the
predicate here applies the same `ExclusionRule` as `cdp_common.purposes.excluded_from` does in
Python: excluded on a refusal on any channel and, when the purpose needs a grant, without one.
The bases in force when segment last started are kept (migration 0007), so a change is noticed.
"""

from __future__ import annotations

import json

import sqlalchemy as sa
from cdp_common.purposes import GRANTED, PROFILING, PurposePolicy
from sqlalchemy.dialects import postgresql
from sqlalchemy.dialects.postgresql import JSONB, JSONPATH
from sqlalchemy.ext.asyncio import AsyncSession
from sqlalchemy.sql.elements import ColumnElement

from cdp_segment.store import metadata, profiles

purpose_bases = sa.Table(
    "purpose_bases",
    metadata,
    sa.Column("purpose", sa.Text, primary_key=True),
    sa.Column("basis", sa.Text, nullable=False),
    sa.Column("since", sa.DateTime(timezone=True), server_default=sa.func.now()),
)


def _any_decision(statuses: frozenset[str], purpose: str) -> ColumnElement[bool]:
    """Whether the copy holds one of these statuses for a purpose on some channel."""
    test = " || ".join(f"@.value.status == {json.dumps(status)}" for status in sorted(statuses))
    path = f"$.keyvalue() ? (@.key starts with $prefix && ({test}))"
    return sa.func.jsonb_path_exists(
        profiles.c.consents,
        sa.cast(sa.literal(path), JSONPATH),
        sa.cast(sa.literal(json.dumps({"prefix": f"{purpose}:"})), JSONB),
        type_=sa.Boolean,
    )


def withheld(policy: PurposePolicy, purpose: str = PROFILING) -> ColumnElement[bool]:
    """Return the predicate of the profiles excluded from a purpose."""
    rule = policy.rule(purpose)
    refused = _any_decision(rule.refusals, purpose)
    if not rule.needs_grant:
        return refused
    return sa.or_(refused, sa.not_(_any_decision(frozenset({GRANTED}), purpose)))


async def record_bases(*, session: AsyncSession, bases: dict[str, str]) -> bool:
    """Keep the bases the gated purposes rest on now; True when they differ from those kept (or none were)."""
    rows = await session.execute(sa.select(purpose_bases.c.purpose, purpose_bases.c.basis))
    held = {purpose: basis for purpose, basis in rows}
    if held == bases:
        return False
    await session.execute(purpose_bases.delete())
    await session.execute(
        postgresql.insert(purpose_bases).values(
            [{"purpose": p, "basis": b} for p, b in sorted(bases.items())]
        )
    )
    return True
