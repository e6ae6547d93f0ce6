"""The duplicate review queue over a base of 100,000 people loaded in bulk across three years: the
first full scan finds look-alikes planted among the oldest, the queue pages by score, and each
later change is compared, by the changes' job alone, with profiles loaded years before."""

from __future__ import annotations

import random
import secrets
from collections.abc import AsyncIterator
from datetime import UTC, date, datetime, timedelta
from typing import Any

import pytest
import sqlalchemy as sa
from cdp_common.db import create_engine, create_session_factory, transaction
from cdp_common.jobs import JobRunner, get_job
from cdp_common.migrations import migrate
from cdp_common.testing import PlatformUnderTest
from cdp_profile import duplicates, store
from cdp_profile.context import ProfileContext
from cdp_profile.domain.identity import IdentifierKey
from cdp_profile.duplicates_store import SCAN_JOB
from cdp_profile.jobs import DuplicateScan
from cdp_profile.main import MIGRATIONS

from ..conftest import FakeClock, ProfileDb, tracking, uid
from .test_duplicates import copy_profiles, stored_traits

pytestmark = [pytest.mark.integration, pytest.mark.timeout(900)]

BASE = 100_000
NOW = datetime.now(UTC)
FIRST = [
    "anna", "lukas", "maria", "jonas", "sophie", "felix", "laura", "paul", "emma", "leon", "mia", "noah",
    "hannah", "elias", "lea", "ben", "lina", "finn", "clara", "max", "julia", "tim", "nina", "jan",
]  # fmt: skip
STEMS = ["berg", "hof", "stein", "feld", "bach", "wald", "brun", "lind", "rosen", "eich", "kirch", "hart"]
ENDS = ["mann", "er", "ner", "inger", "mayer", "hausen", "ke", "rich", "dorf", "weiler"]
DOMAINS = ["gmail.com", "web.de", "gmx.de", "outlook.com", "example.org"]
COMPANIES = ["Nordwind", "Alpenglas", "Rheintech", "Isarwerk", "Elbsoft", "Moselbau", "Harzdruck"]

# Look-alikes among the very first (oldest) people, each found through another block.
PLANTED: dict[tuple[str, str], tuple[dict[str, Any], dict[str, Any]]] = {
    # the company's normalised name
    ("old-ibm-1", "old-ibm-2"): ({"company": "IBM"}, {"company": "I.B.M."}),
    # surname with postal code (the first names start differently)
    ("old-zip-1", "old-zip-2"): (
        {
            "first_name": "Katharina",
            "last_name": "Quandtberg",
            "address": {"street": "Lindenstr. 4", "postal_code": "10115", "city": "Berlin"},
        },
        {
            "first_name": "Catharina",
            "last_name": "Quandtberg",
            "address": {"street": "Lindenstrasse 4", "postal_code": "10115", "city": "Berlin"},
        },
    ),
    # the surname's sound with the birthday
    ("old-bd-1", "old-bd-2"): (
        {"first_name": "Jana", "last_name": "Meyerhoff", "birthday": "1971-03-14"},
        {"first_name": "Jana", "last_name": "Maierhof", "birthday": "1971-03-14"},
    ),
    # an e-mail with a typo
    ("old-em-1", "old-em-2"): (
        {"first_name": "Margarethe", "last_name": "Kunzmann", "email": "marga.kunzmann@gmail.com"},
        {"first_name": "Margarete", "last_name": "Kunzmann", "email": "marga.kunzmann@gmial.com"},
    ),
}


def _person(rng: random.Random, i: int) -> dict[str, Any]:
    first, last = rng.choice(FIRST), rng.choice(STEMS) + rng.choice(ENDS)
    values: dict[str, Any] = {
        "first_name": first.title(),
        "last_name": last.title(),
        "email": f"{first}.{last}{i}@{rng.choice(DOMAINS)}",
        "birthday": (date(1950, 1, 1) + timedelta(days=rng.randrange(20_000))).isoformat(),
        "address": {"postal_code": f"{rng.randrange(10_000, 99_999)}", "city": "Somewhere"},
    }
    if rng.random() < 0.1:
        values["company"] = f"{rng.choice(COMPANIES)} {rng.randrange(500)} GmbH"
    return values


async def load(db: ProfileDb) -> None:
    """COPY BASE people, updated over three years: the planted pairs first, three years ago."""
    rng = random.Random(11)
    rows: list[tuple[str, str, datetime]] = []
    oldest = NOW - timedelta(days=3 * 365)
    for (left, right), (left_traits, right_traits) in PLANTED.items():
        rows += [
            (left, stored_traits(left_traits, oldest), oldest),
            (right, stored_traits(right_traits, oldest), oldest),
        ]
    step = timedelta(days=3 * 365) / BASE
    people: list[dict[str, Any]] = []
    for i in range(BASE - len(rows)):
        at = oldest + step * (i + 1)
        if people and rng.random() < 0.05:
            # Someone who signed up again, months later, with a typo in the e-mail.
            values = dict(rng.choice(people))
            values["email"] = values["email"].replace("@", "x@", 1)
        else:
            values = _person(rng, i)
        people.append(values)
        rows.append((f"p{i:07d}", stored_traits(values, at), at))
    await copy_profiles(db, rows)
    async with db.engine.begin() as conn:
        await conn.execute(sa.text("ANALYZE profiles"))


@pytest.fixture(scope="module")
async def large(platform: PlatformUnderTest) -> AsyncIterator[ProfileDb]:
    schema = "profile_" + secrets.token_hex(5)
    settings = platform.settings()
    engine = create_engine(database_url=settings.database_url, schema=schema, pool_size=5)
    await migrate(engine=engine, schema=schema, script_location=MIGRATIONS)
    clock = FakeClock(now=NOW)
    context = ProfileContext(
        profiles_topic=f"{platform.env}.cdp.profiles.v1",
        privacy_topic=f"{platform.env}.cdp.privacy.v1",
        hash_key=platform.hash_key,
        default_region="DE",
        clock=clock,
    )
    db = ProfileDb(engine=engine, sessions=create_session_factory(engine), context=context, clock=clock)
    await load(db)
    yield db
    await engine.dispose()
    cleanup = create_engine(database_url=settings.database_url, schema="public", pool_size=1)
    async with cleanup.begin() as conn:
        await conn.execute(sa.text(f'DROP SCHEMA "{schema}" CASCADE'))
    await cleanup.dispose()


class Watched:
    """The scan, its progress (done, total) read after each step."""

    def __init__(self) -> None:
        self._scan = DuplicateScan()
        self.progress: list[tuple[int, int | None]] = []

    async def plan(self, *, session: Any, job: Any) -> int | None:
        return await self._scan.plan(session=session, job=job)

    async def step(self, *, session: Any, job: Any) -> Any:
        self.progress.append((job.done, job.total))
        return await self._scan.step(session=session, job=job)


async def page_through(db: ProfileDb, *, limit: int) -> list[dict[str, Any]]:
    items: list[dict[str, Any]] = []
    after = None
    while True:
        async with db.sessions() as session:
            page = await duplicates.list_duplicates(session=session, min_score=0.7, after=after, limit=limit)
        items += page["items"]
        if page["next"] is None:
            return items
        after = (page["next"]["s"], page["next"]["a"], page["next"]["b"])


def pairs(items: list[dict[str, Any]]) -> list[tuple[str, str]]:
    return [(item["profile_ids"][0], item["profile_ids"][1]) for item in items]


async def test_the_queue_reaches_every_profile_however_old_and_follows_changes(large: ProfileDb) -> None:
    db = large
    async with db.sessions() as session:
        assert (await duplicates.list_duplicates(session=session, min_score=0.7, after=None, limit=1))[
            "changes_waiting"
        ] == BASE, "the bulk load is noted, person by person"

    # The first full scan, as a job with progress.
    async with transaction(db.sessions) as session:
        job = await duplicates.start_scan(session=session, full=True)
    watched = Watched()
    runner = JobRunner(
        service="profile", engine=db.engine, session_factory=db.sessions, kinds={SCAN_JOB: watched}
    )
    assert await runner.run_job(job["id"])
    async with db.sessions() as session:
        done = await get_job(session=session, job_id=job["id"])
    assert done is not None
    assert done["state"] == "succeeded"
    assert done["result"]["profiles"] == BASE
    assert done["done"] == done["total"] > BASE, "profiles, then their blocks"
    steps = [d for d, _ in watched.progress]
    assert steps == sorted(steps)
    assert len(steps) > 20, "short steps, progress after each"

    whole = await page_through(db, limit=1000)
    assert len(whole) > 1000, "a queue of many pages"
    assert set(PLANTED) <= set(pairs(whole)), "look-alikes three years old are found"
    scores = [item["score"] for item in whole]
    assert scores == sorted(scores, reverse=True)
    assert len(set(pairs(whole))) == len(whole)
    assert pairs(await page_through(db, limit=97)) == pairs(whole), "any page size, the same queue in order"
    async with db.sessions() as session:
        assert (await duplicates.list_duplicates(session=session, min_score=0.7, after=None, limit=1))[
            "changes_waiting"
        ] == 0

    # Later, through the event flow: newcomers who look like the oldest people, and one old
    # person who moves away from her look-alike.
    users = [uid("late"), uid("late"), uid("late")]
    await db.resolve(
        tracking(
            user_id=users[0],
            type="identify",
            event=None,
            traits={"first_name": "Margarethe", "last_name": "Kunzmann", "email": "marga.kunzman@gmail.com"},
        ),
        tracking(user_id=users[1], type="identify", event=None, traits={"company": "IBM Corp."}),
        tracking(
            user_id=users[2],
            type="identify",
            event=None,
            traits={"first_name": "Jana", "last_name": "Mayerhof", "birthday": "1971-03-14"},
        ),
    )
    async with db.engine.begin() as conn:
        await conn.execute(
            sa.text(
                "UPDATE profiles SET traits = CAST(:t AS jsonb), updated_at = now() WHERE id = 'old-zip-2'"
            ),
            {
                "t": stored_traits(
                    {"first_name": "Catharina", "last_name": "Oberholz", "email": "c.oberholz@web.de"}, NOW
                )
            },
        )
    async with db.sessions() as session:
        assert await duplicates.keep_queue_current(session=session) == 4, "the changed profiles, no other"
    async with db.sessions() as session:
        late = [
            await store.resolve_identifier(session=session, key=IdentifierKey("user_id", u)) for u in users
        ]
    after = await page_through(db, limit=1000)
    found = set(pairs(after))
    assert tuple(sorted((late[0] or "", "old-em-1"))) in found
    assert tuple(sorted((late[1] or "", "old-ibm-1"))) in found
    assert tuple(sorted((late[1] or "", "old-ibm-2"))) in found
    assert tuple(sorted((late[2] or "", "old-bd-1"))) in found
    assert ("old-zip-1", "old-zip-2") not in found
    untouched = [p for p in pairs(whole) if "old-zip-2" not in p]
    assert [p for p in pairs(after) if p in set(untouched)] == untouched, "the rest of the queue as it was"
