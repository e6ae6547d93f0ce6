"""The outbox relay against the real PostgreSQL and Kafka: at-least-once, one leader, commit order."""

from __future__ import annotations

import asyncio
import random
from collections.abc import AsyncIterator, Sequence
from contextlib import asynccontextmanager

import pytest
import sqlalchemy as sa
from aiokafka import AIOKafkaProducer
from cdp_common.db import create_session_factory, outbox_table, transaction
from cdp_common.events import TokenRevoked, make_envelope
from cdp_common.kafka import KafkaPublisher
from cdp_common.outbox import OutboxMessage, OutboxRelay, add_to_outbox
from cdp_common.settings import PlatformSettings
from cdp_common.testing import read_topic, wait_for
from cdp_common.topics import TopicName
from sqlalchemy.ext.asyncio import AsyncEngine

pytestmark = pytest.mark.integration


class CountingPublisher:
    """Publishes for real and counts what it published."""

    def __init__(self, inner: KafkaPublisher) -> None:
        self.inner = inner
        self.published: list[int] = []

    async def publish_batch(self, messages: Sequence[OutboxMessage]) -> None:
        await self.inner.publish_batch(messages)
        self.published.extend(m.id for m in messages)


class DiesAfterPublishing:
    """Publishes for real, then hangs, as a relay that dies before marking rows published."""

    def __init__(self, inner: KafkaPublisher) -> None:
        self.inner = inner
        self.published = asyncio.Event()

    async def publish_batch(self, messages: Sequence[OutboxMessage]) -> None:
        await self.inner.publish_batch(messages)
        self.published.set()
        await asyncio.Event().wait()


@asynccontextmanager
async def running(relay: OutboxRelay) -> AsyncIterator[OutboxRelay]:
    """Run a relay for the block and stop it after, whatever happened."""
    relay.start()
    try:
        yield relay
    finally:
        await relay.stop()


async def write_rows(engine: AsyncEngine, topic: str, token_ids: list[str]) -> None:
    async with transaction(create_session_factory(engine)) as session:
        for token_id in token_ids:
            envelope = make_envelope(payload=TokenRevoked(token_id=token_id), source="test", subject=token_id)
            await add_to_outbox(session=session, topic=topic, envelope=envelope)


async def drained(engine: AsyncEngine) -> bool:
    return await unpublished(engine) == 0


async def unpublished(engine: AsyncEngine) -> int:
    async with engine.connect() as conn:
        return int(
            (
                await conn.execute(
                    sa.select(sa.func.count())
                    .select_from(outbox_table)
                    .where(outbox_table.c.published_at.is_(None))
                )
            ).scalar_one()
        )


async def test_rows_committed_while_no_relay_ran_are_published_in_order(
    schema_engine: AsyncEngine, settings: PlatformSettings, producer: AIOKafkaProducer
) -> None:
    topic = settings.topic(TopicName.TOKENS)
    await write_rows(schema_engine, topic, ["a", "b", "c"])
    relay = OutboxRelay(
        engine=schema_engine, publisher=KafkaPublisher(producer), service="test", idle_wait_s=0.2
    )
    relay.start()
    try:
        read = await read_topic(bootstrap=settings.kafka_bootstrap, topic=topic, until=lambda e: len(e) >= 3)
        assert sorted(e.data.token_id for e in read) == ["a", "b", "c"]
        await wait_for(lambda: drained(schema_engine), what="rows marked published")
    finally:
        await relay.stop()


async def test_relay_killed_between_publish_and_marking_is_redelivered_by_the_next(
    schema_engine: AsyncEngine, settings: PlatformSettings, producer: AIOKafkaProducer
) -> None:
    topic = settings.topic(TopicName.TOKENS)
    await write_rows(schema_engine, topic, ["x1", "x2"])
    dying = DiesAfterPublishing(KafkaPublisher(producer))
    first = OutboxRelay(engine=schema_engine, publisher=dying, service="test", idle_wait_s=0.2)
    first.start()
    await asyncio.wait_for(dying.published.wait(), timeout=30)
    await first.stop()
    assert await unpublished(schema_engine) == 2, "the dead relay must not have marked its rows"

    second = OutboxRelay(
        engine=schema_engine, publisher=KafkaPublisher(producer), service="test", idle_wait_s=0.2
    )
    second.start()
    try:
        await wait_for(lambda: drained(schema_engine), what="the next relay to publish and mark")
        read = await read_topic(bootstrap=settings.kafka_bootstrap, topic=topic, until=lambda e: len(e) >= 4)
        # At least once: both rows arrive twice, with the same envelope ids, so consumers dedupe.
        ids = [e.id for e in read]
        assert len(set(ids)) == 2
        assert sorted(e.data.token_id for e in read) == ["x1", "x1", "x2", "x2"]
    finally:
        await second.stop()


async def test_two_relays_never_both_publish_and_the_standby_takes_over(
    schema_engine: AsyncEngine, settings: PlatformSettings, producer: AIOKafkaProducer
) -> None:
    topic = settings.topic(TopicName.TOKENS)
    publishers = [CountingPublisher(KafkaPublisher(producer)) for _ in range(2)]
    relays = [
        OutboxRelay(engine=schema_engine, publisher=p, service="test", idle_wait_s=0.1) for p in publishers
    ]
    for relay in relays:
        relay.start()
    try:
        for batch in range(10):
            await write_rows(schema_engine, topic, [f"t{batch}-{i}" for i in range(5)])
            assert not all(r.is_leader for r in relays)
        await wait_for(lambda: drained(schema_engine), what="50 rows published")
        counts = sorted(len(p.published) for p in publishers)
        assert counts == [0, 50], f"exactly one relay publishes, got {counts}"
        assert not all(r.is_leader for r in relays)

        leader = next(i for i, p in enumerate(publishers) if p.published)
        await relays[leader].stop()
        await write_rows(schema_engine, topic, ["after-1", "after-2"])
        await wait_for(lambda: drained(schema_engine), what="the standby to take over")
        assert len(publishers[1 - leader].published) == 2
        read = await read_topic(bootstrap=settings.kafka_bootstrap, topic=topic, until=lambda e: len(e) >= 52)
        assert len({e.id for e in read}) == 52
    finally:
        for relay in relays:
            await relay.stop()


async def test_rows_are_published_in_commit_order(
    schema_engine: AsyncEngine, settings: PlatformSettings, producer: AIOKafkaProducer
) -> None:
    topic = settings.topic(TopicName.TOKENS)
    factory = create_session_factory(schema_engine)
    committed: list[str] = []

    async def writer(name: str) -> None:
        async with factory() as session:
            async with session.begin():
                envelope = make_envelope(
                    payload=TokenRevoked(token_id=name), source="test", subject="one-key"
                )
                await add_to_outbox(session=session, topic=topic, envelope=envelope)
                await asyncio.sleep(random.uniform(0.02, 0.06))
            committed.append(name)

    await asyncio.gather(*(writer(f"w{i}") for i in range(12)))
    relay = OutboxRelay(
        engine=schema_engine, publisher=KafkaPublisher(producer), service="test", idle_wait_s=0.2
    )
    relay.start()
    try:
        read = await read_topic(bootstrap=settings.kafka_bootstrap, topic=topic, until=lambda e: len(e) >= 12)
        assert [e.data.token_id for e in read] == committed
    finally:
        await relay.stop()


async def test_a_backlog_larger_than_a_batch_goes_out_whole_in_order_and_marked(
    schema_engine: AsyncEngine, settings: PlatformSettings, producer: AIOKafkaProducer
) -> None:
    topic = settings.topic(TopicName.TOKENS)
    names = [f"b{i:02d}" for i in range(11)]
    async with transaction(create_session_factory(schema_engine)) as session:
        for name in names:  # one key, so Kafka keeps their order
            envelope = make_envelope(payload=TokenRevoked(token_id=name), source="test", subject="one-key")
            await add_to_outbox(session=session, topic=topic, envelope=envelope)
    publisher = CountingPublisher(KafkaPublisher(producer))
    async with running(
        OutboxRelay(engine=schema_engine, publisher=publisher, service="test", batch_size=4, idle_wait_s=5)
    ):
        await wait_for(lambda: drained(schema_engine), what="three batches published and marked")
        read = await read_topic(bootstrap=settings.kafka_bootstrap, topic=topic, until=lambda e: len(e) >= 11)
    assert [e.data.token_id for e in read] == names
    assert publisher.published == sorted(publisher.published)
    assert len(publisher.published) == 11, "each row is sent once when nothing fails"


async def test_a_row_committed_behind_rows_already_sent_is_still_published(
    schema_engine: AsyncEngine, settings: PlatformSettings, producer: AIOKafkaProducer
) -> None:
    """A writer that skipped the write lock commits an older id late: the idle relay reads it again."""
    topic = settings.topic(TopicName.TOKENS)
    factory = create_session_factory(schema_engine)
    async with running(
        OutboxRelay(engine=schema_engine, publisher=KafkaPublisher(producer), service="test", idle_wait_s=0.2)
    ):
        async with factory() as late, late.begin():
            envelope = make_envelope(payload=TokenRevoked(token_id="late"), source="test", subject="late")
            await late.execute(
                outbox_table.insert().values(
                    topic=topic, key="late", event_id=envelope.id, payload=envelope.to_bytes()
                )
            )
            await write_rows(schema_engine, topic, ["early"])
            await wait_for(lambda: drained(schema_engine), what="the row committed first to go out")
        await wait_for(lambda: drained(schema_engine), what="the late row to go out too")
        read = await read_topic(bootstrap=settings.kafka_bootstrap, topic=topic, until=lambda e: len(e) >= 2)
    assert sorted(e.data.token_id for e in read) == ["early", "late"]


async def test_the_leader_deletes_rows_published_longer_ago_than_the_retention(
    schema_engine: AsyncEngine, settings: PlatformSettings, producer: AIOKafkaProducer
) -> None:
    topic = settings.topic(TopicName.TOKENS)
    await write_rows(schema_engine, topic, ["old", "recent"])
    async with schema_engine.begin() as conn:
        await conn.execute(
            outbox_table.update()
            .where(outbox_table.c.key == "old")
            .values(published_at=sa.func.now() - sa.text("interval '2 hours'"))
        )

    async def only_the_recent_row_left() -> bool:
        async with schema_engine.connect() as conn:
            return list((await conn.execute(sa.select(outbox_table.c.key))).scalars()) == ["recent"]

    async with running(
        OutboxRelay(
            engine=schema_engine, publisher=KafkaPublisher(producer), service="test", retention_s=3600
        )
    ):
        await wait_for(lambda: drained(schema_engine), what="the unpublished row to go out")
        await wait_for(only_the_recent_row_left, what="the old row to be deleted")
