"""A base of 100,000 profiles, built in bulk: defining computed traits over it runs as jobs that the
event flow never waits for, survive a kill -9 of the service, and count every event exactly once."""

from __future__ import annotations

import json
import secrets
from collections.abc import AsyncIterator
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import asyncpg
import httpx
import pytest
from aiokafka import AIOKafkaProducer
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
from cdp_profile.context import ProfileContext
from cdp_profile.domain.identity import PROFILE_ID, IdentifierKey

from ..conftest import tracking

pytestmark = [pytest.mark.integration, pytest.mark.timeout(600)]

BASE = 100_000
NOW = datetime.now(UTC)


def viewed_in_week(i: int) -> int:
    """How many products the loaded person i viewed in the last seven days."""
    return i % 4


def viewed_before(i: int) -> int:
    """How many products the loaded person i viewed 20 days ago."""
    return 1 if i % 5 == 0 else 0


async def build_base(*, database_url: str, hash_key: str) -> None:
    """Fill profile's tables with BASE people in bulk: a user id each, a page view, product views."""
    context = ProfileContext(profiles_topic="", privacy_topic="", hash_key=hash_key)
    profiles, identifiers, events = [], [], []
    empty = "{}"
    for i in range(BASE):
        profile_id = f"p{i:07d}"
        user = IdentifierKey("user_id", f"u{i}")
        profiles.append(
            (
                profile_id,
                context.hash_of(IdentifierKey(PROFILE_ID, profile_id)),
                1,
                "active",
                empty,
                empty,
                empty,
            )
        )
        identifiers.append(("user_id", user.value, context.hash_of(user), profile_id))
        stamps: list[tuple[str, str | None, datetime]] = [("page", None, NOW - timedelta(days=30))]
        stamps += [
            ("track", "Product Viewed", NOW - timedelta(days=1, minutes=k)) for k in range(viewed_in_week(i))
        ]
        stamps += [("track", "Product Viewed", NOW - timedelta(days=20))] * viewed_before(i)
        for k, (kind, name, at) in enumerate(stamps):
            events.append(
                (f"load-{i}-{k}", profile_id, profile_id, kind, name, at, at, "load", empty, empty, "[]")
            )
    connection = await asyncpg.connect(database_url)
    try:
        await connection.execute("SET search_path TO profile")
        await connection.copy_records_to_table(
            "profiles",
            records=profiles,
            columns=["id", "id_hash", "version", "status", "traits", "aggregates", "computed"],
        )
        await connection.copy_records_to_table(
            "identifiers", records=identifiers, columns=["type", "value", "value_hash", "profile_id"]
        )
        await connection.copy_records_to_table(
            "events",
            records=events,
            columns=[
                "event_id",
                "profile_id",
                "origin_profile_id",
                "type",
                "name",
                "timestamp",
                "received_at",
                "source_id",
                "properties",
                "traits",
                "identifiers",
            ],
        )
        await connection.execute("ANALYZE profiles; ANALYZE identifiers; ANALYZE events")
    finally:
        await connection.close()


@dataclass
class LargeBase:
    """The profile service over a base of BASE people, and a producer onto its events topic."""

    process: ServiceProcess
    admin: dict[str, str]
    settings: PlatformSettings
    producer: AIOKafkaProducer

    async def send(self, **fields: Any) -> None:
        envelope = tracking(**fields)
        await self.producer.send_and_wait(
            self.settings.topic(TopicName.EVENTS), value=envelope.to_bytes(), key=envelope.subject.encode()
        )


@pytest.fixture(scope="module")
async def large(
    platform: PlatformUnderTest, tmp_path_factory: pytest.TempPathFactory
) -> AsyncIterator[LargeBase]:
    env = unique_env(platform)
    settings = platform.settings(env=env)
    async with private_database(platform, "large") as database_url:
        process = ServiceProcess(
            name="profile",
            port=free_port(),
            environ={
                **platform.environ(),
                "CDP_ENV": env,
                "CDP_DATABASE_URL": database_url,
                # Small steps with a pause: the backfill surely still runs while the test sends events.
                "CDP_PROFILE_BACKFILL_BATCH_SIZE": "1000",
                "CDP_PROFILE_BACKFILL_MAX_BATCH_SIZE": "1000",
                "CDP_JOB_STEP_PAUSE_S": "0.15",
            },
            log_path=Path(tmp_path_factory.mktemp("profile-large")) / "profile.log",
        )
        process.start()
        producer = create_producer(settings, client_id="profile-large-test")
        try:
            await process.wait_ready(timeout=180)
            await build_base(database_url=database_url, hash_key=platform.hash_key)
            await producer.start()
            yield LargeBase(
                process=process,
                admin={"Authorization": f"Bearer {platform.admin_token}"},
                settings=settings,
                producer=producer,
            )
        finally:
            await producer.stop()
            process.stop()


async def values_of(http: httpx.AsyncClient, large: LargeBase, key: str) -> dict[str, Any]:
    """Read every value of a computed trait through its pages."""
    found: dict[str, Any] = {}
    after = ""
    while True:
        page = await http.get(
            f"{large.process.url}/v1/computed-traits/{key}/values",
            params={"after": after, "limit": 10_000},
            headers=large.admin,
        )
        assert page.status_code == 200, page.text
        body = page.json()
        found.update({item["profile_id"]: item["value"] for item in body["items"]})
        if body["next"] is None:
            return found
        after = body["next"]


async def test_backfills_run_as_jobs_the_event_flow_never_waits_for_and_survive_a_kill(
    large: LargeBase,
) -> None:
    url = large.process.url
    async with httpx.AsyncClient(timeout=30) as http:
        jobs: dict[str, str] = {}
        for key, window in (("viewed_7d", 7), ("viewed_ever", None)):
            started = await http.post(
                f"{url}/v1/computed-traits",
                json={
                    "key": key,
                    "aggregation": "count",
                    "event_name": "Product Viewed",
                    "window_days": window,
                },
                headers=large.admin,
            )
            assert started.status_code == 202, started.text
            assert started.json()["computed_trait"]["status"] == "building"
            jobs[key] = started.json()["job"]["id"]

        async def job(key: str) -> dict[str, Any]:
            response = await http.get(f"{url}/v1/jobs/{jobs[key]}", headers=large.admin)
            assert response.status_code == 200, response.text
            body: dict[str, Any] = response.json()
            return body

        async def both_under_way() -> bool:
            bodies = [await job(key) for key in jobs]
            return all(b["state"] == "running" and 0 < b["done"] < BASE for b in bodies)

        await wait_for(both_under_way, timeout=60, what="both backfills to be under way")
        first = await job("viewed_7d")
        assert first["total"] == BASE
        assert first["rate_per_s"] is not None

        # The event flow goes on while both jobs walk the base: a new person, and product views of
        # a person the jobs went past already and of one they have not reached yet.
        fresh = "fresh-" + secrets.token_hex(4)
        await large.send(type="identify", event=None, user_id=fresh, traits={"plan": "gold"}, at=NOW)
        for i in (1, BASE - 1):
            await large.send(user_id=f"u{i}", event="Product Viewed", at=NOW)

        async def fresh_profile() -> dict[str, Any] | None:
            response = await http.get(f"{url}/v1/profiles/user_id:{fresh}", headers=large.admin)
            return response.json() if response.status_code == 200 else None

        profile = await wait_for(
            fresh_profile, timeout=10, what="an identify to reach its profile during backfills"
        )
        assert profile["traits"]["plan"] == "gold"
        during = [await job(key) for key in jobs]
        assert all(b["state"] == "running" for b in during), "the backfills were still running"
        listed = await http.get(f"{url}/v1/computed-traits", headers=large.admin)
        assert {d["key"]: d["status"] for d in listed.json()["items"]} == {
            "viewed_7d": "building",
            "viewed_ever": "building",
        }

        # A crash in the middle: the restarted service takes both jobs over from their cursors.
        done_before_kill = min(b["done"] for b in during)
        large.process.stop(kill=True)
        large.process.start()
        await large.process.wait_ready(timeout=180)

        async def finished() -> list[dict[str, Any]] | None:
            bodies = [await job(key) for key in jobs]
            return bodies if all(b["state"] == "succeeded" for b in bodies) else None

        ended = await wait_for(finished, timeout=300, interval=0.5, what="both backfills to finish")
        for body in ended:
            assert body["done"] == body["total"] >= BASE
            assert body["done"] >= done_before_kill
            assert body["error"] is None

        week = await values_of(http, large, "viewed_7d")
        ever = await values_of(http, large, "viewed_ever")
    extra = {"p0000001": 1, f"p{BASE - 1:07d}": 1}
    expected_week = {
        f"p{i:07d}": viewed_in_week(i) + extra.get(f"p{i:07d}", 0)
        for i in range(BASE)
        if viewed_in_week(i) + extra.get(f"p{i:07d}", 0)
    }
    expected_ever = {
        f"p{i:07d}": viewed_in_week(i) + viewed_before(i) + extra.get(f"p{i:07d}", 0)
        for i in range(BASE)
        if viewed_in_week(i) + viewed_before(i) + extra.get(f"p{i:07d}", 0)
    }
    assert week == expected_week, json.dumps(sorted(set(week.items()) ^ set(expected_week.items()))[:10])
    assert ever == expected_ever, json.dumps(sorted(set(ever.items()) ^ set(expected_ever.items()))[:10])
