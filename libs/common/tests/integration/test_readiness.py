"""/readyz of a service runtime tells the truth: a stuck consumer or a stuck outbox is named, then clears.

Against the real Kafka broker and PostgreSQL, over HTTP, with the runtime and app every
service builds (build_app), and short stall limits so the test waits seconds, not minutes.
"""

from __future__ import annotations

import asyncio
import re
import secrets
import time
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import httpx
import pytest
import sqlalchemy as sa
from cdp_common.db import create_engine, create_session_factory, platform_metadata, transaction
from cdp_common.envelope import Envelope
from cdp_common.events import TokenRevoked, make_envelope
from cdp_common.jobs import jobs_metadata
from cdp_common.kafka import create_producer
from cdp_common.outbox import add_to_outbox
from cdp_common.service import ConsumerSpec, ServiceRuntime, build_app
from cdp_common.settings import PlatformSettings
from cdp_common.testing import PlatformUnderTest, free_port, read_topic, serving, unique_env, wait_for
from cdp_common.topics import TopicName
from prometheus_client import REGISTRY
from sqlalchemy.ext.asyncio import AsyncSession

pytestmark = pytest.mark.integration

STALL_S = 2.0


@pytest.fixture
async def service(platform: PlatformUnderTest) -> AsyncIterator[str]:
    """A service name whose schema holds the platform tables, as its first migration makes them."""
    name = "r_" + secrets.token_hex(5)
    engine = create_engine(database_url=platform.settings().database_url, schema=name, pool_size=1)
    async with engine.begin() as conn:
        await conn.execute(sa.text(f'CREATE SCHEMA "{name}"'))
    async with engine.begin() as conn:
        await conn.run_sync(platform_metadata.create_all)
        await conn.run_sync(jobs_metadata.create_all)
    yield name
    async with engine.begin() as conn:
        await conn.execute(sa.text(f'DROP SCHEMA "{name}" CASCADE'))
    await engine.dispose()


def settings_for(platform: PlatformUnderTest) -> PlatformSettings:
    return platform.settings(
        env=unique_env(platform),
        migrate_on_start=False,
        consumer_stall_s=STALL_S,
        outbox_stall_s=STALL_S,
        consumer_lag_interval_s=0.3,
        outbox_poll_interval_s=0.2,
    )


async def readyz(url: str) -> tuple[int, dict[str, Any]]:
    async with httpx.AsyncClient(timeout=5) as client:
        response = await client.get(f"{url}/readyz")
    body: dict[str, Any] = response.json()
    return response.status_code, body


async def problems_of(url: str) -> dict[str, str]:
    status, body = await readyz(url)
    assert (status == 503) == ("problems" in body), body
    problems: dict[str, str] = body.get("problems", {})
    return problems


def lag_of(group: str) -> float:
    return sum(
        sample.value
        for metric in REGISTRY.collect()
        if metric.name == "cdp_consumer_lag_messages"
        for sample in metric.samples
        if sample.labels.get("group") == group
    )


def poll_age_of(group: str) -> float | None:
    return REGISTRY.get_sample_value("cdp_consumer_last_poll_age_seconds", {"group": group})


class HoldingHandler:
    """Handles revoked tokens; the one named `hold` is held until the test lets it go."""

    def __init__(self) -> None:
        self.held = asyncio.Event()
        self.released = asyncio.Event()
        self.handled: list[str] = []

    async def __call__(self, *, session: AsyncSession, envelope: Envelope[Any]) -> None:
        data: TokenRevoked = envelope.data
        if data.token_id == "hold":
            self.held.set()
            await asyncio.wait_for(self.released.wait(), timeout=120)
        self.handled.append(data.token_id)


async def test_a_consumer_stuck_in_its_handler_makes_readyz_name_it_until_it_moves_again(
    platform: PlatformUnderTest, service: str, process_state: None
) -> None:
    settings = settings_for(platform)
    handler = HoldingHandler()
    runtime = ServiceRuntime(
        service=service,
        settings=settings,
        migrations=Path("unused"),
        consumers=[
            ConsumerSpec(purpose="holding", topics=[TopicName.TOKENS], handlers={TokenRevoked: handler})
        ],
    )
    group = settings.group_id(service, "holding")
    port = free_port()
    url = f"http://127.0.0.1:{port}"
    producer = create_producer(settings, client_id="readiness-test")
    async with serving(build_app(runtime=runtime, routers=[], title="readiness test"), port):
        await producer.start()
        try:
            await wait_for(lambda: _ready(url), timeout=90, what="the service to be ready")

            # Idle consumers complete empty polls: ready well past the stall limit.
            idle_since = time.monotonic()

            async def idle_and_still_ready() -> bool:
                assert await problems_of(url) == {}, "an idle consumer must stay ready"
                return time.monotonic() - idle_since > 2 * STALL_S

            await wait_for(idle_and_still_ready, timeout=30, interval=0.25, what="idle time past the limit")
            assert (poll_age_of(group) or 0.0) < STALL_S

            topic = settings.topic(TopicName.TOKENS)
            for token_id in ("hold", "next-1", "next-2", "next-3"):
                envelope = make_envelope(
                    payload=TokenRevoked(token_id=token_id), source="test", subject="one-key"
                )
                await producer.send_and_wait(topic, value=envelope.to_bytes(), key=b"one-key")
            await asyncio.wait_for(handler.held.wait(), timeout=60)

            async def named() -> dict[str, str] | None:
                problems = await problems_of(url)
                return problems if f"consumer:{group}" in problems else None

            problems = await wait_for(named, timeout=30, what="/readyz to name the stuck consumer")
            assert re.fullmatch(r"no poll completed for \d+ s", problems[f"consumer:{group}"])
            assert list(problems) == [f"consumer:{group}"], "only the stuck consumer is named"
            assert (poll_age_of(group) or 0.0) > STALL_S
            # The lag comes from the broker: the held message and the three behind it are uncommitted.
            await wait_for(lambda: _true(lag_of(group) >= 4), what="the lag of the stuck consumer")

            handler.released.set()
            await wait_for(lambda: _ready(url), timeout=30, what="the consumer to be ready again")
            await wait_for(lambda: _true(lag_of(group) == 0), timeout=30, what="the lag to go to 0")
            assert handler.handled == ["hold", "next-1", "next-2", "next-3"]
        finally:
            handler.released.set()
            await producer.stop()


async def test_an_outbox_row_left_unpublished_makes_readyz_say_how_old_until_it_goes_out(
    platform: PlatformUnderTest, service: str, process_state: None
) -> None:
    settings = settings_for(platform)
    runtime = ServiceRuntime(service=service, settings=settings, migrations=Path("unused"))
    port = free_port()
    url = f"http://127.0.0.1:{port}"
    engine = create_engine(database_url=settings.database_url, schema=service, pool_size=2)
    topic = settings.topic(TopicName.TOKENS)
    try:
        # A relay elsewhere holds the lead and publishes nothing, as a hung replica would.
        async with engine.connect() as hung_leader:
            await hung_leader.execute(
                sa.text(
                    "SELECT pg_advisory_lock(hashtextextended('cdp-outbox-relay:' || current_schema(), 0))"
                )
            )
            await hung_leader.commit()
            async with serving(build_app(runtime=runtime, routers=[], title="readiness test"), port):
                await wait_for(lambda: _ready(url), timeout=90, what="the service to be ready")
                async with transaction(create_session_factory(engine)) as session:
                    envelope = make_envelope(
                        payload=TokenRevoked(token_id="waiting"), source="test", subject="w"
                    )
                    await add_to_outbox(session=session, topic=topic, envelope=envelope)

                async def named() -> dict[str, str] | None:
                    problems = await problems_of(url)
                    return problems if "outbox" in problems else None

                problems = await wait_for(named, timeout=30, what="/readyz to name the outbox")
                assert re.fullmatch(r"oldest unpublished row is \d+ s old", problems["outbox"])
                assert list(problems) == ["outbox"]

                await hung_leader.invalidate()
                await wait_for(lambda: _ready(url), timeout=30, what="ready once the relay publishes")
                read = await read_topic(
                    bootstrap=settings.kafka_bootstrap,
                    topic=topic,
                    until=lambda seen: any(e.id == envelope.id for e in seen),
                )
                assert envelope.id in {e.id for e in read}
    finally:
        await engine.dispose()


async def _ready(url: str) -> bool:
    try:
        status, _ = await readyz(url)
    except httpx.HTTPError:
        return False
    return status == 200


async def _true(value: bool) -> bool:
    return value
