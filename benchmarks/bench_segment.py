"""Segment: a full recompute over 1,000,000 profiles beside the bare SQL count of the same predicate,
and the latency from HTTP accept at ingest to the entered event on cdp.segments.v1 at steady rates.

The recompute runs in a private schema (migrated like the service's, filled with
generated profiles by one INSERT ... SELECT), so the dev stack's data is untouched.
The latency part drives the running stack: it defines a segment on a trait of this
run, sends identify calls that set the trait at a steady rate, and times each
call from ingest's 200 to the SegmentEntered event read from the segments topic.
"""

from __future__ import annotations

import asyncio
import secrets
import statistics
import time
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import httpx
import sqlalchemy as sa
from aiokafka import AIOKafkaConsumer
from cdp_common.db import create_engine, create_session_factory
from cdp_common.events import (
    InvalidEvent,
    ProfileChanged,
    SegmentEntered,
    UnknownEventType,
    decode_envelope,
)
from cdp_common.migrations import migrate
from cdp_common.settings import PlatformSettings
from cdp_segment.batch import recompute_segment
from cdp_segment.compiler import members_query
from cdp_segment.domain.rules import parse_rule
from cdp_segment.handlers import SegmentContext, create_segment

NAME = "segment"
PROFILES = 1_000_000
MIGRATIONS = Path(__file__).resolve().parents[1] / "services" / "segment" / "migrations"
RULE: dict[str, Any] = {
    "all": [
        {"trait": "plan", "op": "in", "value": ["pro", "team"]},
        {"geo": {"country": ["DE", "AT"]}},
        {"computed": "orders", "op": "gte", "value": 2},
    ]
}
BARE_PREDICATE = (
    "merged_into IS NULL AND version > 0 AND traits->>'plan' IN ('pro', 'team')"
    " AND lower(traits #>> '{address,country}') IN ('de', 'at')"
    " AND (computed->>'orders')::numeric >= 2"
)
RATES = (200, 1000)
RATE_SECONDS = 5.0


async def _timed(coroutine: Any) -> tuple[float, Any]:
    started = time.perf_counter()
    result = await coroutine
    return time.perf_counter() - started, result


async def recompute_benchmark(database_url: str) -> dict[str, Any]:
    """Time the recompute of one segment over generated profiles beside bare counts of its predicate."""
    schema = "bench_segment_" + secrets.token_hex(3)
    url = PlatformSettings(database_url=database_url).database_url
    engine = create_engine(database_url=url, schema=schema, pool_size=2)
    await migrate(engine=engine, schema=schema, script_location=MIGRATIONS)
    sessions = create_session_factory(engine)
    now = datetime.now(UTC)
    context = SegmentContext(segments_topic="bench.cdp.segments.v1", clock=lambda: now)
    try:
        fill_s, _ = await _timed(_fill(engine))
        async with engine.begin() as conn:
            await conn.execute(sa.text("ANALYZE known_profiles"))
        async with sessions() as session, session.begin():
            first_s, (segment, first) = await _timed(
                create_segment(
                    session=session, context=context, key="bench", name="bench", description="", rule=RULE
                )
            )
        compiled = members_query(parse_rule(RULE).root, now).subquery()
        results: dict[str, Any] = {}
        for _ in range(3):
            async with sessions() as session:
                bare_s, bare = await _timed(
                    session.execute(sa.text(f"SELECT count(*) FROM known_profiles WHERE {BARE_PREDICATE}"))  # noqa: S608
                )
                compiled_s, compiled_count = await _timed(
                    session.execute(sa.select(sa.func.count()).select_from(compiled))
                )
            async with sessions() as session, session.begin():
                recompute_s, unchanged = await _timed(
                    recompute_segment(
                        session=session, segment=segment, now=now, topic="bench", trigger="bench"
                    )
                )
            results.setdefault("bare_count_s", []).append(bare_s)
            results.setdefault("compiled_count_s", []).append(compiled_s)
            results.setdefault("recompute_s", []).append(recompute_s)
            assert unchanged == {"entered": 0, "exited": 0}
            assert bare.scalar_one() == compiled_count.scalar_one() == first["entered"]
        async with engine.begin() as conn:
            await conn.execute(
                sa.text(
                    'UPDATE known_profiles SET traits = traits || \'{"plan": "free"}\''
                    " WHERE profile_id IN (SELECT profile_id FROM memberships LIMIT 10000)"
                )
            )
        async with sessions() as session, session.begin():
            changed_s, changed = await _timed(
                recompute_segment(session=session, segment=segment, now=now, topic="bench", trigger="bench")
            )
        best = {name: min(values) for name, values in results.items()}
        return {
            "profiles": PROFILES,
            "members": first["entered"],
            "fill_s": round(fill_s, 2),
            "first_compute_s (every member enters: memberships, history and outbox rows)": round(first_s, 3),
            "recompute_s (no change)": round(best["recompute_s"], 3),
            "bare_sql_count_s": round(best["bare_count_s"], 3),
            "compiled_predicate_count_s": round(best["compiled_count_s"], 3),
            "recompute_vs_bare_count": round(best["recompute_s"] / best["bare_count_s"], 2),
            "recompute_with_10000_exits_s": round(changed_s, 3),
            "exits": changed["exited"],
            "note": "best of 3; the recompute finds who enters and leaves against stored memberships in one statement",
        }
    finally:
        async with engine.begin() as conn:
            await conn.execute(sa.text(f'DROP SCHEMA "{schema}" CASCADE'))
        await engine.dispose()


async def _fill(engine: Any) -> None:
    async with engine.begin() as conn:
        await conn.execute(
            sa.text(
                f"""
                INSERT INTO known_profiles (profile_id, version, traits, computed)
                SELECT 'p' || lpad(i::text, 7, '0'), 1,
                       jsonb_build_object(
                         'plan', (ARRAY['free', 'pro', 'team', 'trial'])[1 + i % 4],
                         'address', jsonb_build_object('country', (ARRAY['DE', 'FR', 'at', 'IT', 'ES'])[1 + (i / 7) % 5]),
                         'birthday', (date '1950-01-01' + (i % 20000))::text),
                       jsonb_build_object('orders', (i / 3) % 6, 'revenue', (i % 997) * 1.5)
                  FROM generate_series(1, {PROFILES}) AS i
                """  # noqa: S608
            )
        )


async def latency_benchmark(env: dict[str, str]) -> dict[str, Any]:
    """Send identify calls at steady rates and time ingest's 200 to the SegmentEntered event."""
    run = secrets.token_hex(4)
    admin = {"Authorization": f"Bearer {env['CDP_ADMIN_TOKEN']}"}
    segments_topic = "dev.cdp.segments.v1"
    profiles_topic = "dev.cdp.profiles.v1"
    async with httpx.AsyncClient(timeout=30) as http:
        key = f"bench_{run}"
        created = await http.post(
            f"{env['CDP_SEGMENT_URL']}/v1/segments",
            json={
                "key": key,
                "name": "latency benchmark",
                "rule": {"trait": "bench_run", "op": "eq", "value": run},
            },
            headers=admin,
        )
        created.raise_for_status()
        consumer = AIOKafkaConsumer(
            segments_topic,
            profiles_topic,
            bootstrap_servers=env["CDP_KAFKA_BOOTSTRAP"],
            group_id=None,
            auto_offset_reset="latest",
        )
        await consumer.start()
        try:
            await consumer.seek_to_end()
            report: dict[str, Any] = {}
            for rate in RATES:
                report[f"{rate}_events_per_s"] = await _at_rate(http, consumer, env, key, run, rate)
        finally:
            await consumer.stop()
            await http.delete(f"{env['CDP_SEGMENT_URL']}/v1/segments/{key}", headers=admin)
    return report


async def _at_rate(
    http: httpx.AsyncClient, consumer: AIOKafkaConsumer, env: dict[str, str], key: str, run: str, rate: int
) -> dict[str, Any]:
    accepted: dict[str, float] = {}
    entered: dict[str, float] = {}
    profiled: dict[str, float] = {}
    total = int(rate * RATE_SECONDS)
    auth = (env["CDP_WRITE_KEY"], "")
    refused = 0

    async def send(i: int) -> None:
        nonlocal refused
        user = f"bench-{run}-{rate}-{i}"
        response = await http.post(
            f"{env['CDP_INGEST_URL']}/v1/identify",
            json={"userId": user, "traits": {"bench_run": run}},
            auth=auth,
        )
        if response.status_code == 200:
            accepted[user] = time.perf_counter()
        else:
            refused += 1

    async def read() -> None:
        while True:
            batches = await consumer.getmany(timeout_ms=200)
            for records in batches.values():
                for record in records:
                    try:
                        envelope = decode_envelope(record.value)
                    except (InvalidEvent, UnknownEventType):
                        continue
                    data = envelope.data
                    if isinstance(data, SegmentEntered) and data.segment_key == key:
                        entered[envelope.subject] = time.perf_counter()
                    elif isinstance(data, ProfileChanged) and data.changed_traits.get("bench_run") == run:
                        profiled.setdefault(data.profile_id, time.perf_counter())

    reader = asyncio.create_task(read())
    pending = set()
    started = time.perf_counter()
    for i in range(total):
        await asyncio.sleep(max(0.0, started + i / rate - time.perf_counter()))
        pending.add(asyncio.create_task(send(i)))
    await asyncio.gather(*pending)
    send_s = time.perf_counter() - started
    deadline = time.perf_counter() + 60
    profile_ids: dict[str, str] = {}
    while time.perf_counter() < deadline and len(entered) < len(accepted):
        await asyncio.sleep(0.2)
    reader.cancel()
    await asyncio.gather(reader, return_exceptions=True)
    # The entered event's subject is the profile id; look the users up once to pair them.
    for user in list(accepted)[:: max(1, len(accepted) // 300)]:
        response = await http.get(
            f"{env['CDP_PROFILE_URL']}/v1/profiles/user_id:{user}",
            headers={"Authorization": f"Bearer {env['CDP_ADMIN_TOKEN']}"},
        )
        if response.status_code == 200:
            profile_ids[user] = response.json()["id"]
    latencies = sorted(
        (entered[pid] - accepted[user]) * 1000 for user, pid in profile_ids.items() if pid in entered
    )
    # Segment's own share: from the profile change on cdp.profiles.v1 to the entered event.
    segment_share = sorted((entered[pid] - profiled[pid]) * 1000 for pid in entered if pid in profiled)
    if not latencies:
        return {
            "sent": total,
            "accepted": len(accepted),
            "entered": len(entered),
            "note": "no entered event paired",
        }
    return {
        "sent": total,
        "achieved_send_rate_per_s": round(total / send_s),
        "accepted": len(accepted),
        "refused": refused,
        "entered": len(entered),
        "sampled": len(latencies),
        "p50_ms": round(statistics.median(latencies), 1),
        "p99_ms": round(latencies[min(len(latencies) - 1, int(len(latencies) * 0.99))], 1),
        "max_ms": round(latencies[-1], 1),
        "profile_change_to_entered_p50_ms": round(statistics.median(segment_share), 1)
        if segment_share
        else None,
        "profile_change_to_entered_p99_ms": round(segment_share[int(len(segment_share) * 0.99)], 1)
        if segment_share
        else None,
    }


async def run(env: dict[str, str]) -> dict[str, Any]:
    """Run both parts; the latency part needs the running stack."""
    return {
        "recompute": await recompute_benchmark(env["CDP_DATABASE_URL"]),
        "latency_ingest_to_entered": await latency_benchmark(env),
    }
