"""The profile service's resolution: tracking events/s turned into profiles, beside the same
handler run with one transaction per event, and the consumer lag at a steady offered load.

Each run uses its own topics (a fresh CDP_ENV) and its own freshly migrated schema, and the
profile service's real consumer runner and handlers, so the mixes start from an empty graph:
- plain: all-new people (identify, page, two tracks each);
- identity-heavy: people browsing on two devices, then signing in by e-mail and user id,
  so that most people go through two merges.
"""

from __future__ import annotations

import asyncio
import secrets
import statistics
import time
from datetime import UTC, datetime, timedelta
from typing import Any

import sqlalchemy as sa
from aiokafka import AIOKafkaProducer
from cdp_common.db import create_engine, create_session_factory
from cdp_common.envelope import Envelope
from cdp_common.events import TrackingEventReceived, make_envelope
from cdp_common.kafka import ConsumerRunner, KafkaPublisher, create_producer, ensure_topics
from cdp_common.migrations import migrate
from cdp_common.service import settle_heap
from cdp_common.topics import TopicName
from cdp_profile.consumer import consumer_specs
from cdp_profile.main import MIGRATIONS, profile_context
from cdp_profile.settings import Settings

NAME = "profile"
PLAIN_PEOPLE = 10_000  # 4 events each
HEAVY_PEOPLE = 1000  # 5 events each, two merges per person
BASELINE_EVENTS = 4000  # the per-event baseline runs on the first events of the plain mix
STEADY_SECONDS = 15
# Replicas of the profile consumer in one group, as the service is meant to be scaled out; they
# run in this one process (one core between them), and the per-event baseline runs the same way.
REPLICAS = 3
GOAL_EVENTS_PER_S = 10_000
GOAL_SPEEDUP = 3.0
T0 = datetime(2026, 11, 1, tzinfo=UTC)


def _event(n: int, **fields: Any) -> Envelope[Any]:
    at = T0 + timedelta(seconds=n)
    payload = TrackingEventReceived.model_validate(
        {"messageId": f"b-{n}", "sourceId": "src_bench", "receivedAt": at, "timestamp": at, **fields}
    )
    key = payload.userId or payload.anonymousId or "k"
    return make_envelope(
        payload=payload, source="ingest", subject=key, id=f"bench-{n}-{secrets.token_hex(4)}"
    )


def plain_mix(people: int, offset: int = 0) -> list[Envelope[Any]]:
    """All-new people: an identify, a page and two tracks each."""
    events = []
    for p in range(offset, offset + people):
        user, anon = f"u{p}", f"a{p}"
        events.append(
            _event(
                4 * p,
                type="identify",
                userId=user,
                anonymousId=anon,
                traits={"email": f"p{p}@example.com", "first_name": "Bench"},
            )
        )
        events.append(_event(4 * p + 1, type="page", userId=user, name="Home"))
        events.append(
            _event(
                4 * p + 2, type="track", userId=user, event="Product Viewed", properties={"category": "Tea"}
            )
        )
        events.append(
            _event(
                4 * p + 3,
                type="track",
                userId=user,
                event="Order Completed",
                properties={"total": 10 + p % 7, "currency": "EUR"},
            )
        )
    return events


def heavy_mix(people: int) -> list[Envelope[Any]]:
    """Two devices browsing, an e-mail sign-in on one, a user-id sign-in tying the rest."""
    events = []
    for p in range(people):
        phone_device, laptop, email, user = f"m{p}", f"l{p}", f"h{p}@example.com", f"hu{p}"
        base = 5 * p
        events.append(_event(base, type="page", anonymousId=phone_device, name="Home"))
        events.append(_event(base + 1, type="page", anonymousId=laptop, name="Tea"))
        events.append(_event(base + 2, type="identify", anonymousId=laptop, traits={"email": email}))
        events.append(
            _event(base + 3, type="identify", userId=user, anonymousId=phone_device, traits={"email": email})
        )
        events.append(
            _event(
                base + 4,
                type="track",
                userId=user,
                anonymousId=laptop,
                event="Order Completed",
                properties={"total": 20, "currency": "EUR"},
            )
        )
    return events


def _encoded(events: list[Envelope[Any]]) -> list[tuple[bytes, bytes]]:
    """Return each event as the (key, value) ingest would produce, serialised before any clock starts."""
    return [(e.subject.encode(), e.to_bytes()) for e in events]


async def _produce(producer: AIOKafkaProducer, topic: str, messages: list[tuple[bytes, bytes]]) -> None:
    futures = [await producer.send(topic, value=value, key=key) for key, value in messages]
    for future in futures:
        await future


class Run:
    """One consumer group with its own schema over one topic."""

    def __init__(self, settings: Settings, *, label: str, batch_size: int) -> None:
        self.settings = settings.model_copy(update={"consumer_batch_size": batch_size})
        self.schema = f"profile_bench_{label}_{secrets.token_hex(3)}"
        self.engine = create_engine(database_url=settings.database_url, schema=self.schema, pool_size=5)
        self.group = f"{settings.env}.bench.{label}"

    async def start(self, producer: AIOKafkaProducer) -> list[ConsumerRunner]:
        """Start REPLICAS consumers of the group, each as the service builds it."""
        await migrate(engine=self.engine, schema=self.schema, script_location=MIGRATIONS)
        [events_spec, _] = consumer_specs(profile_context(self.settings))
        runners = [
            ConsumerRunner(
                settings=self.settings,
                group_id=self.group,
                topics=events_spec.topics,
                handlers=events_spec.handlers,
                batch_handlers=events_spec.batch_handlers,
                session_factory=create_session_factory(self.engine),
                publisher=KafkaPublisher(producer),
                source="profile",
            )
            for _ in range(REPLICAS)
        ]
        for runner in runners:
            await runner.start()
        return runners

    async def processed(self) -> int:
        async with self.engine.connect() as conn:
            count: int = (await conn.execute(sa.text("SELECT count(*) FROM processed_events"))).scalar_one()
            return count

    async def profiles(self) -> int:
        async with self.engine.connect() as conn:
            count: int = (
                await conn.execute(sa.text("SELECT count(*) FROM profiles WHERE status = 'active'"))
            ).scalar_one()
            return count

    async def drop(self) -> None:
        async with self.engine.begin() as conn:
            await conn.execute(sa.text(f'DROP SCHEMA "{self.schema}" CASCADE'))
        await self.engine.dispose()


async def _stop(runners: list[ConsumerRunner]) -> None:
    for runner in runners:
        await runner.stop()


async def _time_until(
    run: Run, producer: AIOKafkaProducer, messages: list[tuple[bytes, bytes]]
) -> tuple[float, int]:
    """Start the group's replicas on an empty topic, wait until the group has formed, then
    produce the messages; return seconds from the first send until all were handled.

    Joining the group is not the handler's speed, and a replica that starts alone would
    handle events while the others are still joining (then hand them partitions mid-run).
    """
    runners = await run.start(producer)
    try:
        while not all(runner.assigned for runner in runners):
            await asyncio.sleep(0.01)
        started = time.perf_counter()
        await _produce(producer, run.settings.topic(TopicName.EVENTS), messages)
        while await run.processed() < len(messages):
            await asyncio.sleep(0.02)
        elapsed = time.perf_counter() - started
    finally:
        await _stop(runners)
    return elapsed, await run.profiles()


async def run(env: dict[str, str]) -> dict[str, Any]:
    """Time the plain and identity-heavy mixes, the per-event baseline, and the lag at steady load."""
    base = Settings(
        env="bench" + secrets.token_hex(3),
        kafka_bootstrap=env["CDP_KAFKA_BOOTSTRAP"],
        database_url=env["CDP_DATABASE_URL"],
        topic_partitions=6,
        migrate_on_start=False,
    )
    results: dict[str, Any] = {}
    producer = create_producer(base, client_id="bench-profile")
    await producer.start()
    runs: list[Run] = []
    try:
        plain_settings = base.model_copy(update={"env": base.env + "p"})
        baseline_settings = base.model_copy(update={"env": base.env + "b"})
        heavy_settings = base.model_copy(update={"env": base.env + "h"})
        for each_settings in (plain_settings, baseline_settings, heavy_settings):
            await ensure_topics(each_settings, [TopicName.EVENTS])
        plain = _encoded(plain_mix(PLAIN_PEOPLE))
        heavy = _encoded(heavy_mix(HEAVY_PEOPLE))
        # The consumers below run in this process as in the service, which settles its heap
        # after start-up.
        settle_heap()

        batched = Run(plain_settings, label="plain", batch_size=500)
        runs.append(batched)
        seconds, profiles = await _time_until(batched, producer, plain)
        plain_rate = len(plain) / seconds
        results["plain_events_per_s"] = round(plain_rate)
        results["plain_profiles"] = profiles

        per_event = Run(baseline_settings, label="single", batch_size=1)
        runs.append(per_event)
        seconds, _ = await _time_until(per_event, producer, plain[:BASELINE_EVENTS])
        baseline_rate = BASELINE_EVENTS / seconds
        results["baseline_one_transaction_per_event_events_per_s"] = round(baseline_rate)
        results["plain_speedup_over_baseline"] = round(plain_rate / baseline_rate, 2)

        merging = Run(heavy_settings, label="heavy", batch_size=500)
        runs.append(merging)
        seconds, profiles = await _time_until(merging, producer, heavy)
        results["identity_heavy_events_per_s"] = round(len(heavy) / seconds)
        results["identity_heavy_profiles"] = profiles
        results["identity_heavy_people"] = HEAVY_PEOPLE

        steady_settings = base.model_copy(update={"env": base.env + "s"})
        await ensure_topics(steady_settings, [TopicName.EVENTS])
        steady = Run(steady_settings, label="steady", batch_size=500)
        runs.append(steady)
        runners = await steady.start(producer)
        offered = max(int(plain_rate * 0.5), 50)
        lags: list[int] = []
        sent = 0
        person = PLAIN_PEOPLE
        try:
            started = time.perf_counter()
            while time.perf_counter() - started < STEADY_SECONDS:
                due = int((time.perf_counter() - started) * offered)
                if due > sent:
                    people = max((due - sent) // 4, 1)
                    await _produce(
                        producer, steady_settings.topic(TopicName.EVENTS), _encoded(plain_mix(people, person))
                    )
                    person += people
                    sent += 4 * people
                lags.append(sent - await steady.processed())
                await asyncio.sleep(0.25)
        finally:
            await _stop(runners)
        results["steady_offered_events_per_s"] = offered
        results["steady_lag_events_median"] = int(statistics.median(lags))
        results["steady_lag_events_max"] = max(lags)
        results["steady_lag_seconds_max"] = round(max(lags) / offered, 2)
        results["replicas"] = REPLICAS
        results["goals"] = {
            "plain_events_per_s": GOAL_EVENTS_PER_S,
            "plain_speedup_over_baseline": GOAL_SPEEDUP,
            "met": plain_rate >= GOAL_EVENTS_PER_S and plain_rate / baseline_rate >= GOAL_SPEEDUP,
        }
    finally:
        await producer.stop()
        for each in runs:
            await each.drop()
    return results
