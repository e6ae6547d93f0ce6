"""The campaign store: every send with its status and skip reason, engagement, and the report and
timeline read from them."""

from __future__ import annotations

import hashlib
from collections.abc import Sequence
from datetime import datetime
from typing import Any

import sqlalchemy as sa
from sqlalchemy.dialects import postgresql
from sqlalchemy.ext.asyncio import AsyncSession

from cdp_campaign.store.tables import (
    _any_of,
    _dicts,
    campaigns,
    engagements,
    sends,
)

# Statuses of a send: queued → handing_over → sent | bounced | failed | unknown;
# or skipped (with a reason), deferred (quiet hours, until not_before), holdout.
HANDED_STATUSES = ("handing_over", "sent", "unknown")


def profile_hash(*, key: str, profile_id: str) -> str:
    """Return the keyed hash a send keeps of its profile id, which survives erasure."""
    return hashlib.sha256(f"{key}:profile:{profile_id}".encode()).hexdigest()


def send_id_for(*, source: str, source_id: str, step: int | None, run_key: str, profile_id: str) -> str:
    """Return the id of the one send a person may get for a message; the same inputs give the same id."""
    digest = hashlib.sha256(f"{source}:{source_id}:{step}:{run_key}:{profile_id}".encode()).hexdigest()
    return "snd_" + digest[:32]


async def insert_sends(*, session: AsyncSession, rows: list[dict[str, Any]]) -> list[str]:
    """Record sends that do not exist yet; return the ids that are new."""
    new: list[str] = []
    for start in range(0, len(rows), 1000):
        chunk = rows[start : start + 1000]
        statement = postgresql.insert(sends).values(chunk).on_conflict_do_nothing().returning(sends.c.id)
        new.extend((await session.execute(statement)).scalars())
    return new


async def sends_by_id(*, session: AsyncSession, send_ids: Sequence[str]) -> list[dict[str, Any]]:
    """Return sends by id."""
    rows = await session.execute(sa.select(sends).where(_any_of(sends.c.id, send_ids)).order_by(sends.c.id))
    return _dicts(rows)


async def get_send(*, session: AsyncSession, send_id: str) -> dict[str, Any] | None:
    """Return one send."""
    row = (await session.execute(sa.select(sends).where(sends.c.id == send_id))).mappings().first()
    return None if row is None else dict(row)


async def set_send_status(
    *,
    session: AsyncSession,
    send_ids: Sequence[str],
    status: str,
    from_statuses: Sequence[str],
    **values: Any,
) -> list[str]:
    """Move sends from one of some statuses to another; return the ids that moved."""
    if not send_ids:
        return []
    statement = (
        sends.update()
        .where(_any_of(sends.c.id, send_ids), sends.c.status.in_(list(from_statuses)))
        .values(status=status, updated_at=sa.func.now(), **values)
        .returning(sends.c.id)
    )
    return list((await session.execute(statement)).scalars())


async def claim_sends(*, session: AsyncSession, addresses: dict[str, str], at: datetime) -> list[str]:
    """Mark queued sends as handing over to their addresses in one statement; return the ids claimed."""
    if not addresses:
        return []
    claimed = (
        sa.func.unnest(
            sa.bindparam("claim_ids", list(addresses), type_=postgresql.ARRAY(sa.Text)),
            sa.bindparam("claim_addresses", list(addresses.values()), type_=postgresql.ARRAY(sa.Text)),
        )
        .table_valued("id", "address")
        .render_derived(name="claimed")
    )
    statement = (
        sends.update()
        .where(sends.c.id == claimed.c.id, sends.c.status == "queued")
        .values(
            status="handing_over",
            address=claimed.c.address,
            claimed_at=at,
            handed_at=at,
            updated_at=sa.func.now(),
        )
        .returning(sends.c.id)
    )
    return list((await session.execute(statement)).scalars())


async def lock_contact_windows(*, session: AsyncSession, pairs: Sequence[tuple[str, str]]) -> None:
    """Serialise, until commit, the claims of sends to these (profile, channel) pairs, in one order."""
    if not pairs:
        return
    keys = sorted({f"{profile_id}\x1f{channel}" for profile_id, channel in pairs})
    await session.execute(
        sa.text(
            "SELECT pg_advisory_xact_lock(h) FROM (SELECT hashtextextended('cdp-cap:' || k, 0) AS h"
            " FROM unnest(CAST(:keys AS text[])) AS k ORDER BY 1) AS ordered"
        ),
        {"keys": keys},
    )


async def handed_counts(
    *, session: AsyncSession, profile_ids: Sequence[str], channel: str, since: datetime
) -> dict[str, int]:
    """Count messages handed over per profile on a channel since a time, across all campaigns."""
    if not profile_ids:
        return {}
    rows = await session.execute(
        sa.select(sends.c.profile_id, sa.func.count())
        .where(
            sends.c.profile_id.in_(list(profile_ids)),
            sends.c.channel == channel,
            sends.c.status.in_(HANDED_STATUSES),
            sends.c.handed_at >= since,
        )
        .group_by(sends.c.profile_id)
    )
    return {pid: int(n) for pid, n in rows}


async def queued_send_ids(*, session: AsyncSession, source: str, source_id: str) -> list[str]:
    """Return the ids of sends of a campaign or journey still waiting for a worker."""
    rows = await session.execute(
        sa.select(sends.c.id).where(
            sends.c.source == source, sends.c.source_id == source_id, sends.c.status == "queued"
        )
    )
    return list(rows.scalars())


async def release_deferred(*, session: AsyncSession, now: datetime) -> list[str]:
    """Queue again the sends whose quiet hours are over; return their ids."""
    statement = (
        sends.update()
        .where(sends.c.status == "deferred", sends.c.not_before <= now)
        .values(status="queued", updated_at=sa.func.now())
        .returning(sends.c.id)
    )
    return list((await session.execute(statement)).scalars())


async def pending_count(*, session: AsyncSession, source: str, source_id: str) -> int:
    """Count sends of a campaign not yet decided (queued or deferred)."""
    query = sa.select(sa.func.count()).where(
        sends.c.source == source, sends.c.source_id == source_id, sends.c.status.in_(("queued", "deferred"))
    )
    return int((await session.execute(query)).scalar_one())


async def open_sends_for_goal(
    *, session: AsyncSession, profile_id: str, event: str, at: datetime
) -> list[dict[str, Any]]:
    """Return a profile's campaign sends (and holdout assignments) whose goal is this event, within the window."""
    window_hours = campaigns.c.spec["goal"]["window_hours"].as_integer()
    query = (
        sa.select(sends.c.id)
        .join(campaigns, sa.and_(sends.c.source == "campaign", campaigns.c.id == sends.c.source_id))
        .where(
            sends.c.profile_id == profile_id,
            sends.c.status.in_(("handing_over", "sent", "unknown", "holdout")),
            campaigns.c.spec["goal"]["event"].as_string() == event,
            sa.func.coalesce(sends.c.handed_at, sends.c.created_at) <= at,
            sa.func.coalesce(sends.c.handed_at, sends.c.created_at)
            + window_hours * sa.text("interval '1 hour'")
            >= at,
        )
    )
    return [dict(r) for r in (await session.execute(query)).mappings()]


async def record_engagement(
    *,
    session: AsyncSession,
    send_id: str,
    kind: str,
    at: datetime,
    url: str | None = None,
    revenue: float | None = None,
    dedupe_key: str | None = None,
) -> bool:
    """Record an open, click, unsubscribe or conversion; False for a duplicate."""
    statement = (
        postgresql.insert(engagements)
        .values(send_id=send_id, kind=kind, at=at, url=url, revenue=revenue, dedupe_key=dedupe_key)
        .on_conflict_do_nothing()
        .returning(engagements.c.id)
    )
    return (await session.execute(statement)).first() is not None


async def revalue_conversions(
    *, session: AsyncSession, profile_id: str, dedupe_key: str, revenue: float | None
) -> int:
    """Set the revenue of a profile's conversions recorded under a key (an order's); return how many."""
    statement = (
        engagements.update()
        .where(
            engagements.c.send_id == sends.c.id,
            sends.c.profile_id == profile_id,
            engagements.c.kind == "converted",
            engagements.c.dedupe_key == dedupe_key,
        )
        .values(revenue=revenue)
    )
    result = await session.execute(statement)
    return int(getattr(result, "rowcount", 0) or 0)


async def engaged(
    *, session: AsyncSession, source: str, source_id: str, profile_id: str, kinds: Sequence[str]
) -> bool:
    """Whether a profile engaged in one of some ways with a campaign's or journey's messages."""
    query = (
        sa.select(sa.literal(1))
        .select_from(engagements.join(sends, sends.c.id == engagements.c.send_id))
        .where(
            sends.c.source == source,
            sends.c.source_id == source_id,
            sends.c.profile_id == profile_id,
            engagements.c.kind.in_(list(kinds)),
        )
        .limit(1)
    )
    return (await session.execute(query)).first() is not None


async def campaign_report_rows(*, session: AsyncSession, campaign_id: str) -> list[dict[str, Any]]:
    """Return per variant: sends by status and distinct recipients per engagement kind, with revenue."""
    status_rows = await session.execute(
        sa.select(sends.c.variant, sends.c.status, sends.c.reason, sa.func.count())
        .where(sends.c.source == "campaign", sends.c.source_id == campaign_id)
        .group_by(sends.c.variant, sends.c.status, sends.c.reason)
    )
    engagement_rows = await session.execute(
        sa.select(
            sends.c.variant,
            engagements.c.kind,
            sa.func.count(sa.distinct(engagements.c.send_id)),
            sa.func.coalesce(sa.func.sum(engagements.c.revenue), 0.0),
        )
        .select_from(engagements.join(sends, sends.c.id == engagements.c.send_id))
        .where(sends.c.source == "campaign", sends.c.source_id == campaign_id)
        .group_by(sends.c.variant, engagements.c.kind)
    )
    rows: list[dict[str, Any]] = [
        {"variant": v, "status": s, "reason": r, "count": int(n)} for v, s, r, n in status_rows
    ]
    rows.extend(
        {"variant": v, "engagement": k, "count": int(n), "revenue": float(rev)}
        for v, k, n, rev in engagement_rows
    )
    return rows


async def timeline(
    *, session: AsyncSession, source: str, source_id: str, profile_id: str
) -> list[dict[str, Any]]:
    """Return a profile's sends of a campaign or journey with their engagement, oldest first."""
    rows = await session.execute(
        sa.select(sends)
        .where(sends.c.source == source, sends.c.source_id == source_id, sends.c.profile_id == profile_id)
        .order_by(sends.c.created_at, sends.c.step, sends.c.id)
    )
    items = [dict(r) for r in rows.mappings()]
    if not items:
        return []
    engagement_rows = await session.execute(
        sa.select(
            engagements.c.send_id,
            engagements.c.kind,
            engagements.c.at,
            engagements.c.url,
            engagements.c.revenue,
        )
        .where(engagements.c.send_id.in_([i["id"] for i in items]))
        .order_by(engagements.c.at)
    )
    by_send: dict[str, list[dict[str, Any]]] = {}
    for send_id, kind, at, url, revenue in engagement_rows:
        by_send.setdefault(send_id, []).append({"kind": kind, "at": at, "url": url, "revenue": revenue})
    for item in items:
        item["engagement"] = by_send.get(item["id"], [])
    return items
