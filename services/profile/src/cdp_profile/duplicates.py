"""The duplicate review queue as operators use it: the open pairs by score, dismissing a pair,
recording a merge, starting a scan of the whole base; and keeping the queue current as profiles
change, a periodic job that compares each changed profile with the members of its blocks."""

from __future__ import annotations

import secrets
from dataclasses import dataclass
from itertools import combinations
from typing import Any

from cdp_common.jobs import get_job, submit_job
from sqlalchemy.ext.asyncio import AsyncSession

from cdp_profile import duplicates_store, store
from cdp_profile.domain.duplicates import (
    KEYS_VERSION,
    STORED_SCORE,
    block_keys,
    block_number,
    candidate_of,
    score_pair,
    suspects_in_blocks,
)
from cdp_profile.duplicates_store import SCAN_JOB

# Notes of changed profiles compared in one transaction of the changes' job.
CHANGES_BATCH = 2000


class ProfileNotLive(Exception):
    """A profile named is unknown or no longer live."""


class SameProfile(Exception):
    """The references name one profile."""


Position = tuple[float, str, str]


async def list_duplicates(
    *, session: AsyncSession, min_score: float, after: Position | None, limit: int
) -> dict[str, Any]:
    """Return a page of open pairs of live profiles, best score first, after a (score, a, b)
    position; when the last scan finished; and how many profile changes wait to be compared."""
    rows = await duplicates_store.open_suspects(
        session=session, min_score=min_score, after=after, limit=limit + 1
    )
    page = rows[:limit]
    last_scan, _ = await duplicates_store.scan_jobs(session=session)
    return {
        "items": [
            {
                "profile_ids": list(row.profile_ids),
                "score": row.score,
                "reasons": row.reasons,
                "found_at": row.found_at.isoformat(),
            }
            for row in page
        ],
        "next": {"s": page[-1].score, "a": page[-1].profile_ids[0], "b": page[-1].profile_ids[1]}
        if len(rows) > limit
        else None,
        "scan": last_scan,
        "changes_waiting": await duplicates_store.count_changes(session=session),
    }


@dataclass(frozen=True)
class ChangesCompared:
    """What one batch of the changes' job did."""

    notes: int
    compared: int
    found: int


async def compare_changes(
    *, session: AsyncSession, limit: int = CHANGES_BATCH, threshold: float = STORED_SCORE
) -> ChangesCompared | None:
    """Compare the profiles of the oldest notes of changes with the members of their blocks; None
    while a scan is queued or running, or another replica holds the queue.

    A profile no longer live leaves the queue's tables. One whose candidate changed gets its
    blocks again and is compared with every member of each (however long ago they changed):
    its pairs at or above the threshold are added or refreshed (a dismissed or merged pair
    keeps its state) and its open pairs not found again leave the queue. One whose candidate
    did not change (another trait changed) costs a read.
    """
    if not await duplicates_store.hold_queue(session=session, wait=False):
        return None
    _, scan = await duplicates_store.scan_jobs(session=session)
    if scan is not None:
        return None
    notes = await duplicates_store.next_changes(session=session, limit=limit)
    if not notes:
        return ChangesCompared(notes=0, compared=0, found=0)
    noted = sorted({profile_id for _, profile_id in notes})
    commons = await duplicates_store.active_candidates(session=session, profile_ids=noted)
    await duplicates_store.drop_candidates(
        session=session, profile_ids=[p for p in noted if p not in commons]
    )
    found = [candidate_of(profile_id, commons[profile_id]) for profile_id in noted if profile_id in commons]
    blocks = [[block_number(key) for key in block_keys(c)] for c in found]
    changed = await duplicates_store.upsert_candidates(
        session=session, found=found, blocks=blocks, keys_version=KEYS_VERSION, full=False, pending=False
    )
    suspects = []
    if changed:
        compared = set(changed)
        numbers = {n for c, b in zip(found, blocks, strict=True) if c.profile_id in compared for n in b}
        members = await duplicates_store.blocks_with(session=session, blocks=sorted(numbers))
        suspects = suspects_in_blocks(members, threshold=threshold, changed=compared)
        seen = "changes-" + secrets.token_hex(8)
        await duplicates_store.record_suspects(
            session=session, found=[(s.profile_ids, s.score, s.reasons) for s in suspects], job_id=seen
        )
        await duplicates_store.drop_unseen(session=session, profile_ids=changed, seen=seen)
    await duplicates_store.forget_changes(session=session, notes=[seq for seq, _ in notes])
    return ChangesCompared(notes=len(notes), compared=len(changed), found=len(suspects))


async def keep_queue_current(*, session: AsyncSession, batch: int = CHANGES_BATCH) -> int:
    """Compare every profile noted as changed, a committed batch at a time; return how many were compared."""
    compared = 0
    while True:
        outcome = await compare_changes(session=session, limit=batch)
        await session.commit()
        if outcome is None:
            return compared
        compared += outcome.compared
        if outcome.notes < batch:
            return compared


async def _live_pair(session: AsyncSession, profile_ids: list[str]) -> list[str]:
    resolved = []
    for ref in profile_ids:
        live = await store.resolve_profile_id(session=session, profile_id=ref)
        if live is None:
            raise ProfileNotLive(ref)
        resolved.append(live)
    unique = sorted(set(resolved))
    if len(unique) < 2:
        raise SameProfile("these references name one profile")
    return unique


async def _scored(
    session: AsyncSession, pairs: list[tuple[str, str]]
) -> dict[tuple[str, str], tuple[float, dict[str, float]]]:
    commons = await duplicates_store.active_candidates(
        session=session, profile_ids=sorted({pid for pair in pairs for pid in pair})
    )
    scored: dict[tuple[str, str], tuple[float, dict[str, float]]] = {}
    for a, b in pairs:
        if a in commons and b in commons:
            score, reasons = score_pair(candidate_of(a, commons[a]), candidate_of(b, commons[b]))
            scored[(a, b)] = (round(score, 3), reasons)
        else:
            scored[(a, b)] = (0.0, {})
    return scored


async def dismiss_pair(*, session: AsyncSession, profile_ids: list[str], decided_by: str) -> dict[str, Any]:
    """Record that two profiles are not the same person: the pair leaves the queue and never returns."""
    a, b = await _live_pair(session, profile_ids)
    commons = await duplicates_store.active_candidates(session=session, profile_ids=[a, b])
    missing = [pid for pid in (a, b) if pid not in commons]
    if missing:
        raise ProfileNotLive(missing[0])
    score, reasons = (await _scored(session, [(a, b)]))[(a, b)]
    return await duplicates_store.decide(
        session=session, pair=(a, b), state="dismissed", score=score, reasons=reasons, decided_by=decided_by
    )


async def live_profiles_of(*, session: AsyncSession, profile_ids: list[str]) -> list[str]:
    """Return the live profiles these references name (merged-away ids followed), or [] when one is unknown."""
    try:
        return await _live_pair(session, profile_ids)
    except (ProfileNotLive, SameProfile):
        return []


async def scores_before_merge(
    *, session: AsyncSession, profile_ids: list[str]
) -> dict[tuple[str, str], tuple[float, dict[str, float]]]:
    """Score every pair of profiles about to be merged (once merged, one of them is no longer live)."""
    return await _scored(session, list(combinations(sorted(set(profile_ids)), 2)))


async def record_merged(
    *,
    session: AsyncSession,
    scored: dict[tuple[str, str], tuple[float, dict[str, float]]],
    decided_by: str,
) -> None:
    """Mark pairs an operator merged as merged in the queue, so no scan proposes them again."""
    for pair, (score, reasons) in scored.items():
        await duplicates_store.decide(
            session=session, pair=pair, state="merged", score=score, reasons=reasons, decided_by=decided_by
        )


async def start_scan(*, session: AsyncSession, full: bool) -> dict[str, Any]:
    """Queue a scan of the whole base, or return the scan already queued or running."""
    await duplicates_store.serialise_scan_requests(session=session)
    _, running = await duplicates_store.scan_jobs(session=session)
    if running is not None:
        job = await get_job(session=session, job_id=running)
        if job is not None:
            return job
    return await submit_job(session=session, kind=SCAN_JOB, params={"full": full})
