"""Real sizes: the profile service over a base of 100,000 people, and over a large base, built in bulk.

A profile process of its own runs in a private environment (its own CDP_ENV, topics and
database, migrated like the services'), so the dev stack's data is untouched. `cdp load`'s
loader fills the database with 100,000 generated people (10 events each, two years), then
grows the same base to the large size. At each size, beside baselines measured in the same run:

- a profile looked up by e-mail (`GET /v1/profiles/email:...`), p50/p99, beside `GET /healthz` of
  the same process;
- one person's event timeline read in pages (`GET /v1/profiles/{id}/events?limit=5`, then its
  cursor), p50/p99;
- each table's size with its indexes (pg_total_relation_size);
- the bare SQL aggregate of product views in the last 7 days per profile;
- the backfill of a computed trait counting product views in the last 7 days, as the job that
  `POST /v1/computed-traits` starts (202), polled on `GET /v1/jobs/{id}`: profiles per second,
  beside the bare SQL pass over the same rows.

The large size is BENCH_SCALE_PROFILES (0, the default, measures 100,000 only, so a normal
`make bench` stays short). 10,000,000 people with 10 events take about 145 GB; where the disk
cannot take them the loader refuses, and the report extrapolates from the largest size measured.
"""

from __future__ import annotations

import asyncio
import importlib.util
import os
import random
import secrets
import statistics
import tempfile
import time
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import asyncpg
import httpx
from aiokafka.admin import AIOKafkaAdminClient
from cdp_cli.load import NotEnoughDisk, load_base, person, plain_url, table_sizes
from cdp_common.db import create_engine
from cdp_common.migrations import migrate
from cdp_common.settings import PlatformSettings
from cdp_common.testing import ServiceProcess, free_port

# Segment's migrations, found without importing the service.
SEGMENT_MIGRATIONS = (
    Path(str(getattr(importlib.util.find_spec("cdp_segment"), "origin", ""))).parents[2] / "migrations"
)

NAME = "scale"
SMALL = 100_000
EVENTS_PER_PROFILE = 10
TARGET = 10_000_000
LOOKUPS = 1_000
TIMELINES = 300
HEALTH_CALLS = 1_000
SQL_ROUNDS = 3
BACKFILL_TIMEOUT_S = 3_600
AGGREGATE = """
    SELECT profile_id, count(*) FROM profile.events
     WHERE name = 'Product Viewed' AND timestamp > now() - interval '7 days'
     GROUP BY profile_id
"""


def _percentile(values: list[float], share: float) -> float:
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, int(share * len(ordered)))]


def _latencies(values: list[float]) -> dict[str, float]:
    return {
        "p50_ms": round(_percentile(values, 0.50) * 1000, 2),
        "p99_ms": round(_percentile(values, 0.99) * 1000, 2),
        "calls": len(values),
    }


async def _timed(client: httpx.AsyncClient, path: str, **params: Any) -> tuple[float, httpx.Response]:
    started = time.perf_counter()
    response = await client.get(path, params=params or None)
    elapsed = time.perf_counter() - started
    response.raise_for_status()
    return elapsed, response


async def _health(client: httpx.AsyncClient) -> dict[str, float]:
    return _latencies([(await _timed(client, "/healthz"))[0] for _ in range(HEALTH_CALLS)])


async def _lookups(client: httpx.AsyncClient, size: int, now: datetime) -> dict[str, float]:
    picks = random.Random(size).sample(range(size), LOOKUPS)
    times = []
    for index in picks:
        email = person(seed=0, index=index, events_per_profile=EVENTS_PER_PROFILE, years=2, now=now).email
        elapsed, response = await _timed(client, f"/v1/profiles/email:{email}")
        assert response.json()["traits"]["email"] == email
        times.append(elapsed)
    return _latencies(times)


async def _timelines(client: httpx.AsyncClient, size: int, now: datetime) -> dict[str, Any]:
    picks = random.Random(size + 1).sample(range(size), TIMELINES)
    times = []
    for index in picks:
        profile_id = person(
            seed=0, index=index, events_per_profile=EVENTS_PER_PROFILE, years=2, now=now
        ).profile_id
        cursor = None
        read = 0
        while True:
            params: dict[str, Any] = {"limit": 5} | ({"cursor": cursor} if cursor else {})
            elapsed, response = await _timed(client, f"/v1/profiles/{profile_id}/events", **params)
            times.append(elapsed)
            body = response.json()
            read += len(body["items"])
            cursor = body["next"]
            if cursor is None:
                break
        assert read == EVENTS_PER_PROFILE, read
    return {**_latencies(times), "page_size": 5, "pages_per_person": len(times) // TIMELINES}


async def _sql_aggregate(database_url: str) -> dict[str, Any]:
    connection = await asyncpg.connect(plain_url(database_url))
    try:
        times, rows = [], 0
        for _ in range(SQL_ROUNDS):
            started = time.perf_counter()
            rows = len(await connection.fetch(AGGREGATE))
            times.append(time.perf_counter() - started)
    finally:
        await connection.close()
    return {"median_s": round(statistics.median(times), 3), "profiles_counted": rows, "rounds": SQL_ROUNDS}


async def _backfill(client: httpx.AsyncClient, size: int, sql_s: float) -> dict[str, Any]:
    key = f"viewed_7d_{size}"
    started = time.perf_counter()
    answer = await client.post(
        "/v1/computed-traits",
        json={"key": key, "aggregation": "count", "event_name": "Product Viewed", "window_days": 7},
    )
    if answer.status_code == 201:
        return {"skipped": "POST /v1/computed-traits answered 201, not 202 with a job: no job to time"}
    if answer.status_code != 202:
        return {"skipped": f"POST /v1/computed-traits answered {answer.status_code}: {answer.text[:300]}"}
    job_id = answer.json()["job"]["id"]
    job: dict[str, Any] = {}
    while time.perf_counter() - started < BACKFILL_TIMEOUT_S:
        job = (await client.get(f"/v1/jobs/{job_id}")).json()
        if job.get("state") in ("succeeded", "failed", "cancelled"):
            break
        await asyncio.sleep(0.5)
    wall = time.perf_counter() - started
    if job.get("state") != "succeeded":
        return {"skipped": f"the backfill job ended {job.get('state')!r}: {job.get('error')}", "wall_s": wall}
    return {
        "profiles": job["total"],
        "wall_s": round(wall, 2),
        "profiles_per_s": round(job["total"] / wall),
        "job_rate_per_s": job.get("rate_per_s"),
        "baseline_sql_pass_s": sql_s,
        "baseline_sql_profiles_per_s": round(size / sql_s) if sql_s else None,
        "times_the_sql_pass": round(wall / sql_s, 1) if sql_s else None,
    }


async def _measure(
    process: ServiceProcess, admin_token: str, database_url: str, size: int, now: datetime
) -> dict[str, Any]:
    headers = {"Authorization": f"Bearer {admin_token}"}
    async with httpx.AsyncClient(base_url=process.url, headers=headers, timeout=120) as client:
        await _timed(client, "/healthz")  # the connection is set up before anything is timed
        report: dict[str, Any] = {
            "baseline_healthz": await _health(client),
            "lookup_by_email": await _lookups(client, size, now),
            "timeline_pages": await _timelines(client, size, now),
        }
        sql = await _sql_aggregate(database_url)
        report["baseline_sql_aggregate"] = sql
        report["backfill"] = await _backfill(client, size, sql["median_s"])
    connection = await asyncpg.connect(plain_url(database_url))
    try:
        sizes = await table_sizes(connection)
    finally:
        await connection.close()
    report["table_bytes"] = sizes
    report["bytes_per_profile"] = round(sum(s["total"] for s in sizes.values()) / size)
    return report


def _extrapolate(measured: dict[str, Any], size: int) -> dict[str, Any]:
    """Scale what grows with the base linearly from the largest size measured to TARGET people."""
    factor = TARGET / size
    backfill = measured["backfill"]
    return {
        "from_profiles": size,
        "table_bytes": {name: round(s["total"] * factor) for name, s in measured["table_bytes"].items()},
        "total_bytes": round(sum(s["total"] for s in measured["table_bytes"].values()) * factor),
        "sql_aggregate_s": round(measured["baseline_sql_aggregate"]["median_s"] * factor, 1),
        "backfill_s": round(backfill["wall_s"] * factor) if "wall_s" in backfill else None,
        "note": "sizes, the SQL pass and the backfill grow with the base; lookups and timeline pages go "
        "through B-tree indexes (log n) and stay near the measured figures while the indexes fit in memory",
    }


async def run(env: dict[str, str]) -> dict[str, Any]:
    """Build the bases in a private environment, measure each size, and remove everything after."""
    large = int(os.environ.get("BENCH_SCALE_PROFILES", "0") or 0)
    run_id = secrets.token_hex(3)
    name = f"benchscale{run_id}"
    base = PlatformSettings(database_url=env["CDP_DATABASE_URL"]).database_url.replace("+asyncpg", "")
    server, database = base.rsplit("/", 1)[0], f"cdp_{name}"
    database_url = f"{server}/{database}"
    hash_key = secrets.token_hex(16)
    now = datetime.now(UTC).replace(minute=0, second=0, microsecond=0)
    admin_db = await asyncpg.connect(f"{server}/postgres")
    try:
        await admin_db.execute(f'CREATE DATABASE "{database}"')
    finally:
        await admin_db.close()
    process = ServiceProcess(
        name="profile",
        port=free_port(),
        environ={
            "CDP_ENV": name,
            "CDP_DATABASE_URL": database_url,
            "CDP_KAFKA_BOOTSTRAP": env["CDP_KAFKA_BOOTSTRAP"],
            "CDP_ADMIN_TOKEN": env["CDP_ADMIN_TOKEN"],
            "CDP_HASH_KEY": hash_key,
            "CDP_LOG_LEVEL": "WARNING",
        },
        log_path=Path(tempfile.gettempdir()) / f"{name}.log",
    )
    report: dict[str, Any] = {"events_per_profile": EVENTS_PER_PROFILE, "sizes": {}, "loads": {}}
    try:
        process.start()
        await process.wait_ready()
        engine = create_engine(
            database_url=PlatformSettings(database_url=database_url).database_url,
            schema="segment",
            pool_size=1,
        )
        try:
            await migrate(engine=engine, schema="segment", script_location=SEGMENT_MIGRATIONS)
        finally:
            await engine.dispose()
        sizes = [SMALL] + ([large] if large > SMALL else [])
        for size in sizes:
            try:
                loaded = await load_base(
                    database_url=database_url, profiles=size, hash_key=hash_key, now=now, seed=0
                )
            except NotEnoughDisk as exc:
                report["loads"][str(size)] = {"refused": str(exc)}
                break
            report["loads"][str(size)] = {
                "profiles_added": loaded.profiles,
                "events_added": loaded.events,
                "seconds": round(loaded.seconds, 1),
                "profiles_per_s": round(loaded.profiles / loaded.seconds) if loaded.seconds else None,
                "events_per_s": round(loaded.events / loaded.seconds) if loaded.seconds else None,
                "indexes_rebuilt": loaded.indexes_rebuilt,
                "bytes_added_per_profile": round(
                    (loaded.bytes_after - loaded.bytes_before) / max(loaded.profiles, 1)
                ),
            }
            report["sizes"][str(size)] = await _measure(
                process, env["CDP_ADMIN_TOKEN"], database_url, size, now
            )
        measured = max(int(s) for s in report["sizes"])
        if measured < TARGET:
            report["note"] = (
                f"measured up to {measured:,} people (set BENCH_SCALE_PROFILES for a larger base; "
                f"10,000,000 with {EVENTS_PER_PROFILE} events need about 145 GB of disk); "
                f"{TARGET:,} extrapolated linearly from {measured:,}"
            )
            report["extrapolated_10m"] = _extrapolate(report["sizes"][str(measured)], measured)
    finally:
        process.stop()
        admin = AIOKafkaAdminClient(bootstrap_servers=env["CDP_KAFKA_BOOTSTRAP"])
        await admin.start()
        try:
            mine = [t for t in await admin.list_topics() if t.startswith(f"{name}.")]
            if mine:
                await admin.delete_topics(mine)
        finally:
            await admin.close()
        admin_db = await asyncpg.connect(f"{server}/postgres")
        try:
            await admin_db.execute(f'DROP DATABASE IF EXISTS "{database}" WITH (FORCE)')
        finally:
            await admin_db.close()
    return report
