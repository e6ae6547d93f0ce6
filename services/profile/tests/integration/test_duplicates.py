"""The duplicate review queue on the real PostgreSQL: a scan of the whole base as a job finds
near-duplicates however long ago they were updated, resumes after a kill without storing
anything twice; the changes' job keeps the queue current as profiles change, comparing only
the changed ones with the members of their blocks however old; dismissed pairs stay out through
changes and rescans; merged and erased profiles leave the queue."""

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
from cdp_profile import duplicates, handlers, store
from cdp_profile.domain.identity import PROFILE_ID, IdentifierKey
from cdp_profile.duplicates_store import SCAN_JOB
from cdp_profile.jobs import DuplicateScan
from sqlalchemy.ext.asyncio import AsyncSession

from ..conftest import ProfileDb, tracking, uid

pytestmark = pytest.mark.integration

FILLER = 6000
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


def stored_traits(values: dict[str, Any], at: datetime) -> str:
    """Return traits as the profiles table stores them, each set by a load at `at`."""
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
    rows: list[tuple[str, str, datetime]] = []
    for i in range(FILLER):
        first, last = rng.choice(FIRST), rng.choice(STEMS) + rng.choice(ENDS)
        values = {"first_name": first.title(), "last_name": last.title()}
        values["email"] = f"{first}.{last}{i}@{rng.choice(DOMAINS)}"
        at = now - timedelta(minutes=i)
        rows.append((f"fill-{i:05d}", stored_traits(values, at), at))
    for (left, right), (left_traits, right_traits) in PLANTED.items():
        rows.append((left, stored_traits(left_traits, LONG_AGO), LONG_AGO))
        rows.append((right, stored_traits(right_traits, LONG_AGO), LONG_AGO))
    await copy_profiles(db, rows)


async def copy_profiles(db: ProfileDb, rows: list[tuple[str, str, datetime]]) -> None:
    """COPY live profiles (id, traits as stored, updated at) into the profiles table."""
    records = [
        (pid, db.context.hash_of(IdentifierKey(PROFILE_ID, pid)), 1, "active", traits, "{}", "{}", at, at)
        for pid, traits, at in rows
    ]
    columns = [
        "id",
        "id_hash",
        "version",
        "status",
        "traits",
        "aggregates",
        "computed",
        "created_at",
        "updated_at",
    ]
    async with db.engine.connect() as conn:
        raw = await conn.get_raw_connection()
        await raw.driver_connection.copy_records_to_table(  # type: ignore[union-attr]
            "profiles", records=records, columns=columns
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
                session=session, min_score=min_score, after=after, limit=limit
            )
        for item in page["items"]:
            pair = (item["profile_ids"][0], item["profile_ids"][1])
            assert pair not in found, "a pair shows once"
            found[pair] = item
        if page["next"] is None:
            return found
        after = (page["next"]["s"], page["next"]["a"], page["next"]["b"])


async def compare_changes(db: ProfileDb) -> int:
    """Run the changes' job once, as the service does every CDP_PROFILE_DUPLICATES_INTERVAL_S."""
    async with db.sessions() as session:
        return await duplicates.keep_queue_current(session=session)


async def waiting(db: ProfileDb) -> int:
    async with db.sessions() as session:
        return int(
            (await duplicates.list_duplicates(session=session, min_score=0.8, after=None, limit=1))[
                "changes_waiting"
            ]
        )


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
    async with transaction(db.sessions) as session:
        first = await duplicates.list_duplicates(session=session, min_score=0.8, after=None, limit=10)
    assert first["scan"] is None
    assert first["changes_waiting"] == FILLER + 2 * len(PLANTED), "every loaded person is noted"

    job = await scan(db)

    assert job["state"] == "succeeded"
    assert job["done"] == job["total"]
    assert job["total"] > FILLER + 2 * len(PLANTED), "profiles, then their blocks"
    assert job["result"]["profiles"] == FILLER + 2 * len(PLANTED)
    assert await waiting(db) == 0, "the scan compared every noted change"
    after = await listed(db)
    for pair in PLANTED:
        assert pair in after, pair
        assert after[pair]["score"] >= 0.8
        assert after[pair]["found_at"] is not None
    scores = [item["score"] for item in after.values()]
    assert scores == sorted(scores, reverse=True), "best score first"
    strict = await listed(db, min_score=0.9)
    assert all(item["score"] >= 0.9 for item in strict.values())
    small_pages = await listed(db, limit=7)
    assert list(small_pages) == list(after), "pages of 7 give the same pairs in the same order"
    async with transaction(db.sessions) as session:
        page = await duplicates.list_duplicates(session=session, min_score=0.8, after=None, limit=10)
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
    assert await compare_changes(db) == 0, "the changes' job waits while a scan is under way"
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


def pair_of(first: str, second: str) -> tuple[str, str]:
    return (first, second) if first <= second else (second, first)


def identify(user_id: str, traits: dict[str, Any], *, kind: str = "user_id") -> Any:
    """An identify call by a customer (user id) or a visitor (anonymous id)."""
    if kind == "anonymous_id":
        return tracking(anonymous_id=user_id, type="identify", event=None, traits=traits)
    return tracking(user_id=user_id, type="identify", event=None, traits=traits)


async def profile_of(db: ProfileDb, user_id: str, *, kind: str = "user_id") -> str:
    async with db.sessions() as session:
        found = await store.resolve_identifier(session=session, key=IdentifierKey(kind, user_id))
    assert found is not None
    return found


async def test_changed_profiles_are_compared_with_the_oldest_as_they_change(db: ProfileDb) -> None:
    await load_base(db)
    await scan(db)
    assert await compare_changes(db) == 0, "nothing changed since the scan"
    before = await listed(db)

    # A new customer arrives through the event flow, looking like a profile 400 days old.
    newcomer = uid("kunz")
    await db.resolve(
        identify(
            newcomer,
            {"first_name": "Margarethe", "last_name": "Kunzmann", "email": "marga.kunzman@gmail.com"},
        )
    )
    # An old profile changes into someone else; a trait the scoring does not read changes on another.
    async with db.engine.begin() as conn:
        await conn.execute(
            sa.text("UPDATE profiles SET traits = CAST(:t AS jsonb) WHERE id = 'old-b2'"),
            {
                "t": stored_traits(
                    {"first_name": "Zoe", "last_name": "Abernathy", "phone": "+4917099999999"}, LONG_AGO
                )
            },
        )
        await conn.execute(
            sa.text(
                "UPDATE profiles SET traits = traits || CAST(:t AS jsonb), updated_at = now() "
                "WHERE id = 'fill-00001'"
            ),
            {"t": stored_traits({"favourite_colour": "teal"}, LONG_AGO)},
        )
    assert await waiting(db) == 2, "a changed trait the scoring does not read is not noted"

    assert await compare_changes(db) == 2, "only the changed profiles are compared"

    newcomer_id = await profile_of(db, newcomer)
    after = await listed(db)
    assert pair_of("old-a1", newcomer_id) in after
    assert ("old-b1", "old-b2") not in after, "a pair that no longer matches leaves the queue"
    untouched = {pair: item for pair, item in before.items() if "old-b2" not in pair}
    assert {pair: after[pair] for pair in untouched} == untouched
    assert await waiting(db) == 0

    # The newcomer corrects a typo: compared again, the pairs stay, refreshed, never twice.
    await db.resolve(identify(newcomer, {"email": "marga.kunzmann@gmail.com"}))
    assert await compare_changes(db) == 1
    again = await listed(db)
    assert again[pair_of("old-a1", newcomer_id)]["score"] > after[pair_of("old-a1", newcomer_id)]["score"]


async def test_ibm_and_i_b_m_become_a_suspect_pair_from_their_events(db: ProfileDb) -> None:
    first, second, other = uid("ibm"), uid("ibm"), uid("acme")
    await db.resolve(
        identify(first, {"company": "IBM"}),
        identify(second, {"company": {"name": "I.B.M."}}),
        identify(other, {"company": "Acme Widgets"}),
    )
    assert await compare_changes(db) == 3
    found = await listed(db)
    pair = pair_of(await profile_of(db, first), await profile_of(db, second))
    assert list(found) == [pair]
    assert found[pair]["score"] == 1.0
    assert found[pair]["reasons"] == {"company": 1.0}


async def test_merged_profiles_leave_the_queue_and_the_survivor_is_compared_again(db: ProfileDb) -> None:
    people = {
        uid("a"): {"first_name": "Theodor", "last_name": "Quellmalz", "email": "theo.quellmalz@gmail.com"},
        uid("b"): {"first_name": "Theodor", "last_name": "Quellmalz", "email": "theo.quellmalz@gmial.com"},
        uid("c"): {"first_name": "Theodor", "last_name": "Quellmalz"},
    }
    # Visitors known by anonymous ids: an operator may merge them.
    await db.resolve(*(identify(user, traits, kind="anonymous_id") for user, traits in people.items()))
    await compare_changes(db)
    a, b, c = [await profile_of(db, user, kind="anonymous_id") for user in people]
    assert {pair_of(a, b), pair_of(a, c), pair_of(b, c)} <= set(await listed(db, min_score=0.7))

    async with transaction(db.sessions) as session:
        scored = await duplicates.scores_before_merge(session=session, profile_ids=[a, b])
        merged = await handlers.merge_profiles(
            session=session, context=db.context, profile_ids=[a, b], rule="operator", reason={"via": "test"}
        )
        await duplicates.record_merged(session=session, scored=scored, decided_by="t")
    survivor = merged["profile_id"]
    absorbed = b if survivor == a else a
    await compare_changes(db)

    remaining = await listed(db, min_score=0.7)
    assert all(absorbed not in pair for pair in remaining), "a merged-away profile leaves the queue"
    assert pair_of(survivor, c) in remaining
    states = {(x, y): state for x, y, _, state, _ in await queue_rows(db)}
    assert states[pair_of(a, b)] == "merged"


async def test_a_dismissed_pair_never_returns_after_changes_or_rescans(db: ProfileDb) -> None:
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

    # Both change again, still alike (now exactly alike): compared again, still not proposed.
    same = {"first_name": "Margarethe", "last_name": "Kunzmann", "email": "marga.k@gmail.com"}
    async with db.engine.begin() as conn:
        for pid in pair:
            await conn.execute(
                sa.text("UPDATE profiles SET traits = CAST(:t AS jsonb), updated_at = now() WHERE id = :id"),
                {"id": pid, "t": stored_traits(same, datetime.now(UTC))},
            )
    assert await compare_changes(db) == 2
    assert pair not in await listed(db, min_score=0.7)
    await scan(db)
    await scan(db, full=True)
    assert pair not in await listed(db, min_score=0.7)
    states = {(a, b): (state, score) for a, b, score, state, _ in await queue_rows(db)}
    assert states[pair][0] == "dismissed"

    # A pair dismissed as soon as the changes' job found it stays out as well.
    new = [uid("new"), uid("new")]
    await db.resolve(
        identify(new[0], {"first_name": "Theodor", "last_name": "Quellmalz", "email": "theo.q@gmail.com"}),
        identify(new[1], {"first_name": "Theodor", "last_name": "Quellmalz", "email": "theo.q@gmial.com"}),
    )
    await compare_changes(db)
    fresh = pair_of(await profile_of(db, new[0]), await profile_of(db, new[1]))
    assert fresh in await listed(db)
    async with transaction(db.sessions) as session:
        await duplicates.dismiss_pair(session=session, profile_ids=list(fresh), decided_by="t")
    await db.resolve(identify(new[1], {"email": "theo.q@gmail.com"}))
    await compare_changes(db)
    await scan(db, full=True)
    assert fresh not in await listed(db, min_score=0.7)


async def test_a_rescan_follows_changed_and_erased_profiles(db: ProfileDb) -> None:
    await load_base(db)
    await scan(db)
    # One of a pair becomes someone else; a new old look-alike of another appears (the changes'
    # job does not run: the scan alone compares them).
    async with db.engine.begin() as conn:
        await conn.execute(
            sa.text("UPDATE profiles SET traits = CAST(:t AS jsonb) WHERE id = 'old-b2'"),
            {
                "t": stored_traits(
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
                "t": stored_traits(
                    {"first_name": "Margarethe", "last_name": "Kunzman", "email": "marga.kunzmann@gmail.com"},
                    LONG_AGO,
                ),
                "at": LONG_AGO,
            },
        )
    job = await scan(db)
    assert job["result"]["changed"] == 2, "only the changed and the new profile are compared again"
    assert await waiting(db) == 0
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
    assert await compare_changes(db) == 0
