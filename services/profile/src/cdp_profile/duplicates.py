"""The duplicate review queue as operators use it: the open pairs (the scan's, and those the most
recently updated profiles show before a scan sees them), dismissing a pair, recording a merge,
and starting a scan of the whole base."""

from __future__ import annotations

from itertools import combinations
from typing import Any

from cdp_common.jobs import get_job, submit_job
from sqlalchemy.ext.asyncio import AsyncSession

from cdp_profile import duplicates_store, store
from cdp_profile.domain.duplicates import Suspect, candidate_of, find_suspects, score_pair
from cdp_profile.domain.traits import common_traits
from cdp_profile.duplicates_store import SCAN_JOB


class ProfileNotLive(Exception):
    """A profile named is unknown or no longer live."""


class SameProfile(Exception):
    """The references name one profile."""


Position = tuple[float, str, str]


def _order(score: float, pair: tuple[str, str]) -> tuple[float, str, str]:
    return (-score, pair[0], pair[1])


async def list_duplicates(
    *,
    session: AsyncSession,
    min_score: float,
    after: Position | None,
    limit: int,
    recent_limit: int,
) -> dict[str, Any]:
    """Return a page of open pairs, best score first, and when the last scan finished.

    The queue holds what scans found; the most recently updated profiles are also scored now,
    so a duplicate made since the last scan shows at once. A pair in both shows once, with the
    better score; a dismissed or merged pair never shows.
    """
    recent = await store.recent_profiles(session=session, limit=recent_limit)
    fresh = find_suspects([candidate_of(p.id, common_traits(p.traits)) for p in recent], threshold=min_score)
    held = await duplicates_store.states_of(session=session, pairs=[s.profile_ids for s in fresh])
    shown_fresh: dict[tuple[str, str], Suspect] = {}
    for suspect in fresh:
        state = held.get(suspect.profile_ids)
        if state is not None and (state[0] != "open" or state[1] >= suspect.score):
            continue
        shown_fresh[suspect.profile_ids] = suspect
    start = None if after is None else (-after[0], after[1], after[2])
    items: list[tuple[tuple[float, str, str], dict[str, Any]]] = [
        (
            _order(s.score, s.profile_ids),
            {"profile_ids": list(s.profile_ids), "score": s.score, "reasons": s.reasons, "found_at": None},
        )
        for s in shown_fresh.values()
        if start is None or _order(s.score, s.profile_ids) > start
    ]
    position = after
    while True:
        rows = await duplicates_store.open_suspects(
            session=session, min_score=min_score, after=position, limit=limit + 1
        )
        for row in rows:
            if row.profile_ids not in shown_fresh:
                items.append(
                    (
                        _order(row.score, row.profile_ids),
                        {
                            "profile_ids": list(row.profile_ids),
                            "score": row.score,
                            "reasons": row.reasons,
                            "found_at": row.found_at.isoformat(),
                        },
                    )
                )
        stored = sum(1 for key, item in items if item["found_at"] is not None)
        if len(rows) <= limit or stored > limit:
            break
        last = rows[-1]
        position = (last.score, *last.profile_ids)
    items.sort(key=lambda entry: entry[0])
    page = items[: limit + 1]
    more = len(page) > limit
    page = page[:limit]
    last_scan, _ = await duplicates_store.scan_jobs(session=session)
    return {
        "items": [item for _, item in page],
        "next": {"s": -page[-1][0][0], "a": page[-1][0][1], "b": page[-1][0][2]} if more else None,
        "scan": last_scan,
    }


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
