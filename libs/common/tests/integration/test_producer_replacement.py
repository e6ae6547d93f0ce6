"""A producer whose idempotent sequence went out of step is replaced, and the relay drains its backlog.

Against the real Kafka broker and PostgreSQL. The test puts the producer's sequence numbers
ahead of what the broker expects (what a lost produce response can leave behind), through
aiokafka's internals, so the broker refuses every later batch of that producer with
OUT_OF_ORDER_SEQUENCE_NUMBER.
"""

from __future__ import annotations

import secrets

import pytest
import sqlalchemy as sa
from aiokafka import AIOKafkaProducer
from aiokafka.errors import OutOfOrderSequenceNumber
from cdp_common.db import create_session_factory, outbox_table, transaction
from cdp_common.events import TokenRevoked, make_envelope
from cdp_common.kafka import KafkaPublisher, create_producer
from cdp_common.outbox import OutboxRelay, add_to_outbox
from cdp_common.settings import PlatformSettings
from cdp_common.testing import read_topic, wait_for
from cdp_common.topics import TopicName
from prometheus_client import REGISTRY
from sqlalchemy.ext.asyncio import AsyncEngine

pytestmark = pytest.mark.integration


async def write_rows(engine: AsyncEngine, topic: str, token_ids: list[str]) -> None:
    async with transaction(create_session_factory(engine)) as session:
        for token_id in token_ids:
            envelope = make_envelope(payload=TokenRevoked(token_id=token_id), source="test", subject=token_id)
            await add_to_outbox(session=session, topic=topic, envelope=envelope)


async def drained(engine: AsyncEngine) -> bool:
    async with engine.connect() as conn:
        left = (
            await conn.execute(
                sa.select(sa.func.count())
                .select_from(outbox_table)
                .where(outbox_table.c.published_at.is_(None))
            )
        ).scalar_one()
    return int(left) == 0


def put_sequences_out_of_step(producer: AIOKafkaProducer) -> int:
    """Move every partition's next sequence number past the broker's; return how many partitions."""
    sequences = producer._txn_manager._sequence_numbers
    for tp in list(sequences):
        sequences[tp] += 5
    return len(sequences)


def replacements(service: str, reason: str) -> float:
    value = REGISTRY.get_sample_value(
        "cdp_kafka_producer_replaced_total", {"service": service, "reason": reason}
    )
    return value or 0.0


async def test_a_relay_whose_producer_fell_out_of_sequence_gets_a_new_producer_and_publishes_everything(
    schema_engine: AsyncEngine, settings: PlatformSettings
) -> None:
    topic = settings.topic(TopicName.TOKENS)
    service = "seq-" + secrets.token_hex(4)
    first = create_producer(settings, client_id=service)
    await first.start()
    publisher = KafkaPublisher(
        first, make_producer=lambda: create_producer(settings, client_id=service), service=service
    )
    relay = OutboxRelay(engine=schema_engine, publisher=publisher, service=service, idle_wait_s=0.2)
    before = [f"before-{i}" for i in range(10)]
    after = [f"after-{i}" for i in range(30)]
    relay.start()
    try:
        await write_rows(schema_engine, topic, before)
        await wait_for(lambda: drained(schema_engine), what="the first rows to go out")
        assert put_sequences_out_of_step(first) == 2, "the first rows went to both partitions"
        # The premise: this producer can no longer deliver anything.
        with pytest.raises(OutOfOrderSequenceNumber):
            await first.send_and_wait(topic, value=b"{}", key=b"probe")

        await write_rows(schema_engine, topic, after)
        await wait_for(
            lambda: drained(schema_engine), timeout=60, what="the backlog to drain with a new producer"
        )
    finally:
        await relay.stop()
        await publisher.stop()
        await first.stop()

    assert publisher.producer is not first
    assert replacements(service, "OutOfOrderSequenceNumber") == 1
    read = await read_topic(
        bootstrap=settings.kafka_bootstrap,
        topic=topic,
        until=lambda seen: (
            {e.data.token_id for e in seen if hasattr(e.data, "token_id")} >= {*before, *after}
        ),
    )
    # At least once: every row arrived, some perhaps twice, always under the same envelope id.
    by_id = {e.id: e.data.token_id for e in read}
    assert sorted(set(by_id.values())) == sorted({*before, *after})
    assert len(by_id) == len(before) + len(after)


async def test_a_publisher_shared_by_callers_replaces_a_broken_producer_once(
    settings: PlatformSettings,
) -> None:
    topic = settings.topic(TopicName.TOKENS)
    service = "seq-" + secrets.token_hex(4)
    first = create_producer(settings, client_id=service)
    await first.start()
    publisher = KafkaPublisher(
        first, make_producer=lambda: create_producer(settings, client_id=service), service=service
    )
    try:
        for key in ("a", "b", "c", "d"):
            await publisher.publish(topic=topic, key=key, value=b"{}")
        put_sequences_out_of_step(first)
        failures = []
        for key in ("a", "b", "c", "d"):
            try:
                await publisher.publish(topic=topic, key=key, value=b"{}")
            except OutOfOrderSequenceNumber as exc:
                failures.append(exc)
        # The first failure replaced the producer; the calls after it went out with the new one.
        assert len(failures) == 1
        assert replacements(service, "OutOfOrderSequenceNumber") == 1
        second = publisher.producer
        assert second is not first
        await publisher.publish(topic=topic, key="e", value=b"{}")
        assert publisher.producer is second
    finally:
        await publisher.stop()
        await first.stop()
