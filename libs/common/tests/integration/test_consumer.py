"""The consumer runner against the real Kafka and PostgreSQL: exactly-once effects, DLQ, skipping."""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import pytest
import sqlalchemy as sa
from aiokafka import AIOKafkaConsumer, AIOKafkaProducer
from aiokafka.admin import AIOKafkaAdminClient
from cdp_common.db import create_session_factory
from cdp_common.envelope import Envelope
from cdp_common.events import DeadLetter, TokenRevoked, make_envelope
from cdp_common.kafka import ConsumerRunner, KafkaPublisher, ensure_topics
from cdp_common.settings import PlatformSettings
from cdp_common.testing import read_topic, wait_for
from cdp_common.topics import ServiceTopic, Topic, TopicName
from sqlalchemy.ext.asyncio import AsyncEngine, AsyncSession

from ..conftest import effects

pytestmark = pytest.mark.integration


async def record_effect(*, session: AsyncSession, envelope: Envelope[Any]) -> None:
    """A handler that is not idempotent by itself: it appends a row per call."""
    data: TokenRevoked = envelope.data
    if data.token_id.startswith("poison"):
        raise ValueError("this token id always fails")
    await session.execute(effects.insert().values(event_id=envelope.id, token_id=data.token_id))


def make_runner(
    settings: PlatformSettings,
    engine: AsyncEngine,
    producer: AIOKafkaProducer,
    topics: Sequence[Topic] = (TopicName.TOKENS,),
) -> ConsumerRunner:
    return ConsumerRunner(
        settings=settings,
        group_id=settings.group_id("test", "tokens"),
        topics=topics,
        handlers={TokenRevoked: record_effect},
        session_factory=create_session_factory(engine),
        publisher=KafkaPublisher(producer),
        source="test",
    )


async def send(producer: AIOKafkaProducer, topic: str, value: bytes, key: str = "k") -> None:
    await producer.send_and_wait(topic, value=value, key=key.encode())


def revoked(token_id: str) -> bytes:
    return make_envelope(payload=TokenRevoked(token_id=token_id), source="test", subject="k").to_bytes()


async def effect_rows(engine: AsyncEngine) -> list[str]:
    async with engine.connect() as conn:
        return list((await conn.execute(sa.select(effects.c.token_id).order_by(effects.c.id))).scalars())


async def test_consumer_killed_after_db_commit_before_offset_commit_applies_once(
    schema_engine: AsyncEngine, settings: PlatformSettings, producer: AIOKafkaProducer
) -> None:
    topic = settings.topic(TopicName.TOKENS)
    await send(producer, topic, revoked("once"))

    # The first consumer handles the record (its transaction commits) and dies before
    # committing the offset: run its processing step alone, never its offset commit.
    dying = make_runner(settings, schema_engine, producer)
    reader = AIOKafkaConsumer(
        topic,
        bootstrap_servers=settings.kafka_bootstrap,
        group_id=settings.group_id("test", "probe"),
        auto_offset_reset="earliest",
        enable_auto_commit=False,
    )
    await reader.start()
    try:
        record = await reader.getone()
        assert await dying.process(record) == "processed"
    finally:
        await reader.stop()
    assert await effect_rows(schema_engine) == ["once"]

    # Its replacement in the same group gets the record again and must not apply it twice.
    replacement = make_runner(settings, schema_engine, producer)
    await replacement.start()
    try:
        await send(producer, topic, revoked("next"))
        await wait_for(lambda: _has(schema_engine, "next"), what="the replacement to catch up")
        assert await effect_rows(schema_engine) == ["once", "next"]
    finally:
        await replacement.stop()


async def _has(engine: AsyncEngine, token_id: str) -> bool:
    return token_id in await effect_rows(engine)


async def test_poison_messages_go_to_the_dlq_and_the_consumer_carries_on(
    schema_engine: AsyncEngine, settings: PlatformSettings, producer: AIOKafkaProducer
) -> None:
    topic = settings.topic(TopicName.TOKENS)
    await send(producer, topic, b"{not json")
    await send(producer, topic, revoked("poison-1"))
    await send(producer, topic, b'{"id": "x", "type": "cdp.token.revoked.v1"}')
    unknown = make_envelope(payload=TokenRevoked(token_id="u"), source="test", subject="k").model_copy(
        update={"type": "cdp.something.new.v7"}
    )
    await send(producer, topic, unknown.to_bytes())
    await send(producer, topic, revoked("good"))

    runner = make_runner(settings, schema_engine, producer)
    await runner.start()
    try:
        await wait_for(lambda: _has(schema_engine, "good"), what="the good message after the poison ones")
        dead = await read_topic(
            bootstrap=settings.kafka_bootstrap,
            topic=settings.dlq_topic(TopicName.TOKENS),
            until=lambda e: len(e) >= 3,
        )
    finally:
        await runner.stop()
    letters = [e.data for e in dead]
    assert all(isinstance(letter, DeadLetter) for letter in letters)
    by_value = {letter.value: letter for letter in letters}
    assert "not JSON" in by_value["{not json"].error
    handler_failure = next(letter for letter in letters if "poison-1" in letter.value)
    assert "ValueError: this token id always fails" in handler_failure.error
    assert handler_failure.attempts == settings.consumer_max_retries + 1
    assert handler_failure.topic == topic
    assert any("not an envelope" in letter.error for letter in letters)
    # The unknown type is skipped, not dead-lettered, and nothing else was applied.
    assert len(letters) == 3
    assert await effect_rows(schema_engine) == ["good"]


async def test_a_topic_of_one_service_is_created_with_its_own_dead_letter_topic(
    schema_engine: AsyncEngine, settings: PlatformSettings, producer: AIOKafkaProducer
) -> None:
    own = ServiceTopic("cdp.test-jobs.v1")
    await ensure_topics(settings, [own])
    await send(producer, settings.topic(own), revoked("poison-own"))
    await send(producer, settings.topic(own), revoked("good-own"))

    runner = make_runner(settings, schema_engine, producer, topics=[own])
    await runner.start()
    try:
        await wait_for(lambda: _has(schema_engine, "good-own"), what="the good message after the poison one")
        dead = await read_topic(
            bootstrap=settings.kafka_bootstrap, topic=settings.dlq_topic(own), until=lambda e: len(e) >= 1
        )
    finally:
        await runner.stop()
    assert settings.dlq_topic(own) == f"{settings.env}.cdp.test-jobs.dlq.v1"
    assert [(e.data.topic, "poison-own" in e.data.value) for e in dead] == [(settings.topic(own), True)]


async def test_a_redelivered_event_changes_nothing(
    schema_engine: AsyncEngine, settings: PlatformSettings, producer: AIOKafkaProducer
) -> None:
    topic = settings.topic(TopicName.TOKENS)
    envelope = make_envelope(payload=TokenRevoked(token_id="dup"), source="test", subject="k")
    await send(producer, topic, envelope.to_bytes())
    await send(producer, topic, envelope.to_bytes())
    await send(producer, topic, revoked("end"))
    runner = make_runner(settings, schema_engine, producer)
    await runner.start()
    try:
        await wait_for(lambda: _has(schema_engine, "end"), what="the last message")
    finally:
        await runner.stop()
    assert await effect_rows(schema_engine) == ["dup", "end"]


async def _records(settings: PlatformSettings, count: int) -> list[Any]:
    """Read the first records of the tokens topic with a probe consumer (offsets never committed)."""
    reader = AIOKafkaConsumer(
        settings.topic(TopicName.TOKENS),
        bootstrap_servers=settings.kafka_bootstrap,
        group_id=settings.group_id("test", "batch-probe"),
        auto_offset_reset="earliest",
        enable_auto_commit=False,
    )
    await reader.start()
    records: list[Any] = []
    try:
        while len(records) < count:
            for batch in (await reader.getmany(timeout_ms=1000)).values():
                records.extend(batch)
    finally:
        await reader.stop()
    return records


async def test_a_batch_handler_takes_a_run_of_events_and_a_poison_one_falls_back_to_one_at_a_time(
    schema_engine: AsyncEngine, settings: PlatformSettings, producer: AIOKafkaProducer
) -> None:
    batches: list[list[str]] = []

    async def record_effects(*, session: AsyncSession, envelopes: Any) -> None:
        tokens = [e.data.token_id for e in envelopes]
        batches.append(tokens)
        await session.execute(
            effects.insert(), [{"event_id": e.id, "token_id": e.data.token_id} for e in envelopes]
        )
        if any(token.startswith("poison") for token in tokens):
            raise ValueError("a poison event in the batch")

    runner = ConsumerRunner(
        settings=settings,
        group_id=settings.group_id("test", "batched"),
        topics=[TopicName.TOKENS],
        handlers={TokenRevoked: record_effect},
        batch_handlers={TokenRevoked: record_effects},
        session_factory=create_session_factory(schema_engine),
        publisher=KafkaPublisher(producer),
        source="test",
    )
    topic = settings.topic(TopicName.TOKENS)
    for token in ("a-1", "a-2", "a-3", "b-1", "b-2", "poison-b", "b-3"):
        await send(producer, topic, revoked(token))
    records = await _records(settings, 7)

    # A clean run goes to the batch handler in one call, in order.
    await runner.process_batch(records[:3])
    assert batches == [["a-1", "a-2", "a-3"]]
    assert await effect_rows(schema_engine) == ["a-1", "a-2", "a-3"]

    # A poison event rolls the whole batch back; one at a time, only it goes to the DLQ.
    await runner.process_batch(records[3:])
    assert batches[1] == ["b-1", "b-2", "poison-b", "b-3"]
    assert await effect_rows(schema_engine) == ["a-1", "a-2", "a-3", "b-1", "b-2", "b-3"]
    dead = await read_topic(
        bootstrap=settings.kafka_bootstrap,
        topic=settings.dlq_topic(TopicName.TOKENS),
        until=lambda e: len(e) >= 1,
    )
    assert ["poison-b" in e.data.value for e in dead] == [True]

    # Redelivered, the batch changes nothing: every event is recorded as processed.
    await runner.process_batch(records)
    assert await effect_rows(schema_engine) == ["a-1", "a-2", "a-3", "b-1", "b-2", "b-3"]
    # The runner knew the events it had handled: none of them reached a handler again.
    assert len(batches) == 2


async def _committed(settings: PlatformSettings, group_id: str) -> int:
    """How many records the group has committed as read on the tokens topic, over all partitions."""
    admin = AIOKafkaAdminClient(bootstrap_servers=settings.kafka_bootstrap)
    await admin.start()
    try:
        offsets = await admin.list_consumer_group_offsets(group_id)
    finally:
        await admin.close()
    topic = settings.topic(TopicName.TOKENS)
    return sum(meta.offset for tp, meta in offsets.items() if tp.topic == topic and meta.offset > 0)


async def test_offsets_are_committed_at_most_once_an_interval_and_all_of_them_at_stop(
    schema_engine: AsyncEngine, settings: PlatformSettings, producer: AIOKafkaProducer
) -> None:
    topic = settings.topic(TopicName.TOKENS)
    group = settings.group_id("test", "tokens")

    # Within the interval nothing is committed, however much is handled...
    patient = make_runner(
        settings.model_copy(update={"consumer_commit_interval_s": 3600.0}), schema_engine, producer
    )
    await patient.start()
    try:
        for token in ("p-1", "p-2", "p-3"):
            await send(producer, topic, revoked(token))
        await wait_for(lambda: _has(schema_engine, "p-3"), what="the consumer to handle three records")
        assert await _committed(settings, group) == 0
    finally:
        await patient.stop()
    # ...and what was handled is committed when the consumer stops: a successor reads none of it again.
    assert await _committed(settings, group) == 3

    # With no interval, each poll's offsets are committed right after its transaction.
    eager = make_runner(
        settings.model_copy(update={"consumer_commit_interval_s": 0.0}), schema_engine, producer
    )
    await eager.start()
    try:
        await send(producer, topic, revoked("e-1"))

        async def four_committed() -> bool:
            return await _committed(settings, group) == 4

        await wait_for(four_committed, what="the fourth offset to be committed while running")
        assert await effect_rows(schema_engine) == ["p-1", "p-2", "p-3", "e-1"]
    finally:
        await eager.stop()
