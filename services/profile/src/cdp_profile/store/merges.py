"""The profile store: merges."""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import sqlalchemy as sa
from sqlalchemy.dialects import postgresql
from sqlalchemy.ext.asyncio import AsyncSession

from cdp_profile.domain.identity import IdentifierKey
from cdp_profile.store.accounts import move_account_links, move_account_links_back
from cdp_profile.store.orders import move_orders
from cdp_profile.store.tables import events, identifiers, kept_apart, merges, profiles

# --- merges --------------------------------------------------------------------------------------


async def move_profile_contents(
    *, session: AsyncSession, absorbed_id: str, survivor_id: str
) -> list[IdentifierKey]:
    """Move identifiers, events, account links and earlier merged-away ids of one profile to another;
    return moved keys."""
    moved = await session.execute(
        identifiers.update()
        .where(identifiers.c.profile_id == absorbed_id)
        .values(profile_id=survivor_id)
        .returning(identifiers.c.type, identifiers.c.value)
    )
    keys = sorted(IdentifierKey(r.type, r.value) for r in moved)
    await session.execute(
        events.update().where(events.c.profile_id == absorbed_id).values(profile_id=survivor_id)
    )
    await session.execute(
        profiles.update().where(profiles.c.merged_into == absorbed_id).values(merged_into=survivor_id)
    )
    await _carry_apart(session=session, absorbed_id=absorbed_id, survivor_id=survivor_id)
    await move_orders(session=session, absorbed_id=absorbed_id, survivor_id=survivor_id)
    await move_account_links(session=session, absorbed_id=absorbed_id, survivor_id=survivor_id)
    return keys


async def _carry_apart(*, session: AsyncSession, absorbed_id: str, survivor_id: str) -> None:
    """Whoever was kept apart from the absorbed profile stays apart from its survivor."""
    rows = (
        await session.execute(
            kept_apart.delete()
            .where(sa.or_(kept_apart.c.profile_id == absorbed_id, kept_apart.c.other_id == absorbed_id))
            .returning(kept_apart.c.profile_id, kept_apart.c.other_id, kept_apart.c.merge_id)
        )
    ).all()
    carried = {
        (
            survivor_id if r.profile_id == absorbed_id else r.profile_id,
            survivor_id if r.other_id == absorbed_id else r.other_id,
        ): r.merge_id
        for r in rows
    }
    await keep_apart_pairs(session=session, pairs=[(a, b, m) for (a, b), m in carried.items() if a != b])


async def keep_apart_pairs(*, session: AsyncSession, pairs: Sequence[tuple[str, str, str]]) -> None:
    """Keep (profile, other, merge id) pairs apart, in both directions."""
    rows = [
        {"profile_id": x, "other_id": y, "merge_id": merge_id}
        for a, b, merge_id in pairs
        for x, y in ((a, b), (b, a))
    ]
    if rows:
        await session.execute(postgresql.insert(kept_apart).on_conflict_do_nothing(), rows)


async def forget_apart(*, session: AsyncSession, profile_ids: Sequence[str]) -> None:
    """Stop keeping these profiles apart from one another (an operator merged them)."""
    await session.execute(
        kept_apart.delete().where(
            kept_apart.c.profile_id.in_(list(profile_ids)), kept_apart.c.other_id.in_(list(profile_ids))
        )
    )


async def apart_among(*, session: AsyncSession, profile_ids: Sequence[str]) -> set[frozenset[str]]:
    """Return the pairs among these profiles that an operator's split keeps apart."""
    if len(profile_ids) < 2:
        return set()
    rows = await session.execute(
        sa.select(kept_apart.c.profile_id, kept_apart.c.other_id).where(
            kept_apart.c.profile_id.in_(list(profile_ids)), kept_apart.c.other_id.in_(list(profile_ids))
        )
    )
    return {frozenset((r.profile_id, r.other_id)) for r in rows}


async def append_ledger(
    *,
    session: AsyncSession,
    merge_id: str,
    kind: str,
    survivor_id: str,
    absorbed_id: str,
    rule: str,
    reason: dict[str, Any],
    event_id: str | None,
    moved: Sequence[IdentifierKey],
) -> None:
    """Append one row to the merge ledger."""
    await session.execute(
        merges.insert().values(
            merge_id=merge_id,
            kind=kind,
            survivor_id=survivor_id,
            absorbed_id=absorbed_id,
            rule=rule,
            reason=reason,
            event_id=event_id,
            identifiers=[{"type": k.type, "value": k.value} for k in moved],
        )
    )


async def ledger_of(*, session: AsyncSession, profile_ids: Sequence[str]) -> list[dict[str, Any]]:
    """Return the ledger rows that involve any of the profiles, oldest first."""
    rows = await session.execute(
        sa.select(merges)
        .where(
            sa.or_(merges.c.survivor_id.in_(list(profile_ids)), merges.c.absorbed_id.in_(list(profile_ids)))
        )
        .order_by(merges.c.seq)
    )
    return [
        {
            "merge_id": r.merge_id,
            "kind": r.kind,
            "survivor_id": r.survivor_id,
            "absorbed_id": r.absorbed_id,
            "rule": r.rule,
            "reason": r.reason,
            "event_id": r.event_id,
            "identifiers": r.identifiers,
            "at": r.at.isoformat(),
        }
        for r in rows
    ]


async def ledger_entry(*, session: AsyncSession, merge_id: str) -> dict[str, Any] | None:
    """Return a merge and whether it was split since."""
    rows = (
        await session.execute(sa.select(merges).where(merges.c.merge_id == merge_id).order_by(merges.c.seq))
    ).all()
    merge = next((r for r in rows if r.kind == "merge"), None)
    if merge is None:
        return None
    return {
        "merge_id": merge.merge_id,
        "survivor_id": merge.survivor_id,
        "absorbed_id": merge.absorbed_id,
        "seq": merge.seq,
        "identifiers": [IdentifierKey(i["type"], i["value"]) for i in merge.identifiers],
        "split": any(r.kind == "split" for r in rows),
    }


async def family_of(*, session: AsyncSession, profile_id: str, before_seq: int) -> list[str]:
    """Return the profile and every profile merged into it (transitively) before a ledger position, not split."""
    rows = (await session.execute(sa.select(merges).order_by(merges.c.seq))).all()
    split = {r.merge_id for r in rows if r.kind == "split"}
    family = {profile_id}
    for row in rows:
        if (
            row.kind == "merge"
            and row.seq < before_seq
            and row.merge_id not in split
            and row.survivor_id in family
        ):
            family.add(row.absorbed_id)
    return sorted(family)


async def move_back(
    *,
    session: AsyncSession,
    survivor_id: str,
    restored_id: str,
    family: Sequence[str],
    keys: Sequence[IdentifierKey],
) -> None:
    """Give a restored profile back its family's events, their identifiers, account links and its
    merged-away ids."""
    await session.execute(
        events.update()
        .where(events.c.profile_id == survivor_id, events.c.origin_profile_id.in_(list(family)))
        .values(profile_id=restored_id)
    )
    own_events = sa.select(events.c.event_id).where(events.c.profile_id == restored_id)
    condition: sa.ColumnElement[bool] = identifiers.c.event_id.in_(own_events)
    if keys:
        condition = sa.or_(
            condition,
            sa.tuple_(identifiers.c.type, identifiers.c.value).in_([(k.type, k.value) for k in keys]),
        )
    await session.execute(
        identifiers.update()
        .where(identifiers.c.profile_id == survivor_id, condition)
        .values(profile_id=restored_id)
    )
    await move_account_links_back(
        session=session, survivor_id=survivor_id, restored_id=restored_id, family=family
    )
    others = [pid for pid in family if pid != restored_id]
    if others:
        await session.execute(
            profiles.update().where(profiles.c.id.in_(others)).values(merged_into=restored_id)
        )
