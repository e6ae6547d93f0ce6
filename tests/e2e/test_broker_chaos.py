"""Kill the broker while profile publishes profile changes: once it is back, every change has
reached segment and the memberships are exact.

Killing the shared broker would disturb every other test, so this test runs a private
single-node Kafka and its own profile and segment processes with a database of their own.
"""

from __future__ import annotations

import asyncio
import secrets
from collections.abc import AsyncIterator, Iterator
from datetime import UTC, datetime
from pathlib import Path

import asyncpg
import httpx
import pytest
from cdp_common.events import TrackingEventReceived, make_envelope
from cdp_common.kafka import create_producer
from cdp_common.testing import (
    KAFKA_LIBS,
    PlatformUnderTest,
    PrivateKafka,
    wait_for,
)
from cdp_common.topics import TopicName

from .conftest import Chain, profile_and_segment

pytestmark = [pytest.mark.e2e, pytest.mark.timeout(480)]

PEOPLE = 4000


def is_gold(i: int) -> bool:
    return i % 3 == 0


@pytest.fixture
def private_kafka(tmp_path: Path) -> Iterator[PrivateKafka]:
    if not (KAFKA_LIBS / ".complete").exists():
        pytest.fail("the Kafka jars are missing: run `make install`", pytrace=False)
    kafka = PrivateKafka(tmp_path / "kafka")
    kafka.directory.mkdir()
    kafka.format()
    kafka.start()
    try:
        yield kafka
    finally:
        kafka.kill()


@pytest.fixture
async def chain(
    platform: PlatformUnderTest, private_kafka: PrivateKafka, tmp_path: Path
) -> AsyncIterator[Chain]:
    async with profile_and_segment(
        platform, name="chaos", logs=tmp_path, kafka_bootstrap=private_kafka.bootstrap
    ) as started:
        yield started


async def test_every_profile_change_reaches_segment_across_a_broker_crash(
    chain: Chain, private_kafka: PrivateKafka
) -> None:
    run = secrets.token_hex(3)
    key = f"gold_{run}"
    async with httpx.AsyncClient(timeout=30) as http:
        created = await http.post(
            f"{chain.segment.url}/v1/segments",
            json={"key": key, "name": "Gold", "rule": {"trait": "plan", "op": "eq", "value": "gold"}},
            headers=chain.admin,
        )
        assert created.status_code == 201, created.text

        async def ready() -> bool:
            answer = await http.get(f"{chain.segment.url}/v1/segments/{key}", headers=chain.admin)
            return bool(answer.json().get("status", "ready") == "ready")

        await wait_for(ready, timeout=60, what="the segment to be built")

        producer = create_producer(chain.settings, client_id="chaos-test")
        await producer.start()
        try:
            topic = chain.settings.topic(TopicName.EVENTS)
            now = datetime.now(UTC)
            for i in range(PEOPLE):
                user = f"{run}-{i}"
                payload = TrackingEventReceived(
                    type="identify",
                    messageId=f"chaos-{user}",
                    sourceId="src_chaos",
                    receivedAt=now,
                    timestamp=now,
                    userId=user,
                    traits={"plan": "gold" if is_gold(i) else "silver"},
                )
                envelope = make_envelope(payload=payload, source="ingest", subject=user, id=f"chaos-{user}")
                await producer.send(topic, value=envelope.to_bytes(), key=user.encode())
            await producer.flush()
        finally:
            await producer.stop()

        async def publishing() -> int:
            return len(await chain.members(http, key))

        at_kill = await wait_for(publishing, timeout=120, interval=0.05, what="the first member to arrive")
        await asyncio.to_thread(private_kafka.kill)

        async def outage_seen() -> bool:
            answer = await http.get(f"{chain.profile.url}/readyz")
            return answer.status_code == 503 and "kafka" in answer.json().get("problems", {})

        await wait_for(outage_seen, timeout=60, interval=0.2, what="profile to report the broker down")
        await asyncio.to_thread(private_kafka.start)

        expected_count = sum(1 for i in range(PEOPLE) if is_gold(i))
        assert at_kill < expected_count, "the broker was killed while profile changes were still flowing"

        async def complete() -> set[str] | None:
            found = await chain.members(http, key)
            return found if len(found) >= expected_count else None

        found = await wait_for(
            complete, timeout=240, interval=1.0, what="every gold profile to reach segment"
        )
        await chain.profile.wait_ready(timeout=60)
        await chain.segment.wait_ready(timeout=60)

    connection = await asyncpg.connect(chain.database_url)
    try:
        rows = await connection.fetch(
            "SELECT value, profile_id FROM profile.identifiers WHERE type = 'user_id' AND value LIKE $1",
            f"{run}-%",
        )
    finally:
        await connection.close()
    profiles = {row["value"]: row["profile_id"] for row in rows}
    assert len(profiles) == PEOPLE
    gold = {profiles[f"{run}-{i}"] for i in range(PEOPLE) if is_gold(i)}
    assert found == gold
