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
  beside the bare SQL pass over the same rows;
- the resolution rate of new events: 20,000 tracking events (identify + track for new people,
  track for people already loaded) published straight to the environment's events topic, timed
  until profile has stored every one of them (events per second, and the large size's rate over
  100,000's, whose goal is 0.8 or more), beside the raw producer's rate for the same messages;
- an event-condition segment (a product view in the last 7 days), run by a segment process of its
  own against the same database: `POST /v1/segments` until its status is `ready` ("filled"),
  beside the bare SQL aggregate above (goal: within 3 times); then a full recompute
  (`POST /v1/segments/{key}/recompute`, 202, its job polled on `GET /v1/jobs/{id}`) beside a bare
  SQL count of the members' predicate over segment's copy of the profiles (goal: within 5 times);
- each model run over the whole base (`POST /v1/models/{name}/run` for RFM, clusters, CLV and
  lifecycle, 202, polled), beside a bare SQL pass over segment's copy of the profiles;
- a full duplicate scan (`POST /v1/duplicates/scan` with `full`), beside a bare SQL pass reading
  the traits it compares; both also as minutes at 1,000,000 people, scaled linearly.

The large size is BENCH_SCALE_PROFILES (0, the default, measures 100,000 only, so a normal
`make bench` stays short); BENCH_SCALE_ONLY_LARGE=1 measures the large size alone. 10,000,000 people with 10 events take about 145 GB; where the disk
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
from cdp_common.events import TrackingEventReceived, make_envelope
from cdp_common.kafka import create_producer
from cdp_common.migrations import migrate
from cdp_common.settings import PlatformSettings
from cdp_common.testing import ServiceProcess, drop_database, free_port
from cdp_common.topics import TopicName

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
# New events: NEW_PEOPLE newcomers send an identify and a track each; the rest are tracks of
# people already loaded.
NEW_EVENTS = 20_000
NEW_PEOPLE = 5_000
RESOLUTION_TIMEOUT_S = 1_800
SEGMENT_TIMEOUT_S = 3_600
# Jobs and segments are polled this often while they run: fine enough not to add to the times measured.
POLL_S = 0.05
# The models run one after another over the whole base, and what a bare SQL pass over segment's
# copy of the profiles (what they read) and over the traits a duplicate scan compares takes.
MODELS = ("rfm", "clusters", "clv", "lifecycle")
COPY_SCAN_SQL = (
    "SELECT count(*), sum(length(computed::text)) FROM segment.known_profiles WHERE merged_into IS NULL"
)
CANDIDATE_SCAN_SQL = (
    "SELECT count(*), sum(length(jsonb_build_object('name', traits -> 'name', 'email', traits -> 'email',"
    " 'address', traits -> 'address')::text)) FROM profile.profiles WHERE status = 'active'"
)
SEGMENT_RULE = {"event": "Product Viewed", "op": "gte", "value": 1, "within_days": 7}
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
        # People who got new events in an earlier size's resolution measure have a few more.
        assert read >= EVENTS_PER_PROFILE, read
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
        await asyncio.sleep(POLL_S)
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


def _new_events(size: int, now: datetime) -> list[tuple[bytes, bytes, str]]:
    """Return (key, value, envelope id) of NEW_EVENTS tracking events: newcomers and loaded people."""
    run = secrets.token_hex(3)
    sent_at = datetime.now(UTC)
    messages: list[tuple[bytes, bytes, str]] = []

    def add(subject: str, number: int, **fields: Any) -> None:
        message_id = f"bench-{run}-{size}-{number}"
        payload = TrackingEventReceived(
            messageId=message_id, sourceId="src_bench", receivedAt=sent_at, timestamp=sent_at, **fields
        )
        envelope = make_envelope(payload=payload, source="ingest", subject=subject, id=message_id)
        messages.append((subject.encode(), envelope.to_bytes(), message_id))

    for n in range(NEW_PEOPLE):
        user_id = f"new-{run}-{n}"
        add(
            user_id,
            len(messages),
            type="identify",
            userId=user_id,
            traits={"email": f"{user_id}@bench.example", "first_name": "New"},
        )
        add(
            user_id,
            len(messages),
            type="track",
            userId=user_id,
            event="Product Viewed",
            properties={"product_id": f"p{n % 100}"},
        )
    picks = random.Random(size + 2).sample(range(size), NEW_EVENTS - len(messages))
    for index in picks:
        known = person(seed=0, index=index, events_per_profile=EVENTS_PER_PROFILE, years=2, now=now)
        ids: dict[str, Any] = (
            {"userId": known.user_id} if known.user_id else {"anonymousId": known.anonymous_ids[0]}
        )
        add(
            known.user_id or known.anonymous_ids[0],
            len(messages),
            type="track",
            event="Product Added",
            properties={"product_id": f"p{index % 100}"},
            **ids,
        )
    return messages


async def _applied(connection: asyncpg.Connection, ids: list[str]) -> int:
    return int(
        await connection.fetchval("SELECT count(*) FROM profile.events WHERE event_id = ANY($1::text[])", ids)
    )


async def _resolution(
    settings: PlatformSettings, database_url: str, size: int, now: datetime
) -> dict[str, Any]:
    """Publish NEW_EVENTS to the events topic; time until profile has stored them all, and the producer."""
    messages = _new_events(size, now)
    ids = [m[2] for m in messages]
    topic = settings.topic(TopicName.EVENTS)
    producer = create_producer(settings, client_id="bench-scale")
    connection = await asyncpg.connect(plain_url(database_url))
    try:
        await producer.start()
        try:
            started = time.perf_counter()
            sent = [await producer.send(topic, value=value, key=key) for key, value, _ in messages]
            await asyncio.gather(*sent)
            produced_s = time.perf_counter() - started
        finally:
            await producer.stop()
        applied = 0
        while time.perf_counter() - started < RESOLUTION_TIMEOUT_S:
            applied = await _applied(connection, ids)
            if applied >= len(ids):
                break
            await asyncio.sleep(0.2)
        wall = time.perf_counter() - started
    finally:
        await connection.close()
    if applied < len(ids):
        return {"skipped": f"profile stored {applied} of {len(ids)} events in {RESOLUTION_TIMEOUT_S} s"}
    return {
        "events": len(ids),
        "new_people": NEW_PEOPLE,
        "wall_s": round(wall, 2),
        "events_per_s": round(len(ids) / wall),
        "baseline_producer_s": round(produced_s, 2),
        "baseline_producer_events_per_s": round(len(ids) / produced_s),
        "times_the_producer": round(wall / produced_s, 1),
    }


async def _poll_job(client: httpx.AsyncClient, job_id: str, started: float) -> dict[str, Any]:
    job: dict[str, Any] = {}
    while time.perf_counter() - started < SEGMENT_TIMEOUT_S:
        job = (await client.get(f"/v1/jobs/{job_id}")).json()
        if job.get("state") in ("succeeded", "failed", "cancelled"):
            break
        await asyncio.sleep(POLL_S)
    return job


async def _segment(
    client: httpx.AsyncClient, database_url: str, size: int, aggregate_s: float
) -> dict[str, Any]:
    """Create an event-condition segment until it is ready, then recompute it, each beside bare SQL."""
    key = f"viewers_{size}_{secrets.token_hex(3)}"
    started = time.perf_counter()
    created = await client.post(
        "/v1/segments", json={"key": key, "name": "Viewed a product this week", "rule": SEGMENT_RULE}
    )
    if created.status_code != 201:
        return {"skipped": f"POST /v1/segments answered {created.status_code}: {created.text[:300]}"}
    body: dict[str, Any] = created.json()
    while body.get("status") != "ready" and time.perf_counter() - started < SEGMENT_TIMEOUT_S:
        await asyncio.sleep(POLL_S)
        body = (await client.get(f"/v1/segments/{key}")).json()
    filled_s = time.perf_counter() - started
    if body.get("status") != "ready":
        return {"skipped": f"the segment was still {body.get('status')!r} after {SEGMENT_TIMEOUT_S} s"}
    report: dict[str, Any] = {
        "filled": {
            "wall_s": round(filled_s, 2),
            "job_state": (body.get("job") or {}).get("state"),
            "job_total": (body.get("job") or {}).get("total"),
            "baseline_sql_aggregate_s": aggregate_s,
            "times_the_sql_aggregate": round(filled_s / aggregate_s, 1) if aggregate_s else None,
        }
    }
    trait = next(d.split(":", 1)[1] for d in body["dependencies"] if d.startswith("computed:"))
    connection = await asyncpg.connect(plain_url(database_url))
    try:
        times, matched = [], 0
        for _ in range(SQL_ROUNDS):
            at = time.perf_counter()
            matched = await connection.fetchval(
                "SELECT count(*) FROM segment.known_profiles WHERE merged_into IS NULL"
                " AND jsonb_typeof(computed -> $1) = 'number' AND (computed ->> $1)::numeric >= 1",
                trait,
            )
            times.append(time.perf_counter() - at)
        count_s = round(statistics.median(times), 3)
        report["filled"]["members"] = await connection.fetchval(
            "SELECT count(*) FROM segment.memberships WHERE segment_id = $1", body["id"]
        )
        report["filled"]["members_by_sql"] = matched
        started = time.perf_counter()
        answer = await client.post(f"/v1/segments/{key}/recompute")
        if answer.status_code != 202:
            report["recompute"] = {"skipped": f"recompute answered {answer.status_code}: {answer.text[:300]}"}
            return report
        job = await _poll_job(client, answer.json()["job"]["id"], started)
        wall = time.perf_counter() - started
        members = await connection.fetchval(
            "SELECT count(*) FROM segment.memberships WHERE segment_id = $1", body["id"]
        )
    finally:
        await connection.close()
    if job.get("state") != "succeeded":
        report["recompute"] = {"skipped": f"the recompute ended {job.get('state')!r}: {job.get('error')}"}
        return report
    report["recompute"] = {
        "profiles": job.get("total"),
        "members": members,
        "wall_s": round(wall, 2),
        "job_rate_per_s": job.get("rate_per_s"),
        "baseline_sql_count_s": count_s,
        "baseline_sql_count_rounds": SQL_ROUNDS,
        "times_the_sql_count": round(wall / count_s, 1) if count_s else None,
    }
    return report


async def _sql_median(database_url: str, query: str) -> float:
    """Return the median time of SQL_ROUNDS runs of a bare SQL pass."""
    connection = await asyncpg.connect(plain_url(database_url))
    try:
        times = []
        for _ in range(SQL_ROUNDS):
            started = time.perf_counter()
            await connection.fetch(query)
            times.append(time.perf_counter() - started)
    finally:
        await connection.close()
    return round(statistics.median(times), 3)


async def _job_run(client: httpx.AsyncClient, path: str, body: dict[str, Any] | None) -> dict[str, Any]:
    """Start a job through the API, follow it to its end; return its wall time, rate and result."""
    started = time.perf_counter()
    answer = await client.post(path, json=body)
    if answer.status_code != 202:
        return {"skipped": f"POST {path} answered {answer.status_code}: {answer.text[:300]}"}
    job = await _poll_job(client, answer.json()["job"]["id"], started)
    wall = time.perf_counter() - started
    if job.get("state") != "succeeded":
        return {
            "skipped": f"the job ended {job.get('state')!r}: {job.get('error')}",
            "wall_s": round(wall, 1),
        }
    return {"wall_s": round(wall, 2), "items": job.get("total"), "job_rate_per_s": job.get("rate_per_s")}


async def _duplicate_scan(client: httpx.AsyncClient, database_url: str, size: int) -> dict[str, Any]:
    """A full duplicate scan of the base, beside a bare SQL pass reading what it compares."""
    baseline = await _sql_median(database_url, CANDIDATE_SCAN_SQL)
    scan = await _job_run(client, "/v1/duplicates/scan", {"full": True})
    if "wall_s" in scan and "skipped" not in scan:
        scan["profiles_per_s"] = round(size / scan["wall_s"])
        scan["minutes_at_1m_linear"] = round(scan["wall_s"] * 1_000_000 / size / 60, 1)
    return {**scan, "baseline_sql_pass_s": baseline}


async def _model_runs(client: httpx.AsyncClient, database_url: str, size: int) -> dict[str, Any]:
    """Each model run over the whole base, beside a bare SQL pass over segment's copy."""
    report: dict[str, Any] = {"baseline_sql_pass_s": await _sql_median(database_url, COPY_SCAN_SQL)}
    for model in MODELS:
        run = await _job_run(client, f"/v1/models/{model}/run", None)
        if "wall_s" in run and "skipped" not in run:
            run["profiles_per_s"] = round(size / run["wall_s"])
            run["minutes_at_1m_linear"] = round(run["wall_s"] * 1_000_000 / size / 60, 1)
        report[model] = run
    return report


async def _measure(
    process: ServiceProcess,
    segment: ServiceProcess,
    settings: PlatformSettings,
    database_url: str,
    size: int,
    now: datetime,
) -> dict[str, Any]:
    admin_token = settings.admin_token.get_secret_value()
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
    report["resolution"] = await _resolution(settings, database_url, size, now)
    async with httpx.AsyncClient(base_url=segment.url, headers=headers, timeout=120) as client:
        report["segment"] = await _segment(client, database_url, size, sql["median_s"])
        report["models"] = await _model_runs(client, database_url, size)
    async with httpx.AsyncClient(base_url=process.url, headers=headers, timeout=120) as client:
        report["duplicate_scan"] = await _duplicate_scan(client, database_url, size)
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
    environ = {
        "CDP_ENV": name,
        "CDP_DATABASE_URL": database_url,
        "CDP_KAFKA_BOOTSTRAP": env["CDP_KAFKA_BOOTSTRAP"],
        "CDP_ADMIN_TOKEN": env["CDP_ADMIN_TOKEN"],
        "CDP_HASH_KEY": hash_key,
        "CDP_LOG_LEVEL": "WARNING",
        # The loaded people are compared by the full duplicate scan measured last; the changes'
        # job (bench_duplicates measures it) would compare them meanwhile, under the other figures.
        "CDP_PROFILE_DUPLICATES_INTERVAL_S": "86400",
    }
    settings = PlatformSettings(
        env=name,
        database_url=database_url,
        kafka_bootstrap=env["CDP_KAFKA_BOOTSTRAP"],
        admin_token=env["CDP_ADMIN_TOKEN"],
    )
    process = ServiceProcess(
        name="profile",
        port=free_port(),
        environ=environ,
        log_path=Path(tempfile.gettempdir()) / f"{name}.log",
    )
    segment = ServiceProcess(
        name="segment",
        port=free_port(),
        environ={**environ, "CDP_PROFILE_URL": process.url},
        log_path=Path(tempfile.gettempdir()) / f"{name}-segment.log",
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
        segment.start()
        await segment.wait_ready(timeout=180)
        sizes = [SMALL] + ([large] if large > SMALL else [])
        if os.environ.get("BENCH_SCALE_ONLY_LARGE") and large > SMALL:
            sizes = [large]
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
            report["sizes"][str(size)] = await _measure(process, segment, settings, database_url, size, now)
        rates = {
            int(s): m["resolution"]["events_per_s"]
            for s, m in report["sizes"].items()
            if "events_per_s" in m["resolution"]
        }
        if SMALL in rates and max(rates) > SMALL:
            report["resolution_large_over_100k"] = round(rates[max(rates)] / rates[SMALL], 2)
        measured = max(int(s) for s in report["sizes"])
        if measured < TARGET:
            report["note"] = (
                f"measured up to {measured:,} people (set BENCH_SCALE_PROFILES for a larger base; "
                f"10,000,000 with {EVENTS_PER_PROFILE} events need about 145 GB of disk); "
                f"{TARGET:,} extrapolated linearly from {measured:,}"
            )
            report["extrapolated_10m"] = _extrapolate(report["sizes"][str(measured)], measured)
    finally:
        segment.stop()
        process.stop()
        admin = AIOKafkaAdminClient(bootstrap_servers=env["CDP_KAFKA_BOOTSTRAP"])
        await admin.start()
        try:
            mine = [t for t in await admin.list_topics() if t.startswith(f"{name}.")]
            if mine:
                await admin.delete_topics(mine)
        finally:
            await admin.close()
        await drop_database(f"{server}/postgres", database)
    return report
