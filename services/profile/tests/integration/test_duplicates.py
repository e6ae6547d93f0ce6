"""The duplicate review queue on the real PostgreSQL: a scan of the whole base as a job finds
near-duplicates however long ago they were updated, resumes after a kill without storing
anything twice, keeps dismissed pairs out, follows changed profiles and forgets erased ones."""

from __future__ import annotations

import asyncio
import json
import random
from datetime import UTC, datetime, timedelta
from typing import Any

import pytest
import sqlalchemy as sa
from cdp_common.db import transaction
from cdp_common.jobs import Job, JobRunner, Step, get_job, submit_job
from cdp_profile import duplicates, store
from cdp_profile.domain.identity import PROFILE_ID, IdentifierKey
from cdp_profile.duplicates_store import SCAN_JOB
from cdp_profile.jobs import DuplicateScan
from sqlalchemy.ext.asyncio import AsyncSession

from ..conftest import ProfileDb

pytestmark = pytest.mark.integration

FILLER = 6000  # more than the 5,000 most recently updated profiles GET scores on the fly
RECENT = 5000
FIRST = [
    "anna", "lukas", "maria", "jonas", "sophie", "felix", "laura", "paul", "emma", "leon", "mia", "noah",
    "hannah", "elias", "lea", "ben", "lina", "finn", "clara", "max", "julia", "tim", "nina", "jan",
]  # fmt: skip
STEMS = ["berg", "hof", "stein", "feld", "bach", "wald", "brun", "lind", "rosen", "eich", "kirch", "hart"]
ENDS = ["mann", "er", "ner", "inger", "mayer", "hausen", "ke", "rich", "dorf", "weiler"]
DOMAINS = ["gmail.com", "web.de", "gmx.de", "outlook.com", "example.org"]
LONG_AGO = datetime.now(UTC) - timedelta(days=400)

# Near-duplicates planted among the oldest profiles: a typo in name and e-mail, one phone, one company.
PLANTED = {
    ("old-a1", "old-a2"): (
        {"first_name": "Margarethe", "last_name": "Kunzmann", "email": "marga.kunzmann@gmail.com"},
        {"first_name": "Margarete", "last_name": "Kunzmann", "email": "marga.kunzmann@gmial.com"},
    ),
    ("old-b1", "old-b2"): (
        {"first_name": "Jonathan", "last_name": "Whitfield", "phone": "+4915112345678"},
        {"first_name": "Jonathon", "last_name": "Whitfield", "phone": "+4915112345678"},
    ),
    ("old-c1", "old-c2"): (
        {"company": "Widgetworks International GmbH"},
        {"company": "Widgetworks International"},
    ),
}


def _traits(values: dict[str, Any], at: datetime) -> str:
    return json.dumps(
        {
            name: {"value": value, "source": "load", "event_id": "load", "timestamp": at.isoformat()}
            for name, value in values.items()
        }
    )


async def load_base(db: ProfileDb) -> None:
    """Insert FILLER recently updated people with realistic names and the planted old pairs, by COPY."""
    rng = random.Random(7)
    now = datetime.now(UTC)
    rows: list[tuple[Any, ...]] = []
    for i in range(FILLER):
        first, last = rng.choice(FIRST), rng.choice(STEMS) + rng.choice(ENDS)
        values = {"first_name": first.title(), "last_name": last.title()}
        values["email"] = f"{first}.{last}{i}@{rng.choice(DOMAINS)}"
        at = now - timedelta(minutes=i)
        rows.append((f"fill-{i:05d}", _traits(values, at), at))
    for (left, right), (left_traits, right_traits) in PLANTED.items():
        rows.append((left, _traits(left_traits, LONG_AGO), LONG_AGO))
        rows.append((right, _traits(right_traits, LONG_AGO), LONG_AGO))
    records = [
        (pid, db.context.hash_of(IdentifierKey(PROFILE_ID, pid)), 1, "active", traits, "{}", "{}", at, at)
        for pid, traits, at in rows
    ]
    async with db.engine.connect() as conn:
        raw = await conn.get_raw_connection()
        await raw.driver_connection.copy_records_to_table(  # type: ignore[union-attr]
            "profiles",
            records=records,
            columns=[
                "id",
                "id_hash",
                "version",
                "status",
                "traits",
                "aggregates",
                "computed",
                "created_at",
                "updated_at",
            ],
        )
        await conn.commit()


def runner(db: ProfileDb, kind: Any) -> JobRunner:
    return JobRunner(service="profile", engine=db.engine, session_factory=db.sessions, kinds={SCAN_JOB: kind})


async def scan(db: ProfileDb, *, full: bool = False) -> dict[str, Any]:
    """Start a scan as the API does and run it to its end with the service's job runner."""
    async with transaction(db.sessions) as session:
        job = await duplicates.start_scan(session=session, full=full)
    assert await runner(db, DuplicateScan(batch_size=500)).run_job(job["id"])
    return await job_of(db, job["id"])


async def job_of(db: ProfileDb, job_id: str) -> dict[str, Any]:
    async with db.sessions() as session:
        job = await get_job(session=session, job_id=job_id)
    assert job is not None
    return job


async def listed(db: ProfileDb, *, min_score: float = 0.8, limit: int = 1000) -> dict[tuple[str, str], Any]:
    """Page through GET /v1/duplicates's answer to its end; every pair once."""
    found: dict[tuple[str, str], Any] = {}
    after = None
    while True:
        async with transaction(db.sessions) as session:
            page = await duplicates.list_duplicates(
                session=session, min_score=min_score, after=after, limit=limit, recent_limit=RECENT
            )
        for item in page["items"]:
            pair = (item["profile_ids"][0], item["profile_ids"][1])
            assert pair not in found, "a pair shows once"
            found[pair] = item
        if page["next"] is None:
            return found
        after = (page["next"]["s"], page["next"]["a"], page["next"]["b"])


async def queue_rows(db: ProfileDb) -> list[tuple[Any, ...]]:
    async with db.engine.connect() as conn:
        rows = await conn.execute(
            sa.text(
                "SELECT profile_a, profile_b, score, state, found_at FROM duplicate_suspects "
                "ORDER BY profile_a, profile_b"
            )
        )
        return [tuple(r) for r in rows]


class KilledAfter:
    """The scan, killed (its step in flight rolled back) after a number of steps."""

    def __init__(self, steps: int) -> None:
        self._scan = DuplicateScan(batch_size=500)
        self._left = steps

    async def plan(self, *, session: AsyncSession, job: Job) -> int | None:
        return await self._scan.plan(session=session, job=job)

    async def step(self, *, session: AsyncSession, job: Job) -> Step:
        if self._left == 0:
            raise asyncio.CancelledError
        self._left -= 1
        return await self._scan.step(session=session, job=job)


async def test_a_scan_finds_old_near_duplicates_and_reports_progress(db: ProfileDb) -> None:
    await load_base(db)
    before = await listed(db)
    assert not set(PLANTED) & set(before), "older than the most recent profiles: GET alone misses them"
    async with transaction(db.sessions) as session:
        assert (
            await duplicates.list_duplicates(
                session=session, min_score=0.8, after=None, limit=10, recent_limit=RECENT
            )
        )["scan"] is None

    job = await scan(db)

    assert job["state"] == "succeeded"
    assert job["done"] == job["total"]
    assert job["total"] > FILLER + 2 * len(PLANTED), "profiles, then their blocks"
    assert job["result"]["profiles"] == FILLER + 2 * len(PLANTED)
    after = await listed(db)
    for pair in PLANTED:
        assert pair in after, pair
        assert after[pair]["score"] >= 0.8
        assert after[pair]["found_at"] is not None
    strict = await listed(db, min_score=0.9)
    assert all(item["score"] >= 0.9 for item in strict.values())
    small_pages = await listed(db, limit=7)
    assert small_pages.keys() == after.keys(), "pages of 7 give the same pairs"
    async with transaction(db.sessions) as session:
        page = await duplicates.list_duplicates(
            session=session, min_score=0.8, after=None, limit=10, recent_limit=RECENT
        )
    assert page["scan"] == {"job_id": job["id"], "finished_at": job["finished_at"]}


async def test_a_killed_scan_resumes_and_stores_nothing_twice(db: ProfileDb) -> None:
    await load_base(db)
    async with transaction(db.sessions) as session:
        job = await submit_job(session=session, kind=SCAN_JOB, params={"full": False})
    # 13 steps go through the 6,006 profiles; the kill comes in the middle of the blocks.
    with pytest.raises(asyncio.CancelledError):
        await runner(db, KilledAfter(steps=20)).run_job(job["id"])
    killed = await job_of(db, job["id"])
    assert killed["state"] == "running"
    assert 0 < killed["done"] < killed["total"]
    assert await runner(db, DuplicateScan(batch_size=500)).run_job(job["id"])
    finished = await job_of(db, job["id"])
    assert finished["state"] == "succeeded"
    assert finished["done"] == finished["total"]
    resumed = await queue_rows(db)
    assert {(a, b) for a, b, *_ in resumed} >= set(PLANTED)

    again = await scan(db, full=True)

    assert again["state"] == "succeeded"
    assert await queue_rows(db) == resumed, "a full rescan finds the same pairs, each stored once"
    memberships = await db.scalar("SELECT count(*) FROM duplicate_keys")
    distinct = await db.scalar("SELECT count(DISTINCT (block, profile_id)) FROM duplicate_keys")
    assert memberships == distinct
    assert await db.scalar("SELECT count(*) FROM duplicate_candidates WHERE pending") == 0


async def test_a_dismissed_pair_stays_gone_from_the_queue_and_from_recent_profiles(db: ProfileDb) -> None:
    await load_base(db)
    await scan(db)
    pair = ("old-a1", "old-a2")
    async with transaction(db.sessions) as session:
        dismissed = await duplicates.dismiss_pair(
            session=session, profile_ids=["old-a2", "old-a1"], decided_by="t"
        )
    assert dismissed["state"] == "dismissed"
    assert pair not in await listed(db)
    await scan(db, full=True)
    assert pair not in await listed(db)
    assert ("old-b1", "old-b2") in await listed(db)

    # Two new profiles: GET shows them before any scan, and a dismissal holds for both paths.
    now = datetime.now(UTC) + timedelta(minutes=1)
    async with db.engine.begin() as conn:
        for pid, values in (
            (
                "new-1",
                {"first_name": "Theodor", "last_name": "Quellmalz", "email": "theo.quellmalz@gmail.com"},
            ),
            (
                "new-2",
                {"first_name": "Theodor", "last_name": "Quellmalz", "email": "theo.quellmalz@gmial.com"},
            ),
        ):
            await conn.execute(
                sa.text(
                    "INSERT INTO profiles (id, id_hash, version, status, traits, aggregates, computed, "
                    "updated_at) VALUES (:id, :h, 1, 'active', CAST(:t AS jsonb), '{}', '{}', :at)"
                ),
                {"id": pid, "h": pid, "t": _traits(values, now), "at": now},
            )
    fresh = await listed(db)
    assert ("new-1", "new-2") in fresh
    assert fresh[("new-1", "new-2")]["found_at"] is None, "scored now, not yet by a scan"
    async with transaction(db.sessions) as session:
        await duplicates.dismiss_pair(session=session, profile_ids=["new-1", "new-2"], decided_by="t")
    assert ("new-1", "new-2") not in await listed(db)
    await scan(db)
    assert ("new-1", "new-2") not in await listed(db)
    states = {(a, b): state for a, b, _, state, _ in await queue_rows(db)}
    assert states[("new-1", "new-2")] == "dismissed"
    assert states[pair] == "dismissed"


async def test_a_rescan_follows_changed_and_erased_profiles(db: ProfileDb) -> None:
    await load_base(db)
    await scan(db)
    # One of a pair becomes someone else; a new old look-alike of another appears.
    async with db.engine.begin() as conn:
        await conn.execute(
            sa.text("UPDATE profiles SET traits = CAST(:t AS jsonb) WHERE id = 'old-b2'"),
            {
                "t": _traits(
                    {"first_name": "Zoe", "last_name": "Abernathy", "phone": "+4917099999999"}, LONG_AGO
                )
            },
        )
        await conn.execute(
            sa.text(
                "INSERT INTO profiles (id, id_hash, version, status, traits, aggregates, computed, "
                "updated_at) VALUES ('old-a3', 'old-a3', 1, 'active', CAST(:t AS jsonb), '{}', '{}', :at)"
            ),
            {
                "t": _traits(
                    {"first_name": "Margarethe", "last_name": "Kunzman", "email": "marga.kunzmann@gmail.com"},
                    LONG_AGO,
                ),
                "at": LONG_AGO,
            },
        )
    job = await scan(db)
    assert job["result"]["changed"] == 2, "only the changed and the new profile are compared again"
    found = await listed(db)
    assert ("old-b1", "old-b2") not in found
    assert ("old-a1", "old-a3") in found
    assert ("old-a1", "old-a2") in found

    async with transaction(db.sessions) as session:
        await store.erase_profiles(session=session, profile_ids=["old-a1"], request_id="pr-1")
    assert (
        await db.scalar("SELECT count(*) FROM duplicate_suspects WHERE 'old-a1' IN (profile_a, profile_b)")
        == 0
    )
    assert await db.scalar("SELECT count(*) FROM duplicate_keys WHERE profile_id = 'old-a1'") == 0
    assert ("old-a2", "old-a3") in await listed(db)
