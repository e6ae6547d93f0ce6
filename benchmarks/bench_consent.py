"""Consent checks: profile ids answered per second in batches of 1,000 through the check API,
beside the same question asked as one raw SQL query (the service's own statement, no HTTP, no
auth, no JSON) against the same database in the same run."""

from __future__ import annotations

import asyncio
import secrets
import statistics
import time
from typing import Any

import httpx
from cdp_common.db import create_engine
from cdp_consent.store import CHECK_QUERY

NAME = "consent"
BATCH = 1_000
BATCHES = 60
GRANTED = 2_000
CONCURRENCY = 4
PURPOSE, CHANNEL = "email_marketing", "email"


async def run(env: dict[str, str]) -> dict[str, Any]:
    """Seed grants through the API, then time batches of checks through the API and as raw SQL."""
    url = env["CDP_CONSENT_URL"]
    headers = {"Authorization": f"Bearer {env['CDP_ADMIN_TOKEN']}"}
    prefix = "bench-" + secrets.token_hex(4)
    granted = [f"{prefix}-g{i}" for i in range(GRANTED)]
    async with httpx.AsyncClient(base_url=url, headers=headers, timeout=60) as client:
        await _seed(client, granted)
        batches = [
            [
                *(granted[(b * 500 + i) % GRANTED] for i in range(BATCH // 2)),
                *(f"{prefix}-u{b}-{i}" for i in range(BATCH // 2)),
            ]
            for b in range(BATCHES)
        ]
        # One warm-up batch each way, so connection set-up is not timed.
        await _check_api(client, batches[0])
        api_latencies: list[float] = []
        started = time.perf_counter()
        for batch in batches:
            api_latencies.append(await _check_api(client, batch))
        api_s = time.perf_counter() - started

        started = time.perf_counter()
        queue = list(batches)

        async def worker() -> None:
            while queue:
                await _check_api(client, queue.pop())

        await asyncio.gather(*(worker() for _ in range(CONCURRENCY)))
        api_parallel_s = time.perf_counter() - started

    engine = create_engine(database_url=_asyncpg(env["CDP_DATABASE_URL"]), schema="consent", pool_size=2)
    try:
        async with engine.connect() as conn:
            params = {"purpose": PURPOSE, "channel": CHANNEL, "kind": "email"}
            await conn.execute(CHECK_QUERY, {**params, "profile_ids": batches[0]})
            sql_latencies: list[float] = []
            started = time.perf_counter()
            for batch in batches:
                one = time.perf_counter()
                rows = (await conn.execute(CHECK_QUERY, {**params, "profile_ids": batch})).all()
                sql_latencies.append(time.perf_counter() - one)
                assert len(rows) == BATCH
            sql_s = time.perf_counter() - started
    finally:
        await engine.dispose()
    ids = BATCH * BATCHES
    return {
        "batch_size": BATCH,
        "batches": BATCHES,
        "api_profile_ids_per_s": round(ids / api_s),
        "api_batch_p50_ms": round(statistics.median(api_latencies) * 1000, 1),
        "api_batch_max_ms": round(max(api_latencies) * 1000, 1),
        f"api_profile_ids_per_s_{CONCURRENCY}_clients": round(ids / api_parallel_s),
        "raw_sql_profile_ids_per_s": round(ids / sql_s),
        "raw_sql_batch_p50_ms": round(statistics.median(sql_latencies) * 1000, 1),
        "api_vs_raw_sql": round(sql_s / api_s, 3),
        "note": "each batch: 500 granted ids and 500 unknown ones; raw SQL = the service's own check statement on one connection",
    }


async def _seed(client: httpx.AsyncClient, profile_ids: list[str]) -> None:
    queue = list(profile_ids)

    async def worker() -> None:
        while queue:
            profile_id = queue.pop()
            body = {
                "profile_id": profile_id,
                "purpose": PURPOSE,
                "channel": CHANNEL,
                "status": "granted",
                "source": "bench",
            }
            response = await client.post("/v1/consents", json=body)
            response.raise_for_status()

    await asyncio.gather(*(worker() for _ in range(16)))


async def _check_api(client: httpx.AsyncClient, batch: list[str]) -> float:
    started = time.perf_counter()
    response = await client.post(
        "/v1/consents/check", json={"purpose": PURPOSE, "channel": CHANNEL, "profile_ids": batch}
    )
    response.raise_for_status()
    answer = response.json()
    assert len(answer["allowed"]) == BATCH // 2
    return time.perf_counter() - started


def _asyncpg(url: str) -> str:
    return url.replace("postgresql://", "postgresql+asyncpg://", 1)
