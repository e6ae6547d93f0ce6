"""The consent purposes gating segment, evaluated over the copy's consents in SQL.

The copy keeps each profile's decisions keyed `purpose:channel` (`{"status", "at"}`); the
predicate here applies the same `ExclusionRule` as `cdp_common.purposes.excluded_from` does in
Python: excluded on a refusal on any channel and, when the purpose needs a grant, without one.
"""

from __future__ import annotations

import json

import sqlalchemy as sa
from cdp_common.purposes import GRANTED, PROFILING, PurposePolicy
from sqlalchemy.dialects.postgresql import JSONB, JSONPATH
from sqlalchemy.sql.elements import ColumnElement

from cdp_segment.store import profiles


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
