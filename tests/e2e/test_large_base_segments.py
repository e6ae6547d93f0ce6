"""A base of 100,000 customers loaded in bulk: a marketer's event-condition segment is created at
once, shows it is building, and fills with exactly the people who match, while the event flow
goes on; the profile and segment processes run against a database of their own."""

from __future__ import annotations

import secrets
from collections.abc import AsyncIterator
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import asyncpg
import httpx
import pytest
from cdp_cli.load import load_base
from cdp_common.events import TrackingEventReceived, make_envelope
from cdp_common.kafka import create_producer
from cdp_common.testing import (
    PlatformUnderTest,
    wait_for,
)
from cdp_common.topics import TopicName

from .conftest import Chain, profile_and_segment

pytestmark = [pytest.mark.e2e, pytest.mark.timeout(900)]

PEOPLE = 100_000
RULE = {"event": "Product Viewed", "op": "gte", "value": 2, "within_days": 30}


@pytest.fixture(scope="module")
async def base(platform: PlatformUnderTest, tmp_path_factory: pytest.TempPathFactory) -> AsyncIterator[Chain]:
    logs = Path(tmp_path_factory.mktemp("large-base"))
    async with profile_and_segment(platform, name="segments100k", logs=logs) as chain:
        await load_base(database_url=chain.database_url, profiles=PEOPLE, hash_key=platform.hash_key, seed=7)
        yield chain


async def viewers(base: Chain) -> set[str]:
    """The profiles with two product views or more in the last 30 days, straight from the event store."""
    connection = await asyncpg.connect(base.database_url)
    try:
        rows = await connection.fetch(
            """SELECT profile_id FROM profile.events
                WHERE name = 'Product Viewed' AND timestamp > now() - interval '30 days'
                GROUP BY profile_id HAVING count(*) >= 2"""
        )
    finally:
        await connection.close()
    return {row["profile_id"] for row in rows}


async def test_an_event_condition_segment_fills_exactly_over_a_base_of_100_000(base: Chain) -> None:
    key = "viewers_" + secrets.token_hex(3)
    async with httpx.AsyncClient(timeout=30) as http:
        created = await http.post(
            f"{base.segment.url}/v1/segments",
            json={"key": key, "name": "Viewed twice this month", "rule": RULE},
            headers=base.admin,
        )
        assert created.status_code == 201, created.text
        assert created.json()["status"] == "building"
        assert created.json()["job"]["id"]

        # A new customer arrives while the segment builds and reaches profile as usual.
        newcomer = "new-" + secrets.token_hex(4)
        producer = create_producer(base.settings, client_id="large-base-test")
        await producer.start()
        try:
            now = datetime.now(UTC)
            for n in range(2):
                payload = TrackingEventReceived(
                    type="track",
                    messageId=f"{newcomer}-{n}",
                    sourceId="src_test",
                    receivedAt=now,
                    timestamp=now,
                    userId=newcomer,
                    event="Product Viewed",
                )
                envelope = make_envelope(
                    payload=payload, source="ingest", subject=newcomer, id=f"{newcomer}-{n}"
                )
                await producer.send_and_wait(
                    base.settings.topic(TopicName.EVENTS), value=envelope.to_bytes(), key=newcomer.encode()
                )
        finally:
            await producer.stop()

        async def newcomer_known() -> dict[str, Any] | None:
            answer = await http.get(f"{base.profile.url}/v1/profiles/user_id:{newcomer}", headers=base.admin)
            return answer.json() if answer.status_code == 200 else None

        newcomer_profile = await wait_for(newcomer_known, timeout=30, what="the newcomer's profile")

        async def ready() -> dict[str, Any] | None:
            answer = (await http.get(f"{base.segment.url}/v1/segments/{key}", headers=base.admin)).json()
            return answer if answer["status"] == "ready" else None

        built = await wait_for(ready, timeout=600, interval=1.0, what="the segment to be built")
        assert built["job"]["state"] == "succeeded"
        assert built["job"]["done"] == built["job"]["total"]

        expected = await viewers(base)
        assert newcomer_profile["id"] in expected
        assert len(expected) > 1000, "the loaded base has product viewers this month"

        async def filled() -> set[str] | None:
            found = await base.members(http, key)
            return found if newcomer_profile["id"] in found else None

        found = await wait_for(filled, timeout=60, what="the newcomer to enter the segment")
        assert found == expected
        explained = await http.get(
            f"{base.segment.url}/v1/segments/{key}/explain/{newcomer_profile['id']}", headers=base.admin
        )
        assert explained.status_code == 200, explained.text
        assert explained.json()["member"] is True
