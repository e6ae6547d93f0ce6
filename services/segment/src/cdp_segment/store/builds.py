"""Queries of the jobs that build segments and fill computed traits into the profile copy.

A segment is `building` while the job named in its row works: first it waits until every
computed trait it reads is in the copy (`awaiting_data`, during which changes of single
profiles skip it), then it computes its members in ranges of profile ids. A computed trait
segment asked profile for goes pending → defined (profile accepted it) → ready (profile has
built it and segment has copied its values).
"""

from __future__ import annotations

import json
from collections.abc import Collection
from dataclasses import dataclass
from typing import Any

import sqlalchemy as sa
from cdp_common.jobs import jobs_table, notify_jobs
from sqlalchemy.ext.asyncio import AsyncSession

from cdp_segment.store import computed_trait_requests, profiles, segments


@dataclass(frozen=True)
class TraitRequest:
    """A computed trait segment asked profile to maintain, and how far it is."""

    key: str
    spec: dict[str, Any]
    status: str
    error: str | None
    profile_job_id: str | None
    fill_job_id: str | None


async def trait_requests(*, session: AsyncSession, keys: Collection[str] | None = None) -> list[TraitRequest]:
    """Return the requests of these keys, or (keys None) every one that is not ready."""
    table = computed_trait_requests
    query = sa.select(table).order_by(table.c.key)
    query = (
        query.where(table.c.status != "ready") if keys is None else query.where(table.c.key.in_(list(keys)))
    )
    return [
        TraitRequest(
            key=r.key,
            spec=r.spec,
            status=r.status,
            error=r.error,
            profile_job_id=r.profile_job_id,
            fill_job_id=r.fill_job_id,
        )
        for r in await session.execute(query)
    ]


async def ready_traits(*, session: AsyncSession, keys: Collection[str], status: str = "ready") -> set[str]:
    """Return which of these computed traits are in the copy (or have another status)."""
    if not keys:
        return set()
    table = computed_trait_requests
    rows = await session.execute(
        sa.select(table.c.key).where(table.c.key.in_(list(keys)), table.c.status == status)
    )
    return set(rows.scalars())


async def claim_fill(*, session: AsyncSession, key: str, job_id: str) -> bool:
    """Name the job that fills a trait into the copy, unless one is named already; True when claimed."""
    table = computed_trait_requests
    claimed = await session.execute(
        table.update()
        .where(table.c.key == key, table.c.fill_job_id.is_(None), table.c.status == "defined")
        .values(fill_job_id=job_id, updated_at=sa.func.clock_timestamp())
        .returning(table.c.key)
    )
    return claimed.first() is not None


async def forget_fill(*, session: AsyncSession, key: str, job_id: str) -> None:
    """Let another fill job be claimed for a trait (its job ended without filling)."""
    table = computed_trait_requests
    await session.execute(
        table.update()
        .where(table.c.key == key, table.c.fill_job_id == job_id, table.c.status != "ready")
        .values(fill_job_id=None, updated_at=sa.func.clock_timestamp())
    )


async def mark_trait_ready(*, session: AsyncSession, key: str) -> None:
    """Record that a trait's values are in the copy."""
    table = computed_trait_requests
    await session.execute(
        table.update()
        .where(table.c.key == key)
        .values(
            status="ready",
            error=None,
            ready_at=sa.func.clock_timestamp(),
            updated_at=sa.func.clock_timestamp(),
        )
    )


# Rows are locked in profile-id order first, as the consumer's writes lock them, so the two never
# deadlock; the update then sets the value only where the copy holds none (a value that came
# by message is as new or newer). Profiles segment has not heard of are skipped: their created
# message brings their computed traits.
_LOCK_MISSING = sa.text(
    """
    SELECT p.profile_id FROM known_profiles p
     WHERE p.profile_id = ANY(CAST(:profile_ids AS text[])) AND (p.computed -> CAST(:key AS text)) IS NULL
     ORDER BY p.profile_id
       FOR UPDATE
    """
)
_FILL_MISSING = sa.text(
    """
    UPDATE known_profiles AS p
       SET computed = p.computed || jsonb_build_object(CAST(:key AS text), v.value), updated_at = now()
      FROM jsonb_to_recordset(CAST(:items AS jsonb)) AS v(profile_id text, value jsonb)
     WHERE p.profile_id = v.profile_id AND p.profile_id = ANY(CAST(:locked AS text[]))
       AND (p.computed -> CAST(:key AS text)) IS NULL
       AND v.value IS NOT NULL AND v.value <> CAST('null' AS jsonb)
    """
)


async def fill_missing(*, session: AsyncSession, key: str, items: list[dict[str, Any]]) -> int:
    """Set a computed trait in the copies that do not hold it yet, from a page of profile's values."""
    if not items:
        return 0
    locked = list(
        (
            await session.execute(
                _LOCK_MISSING, {"profile_ids": [str(i["profile_id"]) for i in items], "key": key}
            )
        ).scalars()
    )
    if not locked:
        return 0
    result = await session.execute(_FILL_MISSING, {"key": key, "items": json.dumps(items), "locked": locked})
    return int(getattr(result, "rowcount", 0) or 0)


# --- segments being built ----------------------------------------------------------------------


async def start_build(*, session: AsyncSession, segment_id: str, job_id: str, awaiting_data: bool) -> None:
    """Mark a segment building by a job; while awaiting data, changes of single profiles skip it."""
    await session.execute(
        segments.update()
        .where(segments.c.id == segment_id)
        .values(
            status="building",
            job_id=job_id,
            awaiting_data=awaiting_data,
            # The catalog of the real-time path reloads on a new update time.
            updated_at=sa.func.clock_timestamp(),
        )
    )


async def data_arrived(*, session: AsyncSession, segment_id: str, job_id: str) -> None:
    """Let changes of single profiles evaluate a segment whose computed traits are all in the copy."""
    await session.execute(
        segments.update()
        .where(segments.c.id == segment_id, segments.c.job_id == job_id, segments.c.awaiting_data)
        .values(awaiting_data=False, updated_at=sa.func.clock_timestamp())
    )


async def finish_build(*, session: AsyncSession, segment_id: str, job_id: str) -> None:
    """Mark a segment ready, unless a newer job builds it now."""
    await session.execute(
        segments.update()
        .where(segments.c.id == segment_id, segments.c.job_id == job_id)
        .values(status="ready")
    )


async def building_keys(*, session: AsyncSession, keys: Collection[str]) -> set[str]:
    """Return which of these segments are building."""
    if not keys:
        return set()
    rows = await session.execute(
        sa.select(segments.c.key).where(
            segments.c.key.in_(list(keys)), segments.c.deleted_at.is_(None), segments.c.status == "building"
        )
    )
    return set(rows.scalars())


async def profile_range(*, session: AsyncSession, after: str | None, size: int) -> tuple[str | None, int]:
    """Return the last profile id of the next `size` copies after `after` (None when they run to the end)
    and how many copies the range holds."""
    inner = (
        sa.select(profiles.c.profile_id)
        .where(profiles.c.profile_id > (after or ""))
        .order_by(profiles.c.profile_id)
        .limit(size)
        .subquery()
    )
    last, count = (
        await session.execute(sa.select(sa.func.max(inner.c.profile_id), sa.func.count()).select_from(inner))
    ).one()
    return (last if count >= size else None), int(count)


async def count_profiles(*, session: AsyncSession) -> int:
    """Return how many profile copies segment holds (an evaluation of a segment passes over each)."""
    return int((await session.execute(sa.select(sa.func.count()).select_from(profiles))).scalar_one())


# --- jobs that wait for data --------------------------------------------------------------------

# A build job whose computed traits are not in the copy yet waits unclaimed (no worker of the
# runner is held while profile builds them for minutes or hours): queued with no start time.
_PARKED = sa.cast(sa.literal_column("'infinity'"), sa.DateTime(timezone=True))


async def park_job(*, session: AsyncSession, job_id: str) -> None:
    """Keep a queued job from starting until it is released."""
    await session.execute(jobs_table.update().where(jobs_table.c.id == job_id).values(not_before=_PARKED))


@dataclass(frozen=True)
class WaitingBuild:
    """A segment waiting for its computed traits, with its parked job."""

    segment_id: str
    job_id: str
    rule: dict[str, Any]


async def waiting_builds(*, session: AsyncSession) -> list[WaitingBuild]:
    """Return the segments whose build jobs wait for computed traits."""
    rows = await session.execute(
        sa.select(segments.c.id, segments.c.job_id, segments.c.rule)
        .select_from(segments.join(jobs_table, jobs_table.c.id == segments.c.job_id))
        .where(
            segments.c.deleted_at.is_(None),
            segments.c.awaiting_data,
            jobs_table.c.state == "queued",
            jobs_table.c.not_before == _PARKED,
        )
        .order_by(segments.c.id)
    )
    return [WaitingBuild(segment_id=r.id, job_id=r.job_id, rule=r.rule) for r in rows]


async def release_job(*, session: AsyncSession, job_id: str) -> None:
    """Let a parked job start, and wake the runners."""
    released = await session.execute(
        jobs_table.update()
        .where(jobs_table.c.id == job_id, jobs_table.c.not_before == _PARKED)
        .values(not_before=None, updated_at=sa.func.now())
        .returning(jobs_table.c.kind)
    )
    kind = released.scalar()
    if kind is not None:
        await notify_jobs(session=session, kind=kind)


async def report_waiting(*, session: AsyncSession, job_id: str, done: int, total: int) -> None:
    """Show a parked job's progress: how far profile and the fill are with its computed traits."""
    await session.execute(
        jobs_table.update()
        .where(jobs_table.c.id == job_id, jobs_table.c.state == "queued")
        .values(
            done=sa.func.greatest(jobs_table.c.done, done),
            total=sa.func.greatest(jobs_table.c.total, total),
            updated_at=sa.func.now(),
        )
    )
