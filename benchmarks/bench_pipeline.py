"""The common consumer runner: events/s handled with the idempotency record and offset
commits, beside a raw aiokafka consumer reading the same messages in the same run."""

from __future__ import annotations

import secrets
import time
from typing import Any

import sqlalchemy as sa
from aiokafka import AIOKafkaConsumer
from cdp_common.db import create_engine, create_session_factory, platform_metadata
from cdp_common.envelope import Envelope
from cdp_common.events import TokenRevoked, make_envelope
from cdp_common.kafka import ConsumerRunner, KafkaPublisher, create_producer, ensure_topics
from cdp_common.settings import PlatformSettings
from cdp_common.topics import TopicName
from sqlalchemy.ext.asyncio import AsyncSession

NAME = "pipeline"
MESSAGES = 20_000


async def run(env: dict[str, str]) -> dict[str, Any]:
    """Produce MESSAGES envelopes, then time a raw consumer and the runner over them."""
    settings = PlatformSettings(
        env="bench" + secrets.token_hex(3),
        kafka_bootstrap=env["CDP_KAFKA_BOOTSTRAP"],
        database_url=env["CDP_DATABASE_URL"],
        topic_partitions=6,
    )
    topic = settings.topic(TopicName.TOKENS)
    await ensure_topics(settings, [TopicName.TOKENS])
    producer = create_producer(settings, client_id="bench")
    await producer.start()
    started = time.perf_counter()
    futures = []
    for i in range(MESSAGES):
        envelope = make_envelope(
            payload=TokenRevoked(token_id=f"t{i}"), source="bench", subject=f"k{i % 997}"
        )
        futures.append(await producer.send(topic, value=envelope.to_bytes(), key=envelope.subject.encode()))
    for future in futures:
        await future
    produce_s = time.perf_counter() - started

    raw = AIOKafkaConsumer(
        topic,
        bootstrap_servers=settings.kafka_bootstrap,
        group_id=f"{settings.env}.raw",
        auto_offset_reset="earliest",
    )
    await raw.start()
    started = time.perf_counter()
    seen = 0
    while seen < MESSAGES:
        batches = await raw.getmany(timeout_ms=1000, max_records=500)
        seen += sum(len(records) for records in batches.values())
    raw_s = time.perf_counter() - started
    await raw.stop()

    schema = "bench_" + secrets.token_hex(4)
    engine = create_engine(database_url=settings.database_url, schema=schema, pool_size=4)
    async with engine.begin() as conn:
        await conn.execute(sa.text(f'CREATE SCHEMA "{schema}"'))
    async with engine.begin() as conn:
        await conn.run_sync(platform_metadata.create_all)
    handled = 0

    async def count(*, session: AsyncSession, envelope: Envelope[Any]) -> None:
        nonlocal handled
        handled += 1

    runner = ConsumerRunner(
        settings=settings,
        group_id=f"{settings.env}.runner",
        topics=[TopicName.TOKENS],
        handlers={TokenRevoked: count},
        session_factory=create_session_factory(engine),
        publisher=KafkaPublisher(producer),
        source="bench",
    )
    started = time.perf_counter()
    await runner.start()
    while handled < MESSAGES:
        await _tick()
    runner_s = time.perf_counter() - started
    await runner.stop()
    await producer.stop()
    async with engine.begin() as conn:
        await conn.execute(sa.text(f'DROP SCHEMA "{schema}" CASCADE'))
    await engine.dispose()
    return {
        "messages": MESSAGES,
        "produce_events_per_s": round(MESSAGES / produce_s),
        "raw_consumer_events_per_s": round(MESSAGES / raw_s),
        "runner_events_per_s": round(MESSAGES / runner_s),
        "runner_vs_raw_consumer": round(raw_s / runner_s, 3),
        "note": "runner = one transaction per partition batch with the idempotency record, offsets committed after it; timed from start, group join included",
    }


async def _tick() -> None:
    import asyncio

    await asyncio.sleep(0.05)
