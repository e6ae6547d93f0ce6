"""A base of 100,000 customers loaded in bulk: a marketer's event-condition segment is created at
once, shows it is building, and fills with exactly the people who match, while the event flow
goes on; the profile and segment processes run against a database of their own."""

from __future__ import annotations

import secrets
from collections.abc import AsyncIterator
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import asyncpg
import httpx
import pytest
from cdp_cli.load import load_base
from cdp_common.events import TrackingEventReceived, make_envelope
from cdp_common.kafka import create_producer
from cdp_common.settings import PlatformSettings
from cdp_common.testing import (
    PlatformUnderTest,
    ServiceProcess,
    free_port,
    private_database,
    unique_env,
    wait_for,
)
from cdp_common.topics import TopicName

pytestmark = [pytest.mark.e2e, pytest.mark.timeout(900)]

PEOPLE = 100_000
RULE = {"event": "Product Viewed", "op": "gte", "value": 2, "within_days": 30}


@dataclass
class Base:
    """Profile and segment over a loaded base, and where to reach them."""

    profile: ServiceProcess
    segment: ServiceProcess
    database_url: str
    admin: dict[str, str]
    settings: PlatformSettings


@pytest.fixture(scope="module")
async def base(platform: PlatformUnderTest, tmp_path_factory: pytest.TempPathFactory) -> AsyncIterator[Base]:
    env = unique_env(platform)
    logs = Path(tmp_path_factory.mktemp("large-base"))
    async with private_database(platform, "segments100k") as database_url:
        environ = {**platform.environ(), "CDP_ENV": env, "CDP_DATABASE_URL": database_url}
        profile = ServiceProcess(
            name="profile", port=free_port(), environ=environ, log_path=logs / "profile.log"
        )
        segment = ServiceProcess(
            name="segment",
            port=free_port(),
            environ={**environ, "CDP_PROFILE_URL": profile.url},
            log_path=logs / "segment.log",
        )
        profile.start()
        segment.start()
        try:
            await profile.wait_ready(timeout=180)
            await segment.wait_ready(timeout=180)
            await load_base(database_url=database_url, profiles=PEOPLE, hash_key=platform.hash_key, seed=7)
            yield Base(
                profile=profile,
                segment=segment,
                database_url=database_url,
                admin={"Authorization": f"Bearer {platform.admin_token}"},
                settings=platform.settings(env=env),
            )
        finally:
            segment.stop()
            profile.stop()


async def members(http: httpx.AsyncClient, base: Base, key: str) -> set[str]:
    found: set[str] = set()
    cursor: str | None = None
    while True:
        params: dict[str, Any] = {"limit": 1000}
        if cursor:
            params["cursor"] = cursor
        page = await http.get(
            f"{base.segment.url}/v1/segments/{key}/members", params=params, headers=base.admin
        )
        assert page.status_code == 200, page.text
        found.update(item["profile_id"] for item in page.json()["items"])
        cursor = page.json()["next"]
        if not cursor:
            return found


async def viewers(base: Base) -> set[str]:
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


async def test_an_event_condition_segment_fills_exactly_over_a_base_of_100_000(base: Base) -> None:
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
            found = await members(http, base, key)
            return found if newcomer_profile["id"] in found else None

        found = await wait_for(filled, timeout=60, what="the newcomer to enter the segment")
        assert found == expected
        explained = await http.get(
            f"{base.segment.url}/v1/segments/{key}/explain/{newcomer_profile['id']}", headers=base.admin
        )
        assert explained.status_code == 200, explained.text
        assert explained.json()["member"] is True
