"""The duplicate review queue over a base loaded in bulk: the first full scan, and the cost of
keeping the queue current as profiles change.

A private database (migrated as the services migrate theirs) gets BENCH_DUPLICATES_PROFILES
people (100,000 by default) from `cdp load`'s loader. Then, in this process, with the service's
own job and periodic-job code:

- the first full scan (`duplicate_scan` job, as `POST /v1/duplicates/scan` starts it), its
  progress printed as it goes, beside a bare SQL pass reading the traits it compares;
- for each number of changed profiles in CHANGES: half of them loaded people whose e-mail and
  address change, half new people who look like loaded ones (a typo in the e-mail), written in
  one statement each (the trigger notes them), then the changes' job run until nothing waits:
  milliseconds per changed profile, the look-alikes paired with their originals, beside two baselines of the same
  run: the bare SQL read of the same profiles' traits, and that read together with the members
  of their blocks (the least any comparison reads); and the write's cost of the note, as the
  same UPDATE of a trait the scoring reads beside one of a trait it does not read.
"""

from __future__ import annotations

import asyncio
import importlib.util
import json
import os
import random
import secrets
import statistics
import sys
import time
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import asyncpg
from cdp_cli.load import load_base, person, plain_url
from cdp_common.db import create_engine, create_session_factory
from cdp_common.jobs import JobRunner, get_job, submit_job
from cdp_common.migrations import migrate
from cdp_common.settings import PlatformSettings
from cdp_common.testing import drop_database
from cdp_profile import duplicates
from cdp_profile.duplicates_store import SCAN_JOB
from cdp_profile.jobs import DuplicateScan
from cdp_profile.main import MIGRATIONS

# Segment's migrations, found without importing the service: the loader writes segment's copy too.
SEGMENT_MIGRATIONS = (
    Path(str(getattr(importlib.util.find_spec("cdp_segment"), "origin", ""))).parents[2] / "migrations"
)

NAME = "duplicates"
PROFILES = 100_000
CHANGES = (100, 1_000, 10_000)
SQL_ROUNDS = 3
PROGRESS_EVERY_S = 5.0
CANDIDATE_SQL = (
    "SELECT count(*), sum(length(jsonb_build_object('name', traits -> 'name', 'email', traits -> 'email',"
    " 'address', traits -> 'address')::text)) FROM profile.profiles WHERE status = 'active'"
)
READ_CHANGED_SQL = """
    SELECT id, traits -> 'first_name', traits -> 'last_name', traits -> 'email', traits -> 'address'
      FROM profile.profiles WHERE id = ANY($1::text[])
"""
UNNOTED_UPDATE_SQL = """
    UPDATE profile.profiles SET traits = jsonb_set(traits, '{plan,value}', to_jsonb($2::text)), updated_at = now()
     WHERE id = ANY($1::text[])
"""
NOTED_UPDATE_SQL = """
    UPDATE profile.profiles
       SET traits = jsonb_set(
               jsonb_set(traits, '{email,value}', to_jsonb('m' || $2::text || '.' || (traits -> 'email' ->> 'value'))),
               '{address,value,street}', to_jsonb($2::text || ' Neue Strasse')),
           updated_at = now()
     WHERE id = ANY($1::text[])
"""
READ_BLOCKS_SQL = """
    SELECT k.block, c.*
      FROM profile.duplicate_keys k JOIN profile.duplicate_candidates c USING (profile_id)
     WHERE k.block IN (SELECT block FROM profile.duplicate_keys WHERE profile_id = ANY($1::text[]))
"""


def _say(text: str) -> None:
    sys.stderr.write(text + "\n")


async def _median_s(connection: asyncpg.Connection, sql: str, *args: Any) -> float:
    times = []
    for _ in range(SQL_ROUNDS):
        started = time.perf_counter()
        await connection.fetch(sql, *args)
        times.append(time.perf_counter() - started)
    return statistics.median(times)


async def _first_scan(
    engine: Any, sessions: Any, connection: asyncpg.Connection, size: int
) -> dict[str, Any]:
    """The first full scan as a job, its progress printed, beside the bare SQL pass."""
    baseline = await _median_s(connection, CANDIDATE_SQL)
    async with sessions() as session:
        job = await submit_job(session=session, kind=SCAN_JOB, params={"full": True})
        await session.commit()
    runner = JobRunner(
        service="profile", engine=engine, session_factory=sessions, kinds={SCAN_JOB: DuplicateScan()}
    )
    started = time.perf_counter()
    running = asyncio.create_task(runner.run_job(job["id"]))
    while not running.done():
        await asyncio.wait([running], timeout=PROGRESS_EVERY_S)
        async with sessions() as session:
            now = await get_job(session=session, job_id=job["id"])
        if now is not None:
            _say(
                f"  scan {now['state']}: {now['done']:,} of {now['total'] or 0:,} ({time.perf_counter() - started:.0f} s)"
            )
    await running
    wall = time.perf_counter() - started
    async with sessions() as session:
        done = await get_job(session=session, job_id=job["id"])
    if done is None or done["state"] != "succeeded":
        raise RuntimeError(f"the scan did not succeed: {done}")
    return {
        "profiles": size,
        "wall_s": round(wall, 1),
        "profiles_per_s": round(size / wall),
        "minutes_at_1m_linear": round(wall * 1_000_000 / size / 60, 1),
        "pairs_found": done["result"]["pairs_found"],
        "baseline_sql_pass_s": round(baseline, 3),
        "over_baseline": round(wall / baseline, 1),
    }


async def _changes(
    sessions: Any, connection: asyncpg.Connection, picked: list[int], now: datetime, round_no: int
) -> dict[str, Any]:
    """Change these loaded people (half edited, half copied as new look-alikes), then keep the queue current."""
    count = len(picked)
    edited = [person(seed=0, index=i, events_per_profile=10, years=2, now=now) for i in picked[: count // 2]]
    copied = [person(seed=0, index=i, events_per_profile=10, years=2, now=now) for i in picked[count // 2 :]]
    edited_ids = [p.profile_id for p in edited]

    # The write's cost of the note: the same rows updated in a trait the scoring reads (noted) and
    # in one it does not read (not noted), each twice in turns, the faster of each kept.
    noted_s, unnoted_s = [], []
    for turn in range(2):
        started = time.perf_counter()
        await connection.execute(UNNOTED_UPDATE_SQL, edited_ids, f"plan-{round_no}-{turn}")
        unnoted_s.append(time.perf_counter() - started)
        started = time.perf_counter()
        await connection.execute(NOTED_UPDATE_SQL, edited_ids, f"{round_no}-{turn}")
        noted_s.append(time.perf_counter() - started)
    rows = []
    for p in copied:
        look_alike = {
            "first_name": p.traits["first_name"],
            "last_name": p.traits["last_name"],
            "email": p.email.replace("@", "x@", 1),
            "address": p.traits["address"],
        }
        traits = {
            k: {"value": v, "source": "bench", "event_id": "bench", "timestamp": now.isoformat()}
            for k, v in look_alike.items()
        }
        rows.append(
            (
                f"bench-{round_no}-{secrets.token_hex(8)}",
                secrets.token_hex(16),
                1,
                "active",
                json.dumps(traits),
                "{}",
                "{}",
            )
        )
    await connection.copy_records_to_table(
        "profiles",
        schema_name="profile",
        records=rows,
        columns=["id", "id_hash", "version", "status", "traits", "aggregates", "computed"],
    )
    changed_ids = edited_ids + [r[0] for r in rows]
    waiting = await connection.fetchval("SELECT count(*) FROM profile.duplicate_changes")

    started = time.perf_counter()
    compared = 0
    while True:
        async with sessions() as session:
            compared += await duplicates.keep_queue_current(session=session)
        if not await connection.fetchval("SELECT count(*) FROM profile.duplicate_changes"):
            break
    wall = time.perf_counter() - started
    found = await connection.fetchval(
        "SELECT count(*) FROM profile.duplicate_suspects s"
        " JOIN unnest($1::text[], $2::text[]) AS p(original, copy)"
        " ON (s.profile_a, s.profile_b) IN ((p.original, p.copy), (p.copy, p.original))"
        " WHERE s.state = 'open'",
        [p.profile_id for p in copied],
        [r[0] for r in rows],
    )
    read_s = await _median_s(connection, READ_CHANGED_SQL, changed_ids)
    blocks_s = await _median_s(connection, READ_BLOCKS_SQL, changed_ids)
    return {
        "changed_profiles": len(changed_ids),
        "notes_waiting": waiting,
        "compared": compared,
        "wall_s": round(wall, 3),
        "ms_per_change": round(wall * 1000 / len(changed_ids), 3),
        "look_alikes_added": len(rows),
        "look_alikes_found": found,
        "baseline_sql_read_ms_per_change": round(read_s * 1000 / len(changed_ids), 3),
        "baseline_sql_read_with_blocks_ms_per_change": round(blocks_s * 1000 / len(changed_ids), 3),
        "over_read_with_blocks": round(wall / blocks_s, 1) if blocks_s else None,
        "write_update_noted_ms_per_profile": round(min(noted_s) * 1000 / len(edited_ids), 4),
        "write_update_not_noted_ms_per_profile": round(min(unnoted_s) * 1000 / len(edited_ids), 4),
    }


async def run(env: dict[str, str]) -> dict[str, Any]:
    """Load the base in a private database, measure the scan and the changes, remove everything after."""
    size = int(os.environ.get("BENCH_DUPLICATES_PROFILES", "") or PROFILES)
    name = f"benchdup{secrets.token_hex(3)}"
    base = PlatformSettings(database_url=env["CDP_DATABASE_URL"]).database_url.replace("+asyncpg", "")
    server, database = base.rsplit("/", 1)[0], f"cdp_{name}"
    database_url = f"{server}/{database}"
    admin = await asyncpg.connect(f"{server}/postgres")
    try:
        await admin.execute(f'CREATE DATABASE "{database}"')
    finally:
        await admin.close()
    async_url = PlatformSettings(database_url=database_url).database_url
    now = datetime.now(UTC).replace(minute=0, second=0, microsecond=0)
    report: dict[str, Any] = {}
    engine = create_engine(database_url=async_url, schema="profile", pool_size=2)
    try:
        await migrate(engine=engine, schema="profile", script_location=MIGRATIONS)
        segment = create_engine(database_url=async_url, schema="segment", pool_size=1)
        try:
            await migrate(engine=segment, schema="segment", script_location=SEGMENT_MIGRATIONS)
        finally:
            await segment.dispose()
        _say(f"  loading {size:,} people ...")
        loaded = await load_base(
            database_url=database_url, profiles=size, hash_key=secrets.token_hex(16), now=now, seed=0
        )
        report["load_s"] = round(loaded.seconds, 1)
        sessions = create_session_factory(engine)
        connection = await asyncpg.connect(plain_url(database_url))
        try:
            report["notes_after_load"] = await connection.fetchval(
                "SELECT count(*) FROM profile.duplicate_changes"
            )
            report["first_full_scan"] = await _first_scan(engine, sessions, connection, size)
            report["notes_after_scan"] = await connection.fetchval(
                "SELECT count(*) FROM profile.duplicate_changes"
            )
            # Each loaded person is picked once at most, so a look-alike copies an unchanged person.
            picked = random.Random(size).sample(range(size), sum(CHANGES))
            starts = [sum(CHANGES[:n]) for n in range(len(CHANGES))]
            report["changes"] = {
                str(count): await _changes(sessions, connection, picked[start : start + count], now, n)
                for n, (start, count) in enumerate(zip(starts, CHANGES, strict=True), start=1)
            }
        finally:
            await connection.close()
    finally:
        await engine.dispose()
        await drop_database(f"{server}/postgres", database)
    return report
