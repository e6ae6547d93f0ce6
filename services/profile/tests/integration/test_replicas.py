"""Scale-out on the real broker: three consumers of one group end with the same grouping of identifiers
into profiles as one consumer, merges across partitions included; a whole-topic replay changes nothing."""

from __future__ import annotations

import asyncio
import random
from collections.abc import AsyncIterator
from typing import Any

import pytest
import sqlalchemy as sa
from aiokafka import AIOKafkaProducer
from cdp_common.db import create_session_factory
from cdp_common.envelope import Envelope
from cdp_common.kafka import ConsumerRunner, KafkaPublisher, create_producer, ensure_topics
from cdp_common.settings import PlatformSettings
from cdp_common.testing import PlatformUnderTest, unique_env, wait_for
from cdp_common.topics import TopicName
from cdp_profile.consumer import consumer_specs

from ..conftest import ProfileDb, tracking

pytestmark = pytest.mark.integration

STATE = "SELECT md5(string_agg(id || version::text || traits::text || computed::text, ',' ORDER BY id)) FROM profiles"


def people_events(people: int, seed: int) -> tuple[list[Envelope[Any]], set[frozenset[str]]]:
    """Each person browses on two devices, signs in by e-mail on one and by user id on the other."""
    rng = random.Random(seed)
    tag = f"{seed}-{rng.randrange(10**9)}"
    events: list[Envelope[Any]] = []
    truth: set[frozenset[str]] = set()
    for p in range(people):
        a1, a2, email, user = f"a1-{tag}-{p}", f"a2-{tag}-{p}", f"p{p}-{tag}@example.com", f"u-{tag}-{p}"
        mine = [
            tracking(anonymous_id=a1, type="page", name="Home"),
            tracking(anonymous_id=a2, type="page", name="Tea"),
            tracking(anonymous_id=a1, type="identify", traits={"email": email}),
            tracking(user_id=user, anonymous_id=a2, event="Signed In"),
            tracking(
                user_id=user,
                context_traits={"email": email},
                event="Order Completed",
                properties={"total": 10, "currency": "EUR"},
            ),
            # Junk identifiers beside real ones must not tie people together.
            tracking(user_id=user, anonymous_id="undefined", event="Cart Viewed"),
        ]
        events.extend(mine)
        truth.add(
            frozenset({f"anonymous_id:{a1}", f"anonymous_id:{a2}", f"email:{email}", f"user_id:{user}"})
        )
    # Interleave people, keeping each person's own order only loosely: Kafka keys spread them.
    rng.shuffle(events)
    return events, truth


async def grouping(db: ProfileDb) -> set[frozenset[str]]:
    async with db.engine.connect() as conn:
        rows = await conn.execute(sa.text("SELECT profile_id, type || ':' || value AS k FROM identifiers"))
        groups: dict[str, set[str]] = {}
        for profile_id, key in rows:
            groups.setdefault(profile_id, set()).add(key)
    return {frozenset(g) for g in groups.values()}


@pytest.fixture
async def producer(platform: PlatformUnderTest) -> AsyncIterator[AIOKafkaProducer]:
    producer = create_producer(platform.settings(), client_id="profile-replicas")
    await producer.start()
    yield producer
    await producer.stop()


def runner(
    settings: PlatformSettings, db: ProfileDb, producer: AIOKafkaProducer, group: str
) -> ConsumerRunner:
    [events_spec, _] = consumer_specs(db.context)
    return ConsumerRunner(
        settings=settings,
        group_id=group,
        topics=events_spec.topics,
        handlers=events_spec.handlers,
        session_factory=create_session_factory(db.engine),
        publisher=KafkaPublisher(producer),
        source="profile",
    )


async def consume(
    settings: PlatformSettings,
    db: ProfileDb,
    producer: AIOKafkaProducer,
    *,
    replicas: int,
    group: str,
    total: int,
) -> None:
    runners = [runner(settings, db, producer, group) for _ in range(replicas)]
    await asyncio.gather(*(r.start() for r in runners))
    try:

        async def done() -> bool:
            handled = await db.scalar("SELECT count(*) FROM processed_events WHERE consumer = :g", g=group)
            return bool(handled >= total)

        await wait_for(
            done, timeout=150, interval=0.2, what=f"{total} events handled by {replicas} replica(s)"
        )
    finally:
        await asyncio.gather(*(r.stop() for r in runners))


async def test_three_replicas_group_identifiers_like_one_and_a_replay_changes_nothing(
    platform: PlatformUnderTest, producer: AIOKafkaProducer, db: ProfileDb
) -> None:
    settings = platform.settings(env=unique_env(platform), topic_partitions=6, consumer_batch_size=50)
    await ensure_topics(settings, [TopicName.EVENTS])
    events, truth = people_events(30, seed=11)
    topic = settings.topic(TopicName.EVENTS)
    for envelope in events:
        await producer.send(topic, value=envelope.to_bytes(), key=envelope.subject.encode())
    await producer.flush()

    await consume(settings, db, producer, replicas=3, group=f"{settings.env}.three", total=len(events))
    three = await grouping(db)

    assert three == truth
    snapshot = await db.scalar(STATE)

    # Replaying the whole topic with a new group (no processed-event record to skip by) changes nothing.
    await consume(settings, db, producer, replicas=2, group=f"{settings.env}.replay", total=len(events))
    assert await grouping(db) == three
    again = await db.scalar(STATE)
    assert again == snapshot


async def test_a_failing_batch_is_replayed_one_by_one_and_every_good_event_counts_once(
    platform: PlatformUnderTest, producer: AIOKafkaProducer, db: ProfileDb
) -> None:
    from aiokafka import ConsumerRecord

    settings = platform.settings(env=unique_env(platform), consumer_max_retries=0)
    await ensure_topics(settings, [TopicName.EVENTS])
    user = f"fallback-{random.randrange(10**9)}"
    good = [
        tracking(user_id=user, event="Viewed"),
        # PostgreSQL cannot store a NUL character: this event fails inside the batch.
        tracking(user_id=user, event="Broken", properties={"note": "a\x00b"}),
        tracking(user_id=user, anonymous_id=f"a-{user}", event="Viewed"),
    ]
    topic = settings.topic(TopicName.EVENTS)
    records = [
        ConsumerRecord(
            topic=topic,
            partition=0,
            offset=i,
            timestamp=0,
            timestamp_type=0,
            key=user.encode(),
            value=e.to_bytes(),
            checksum=None,
            serialized_key_size=0,
            serialized_value_size=0,
            headers=(),
        )
        for i, e in enumerate(good)
    ]
    consumer = runner(settings, db, producer, f"{settings.env}.fallback")
    await consumer.process_batch(records)
    await consumer.process_batch(records)  # a redelivery of the whole batch
    assert await db.scalar("SELECT count(*) FROM events") == 2
    assert await db.scalar("SELECT count(*) FROM profiles") == 1
    counts = await db.scalar("SELECT computed->'event_counts' FROM profiles")
    assert counts == {"Viewed": 2}
