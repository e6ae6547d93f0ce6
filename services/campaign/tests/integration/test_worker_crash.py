"""At most once: a worker process killed in the middle of a campaign; the one that takes over
never sends a message twice, and reports the sends whose hand-over it cannot know."""

from __future__ import annotations

import asyncio
import collections
import secrets
import threading
from collections.abc import AsyncIterator, Iterator
from pathlib import Path
from typing import Any

import asyncpg
import httpx
import pytest
from aiosmtpd.controller import Controller
from cdp_common.events import ProfileUpdated, SegmentEntered, make_envelope
from cdp_common.kafka import create_producer
from cdp_common.testing import (
    PlatformUnderTest,
    ServiceProcess,
    free_port,
    private_database,
    serving,
    unique_env,
    wait_for,
)
from cdp_common.topics import TopicName
from fastapi import FastAPI

from ..conftest import email_campaign

pytestmark = pytest.mark.integration

PEOPLE = 100


# The sink takes this many messages, then holds the rest until the test lets them through.
HOLD_AFTER = 15


class HoldingSink:
    """An SMTP server that counts what each address received and, after HOLD_AFTER messages,
    holds every further one until released: the campaign is surely in flight when its worker dies."""

    def __init__(self) -> None:
        self.received: collections.Counter[str] = collections.Counter()
        # The server runs its own event loop in its own thread, so the gate is a thread's event.
        self.released = threading.Event()

    async def handle_DATA(self, server: Any, session: Any, envelope: Any) -> str:  # noqa: N802
        if sum(self.received.values()) >= HOLD_AFTER:
            await asyncio.to_thread(self.released.wait, 60)
        for address in envelope.rcpt_tos:
            self.received[address] += 1
        return "250 OK"


@pytest.fixture
def sink() -> Iterator[tuple[HoldingSink, int]]:
    handler = HoldingSink()
    port = free_port()
    controller = Controller(handler, hostname="127.0.0.1", port=port)
    controller.start()
    try:
        yield handler, port
    finally:
        handler.released.set()
        controller.stop()


@pytest.fixture
async def consent_url() -> AsyncIterator[str]:
    """A stand-in for the consent service's check and exclusions APIs that allows everyone."""
    app = FastAPI()

    @app.post("/v1/consents/check")
    async def check(body: dict[str, Any]) -> dict[str, Any]:
        return {"allowed": body["profile_ids"], "refused": {}}

    @app.post("/v1/consents/exclusions")
    async def exclusions(body: dict[str, Any]) -> dict[str, Any]:
        return {"purpose": body["purpose"], "basis": "legitimate_interest", "excluded": []}

    port = free_port()
    async with serving(app, port):
        yield f"http://127.0.0.1:{port}"


@pytest.fixture
async def database(platform: PlatformUnderTest) -> AsyncIterator[str]:
    async with private_database(platform, f"crash_{secrets.token_hex(3)}") as url:
        yield url


def worker(name: str, environ: dict[str, str], log_dir: Path) -> ServiceProcess:
    """A campaign worker process, as `make up` runs the service."""
    return ServiceProcess(
        name="campaign", port=free_port(), environ=environ, log_path=log_dir / f"{name}.log"
    )


async def statuses(database_url: str, campaign_id: str) -> dict[str, int]:
    conn = await asyncpg.connect(database_url)
    try:
        rows = await conn.fetch(
            "SELECT status, count(*) FROM campaign.sends WHERE source_id = $1 GROUP BY status", campaign_id
        )
    finally:
        await conn.close()
    return {r["status"]: r["count"] for r in rows}


async def test_no_duplicate_sends_after_a_worker_is_killed_mid_campaign(
    platform: PlatformUnderTest,
    sink: tuple[HoldingSink, int],
    consent_url: str,
    database: str,
    tmp_path: Path,
) -> None:
    handler, smtp_port = sink
    env = unique_env(platform).replace("-", "_")
    environ = {
        **platform.environ(),
        "CDP_ENV": env,
        "CDP_DATABASE_URL": database,
        "CDP_CONSENT_URL": consent_url,
        "CDP_SMTP_URL": f"smtp://127.0.0.1:{smtp_port}",
        "CDP_CAMPAIGN_SEND_JOB_SIZE": "10",
        "CDP_CAMPAIGN_SMTP_CONNECTIONS": "2",
        "CDP_CAMPAIGN_FREQUENCY_CAP": "0",
        "CDP_CAMPAIGN_QUIET_START": "00:00",
        "CDP_CAMPAIGN_QUIET_END": "00:00",
    }
    first = worker("first", environ, tmp_path)
    second = worker("second", environ, tmp_path)
    first.start()
    try:
        url = first.url
        await first.wait_ready()
        settings = platform.settings(env=env)
        producer = create_producer(settings, client_id="crash-test")
        await producer.start()
        segment = "seg-" + secrets.token_hex(4)
        people = [f"crash-{i}-{secrets.token_hex(3)}" for i in range(PEOPLE)]
        try:
            futures = []
            for p in people:
                for topic, payload in (
                    (
                        TopicName.PROFILES,
                        ProfileUpdated(profile_id=p, version=1, changed_traits={"email": f"{p}@example.com"}),
                    ),
                    (
                        TopicName.SEGMENTS,
                        SegmentEntered(
                            profile_id=p, segment_key=segment, segment_version=1, at=settings_now()
                        ),
                    ),
                ):
                    envelope = make_envelope(payload=payload, source="test", subject=p)
                    futures.append(
                        await producer.send(settings.topic(topic), value=envelope.to_bytes(), key=p.encode())
                    )
            await asyncio.gather(*futures)
        finally:
            await producer.stop()

        async def everyone_known() -> bool:
            conn = await asyncpg.connect(database)
            try:
                members = await conn.fetchval(
                    "SELECT count(*) FROM campaign.memberships WHERE segment_key = $1", segment
                )
                contacts = await conn.fetchval(
                    "SELECT count(*) FROM campaign.contacts WHERE profile_id = ANY($1)", people
                )
            finally:
                await conn.close()
            return bool(members == PEOPLE and contacts == PEOPLE)

        await wait_for(everyone_known, timeout=60, what="the worker to learn the audience")
        headers = {"Authorization": f"Bearer {platform.admin_token}"}
        async with httpx.AsyncClient(base_url=url, headers=headers, timeout=15) as http:
            created = (
                await http.post(
                    "/v1/campaigns", json=email_campaign(audience={"type": "segment", "segment_key": segment})
                )
            ).json()
            assert (await http.post(f"/v1/campaigns/{created['id']}/schedule")).json()["status"] == "running"

        async def some_delivered() -> bool:
            return sum(handler.received.values()) >= HOLD_AFTER

        await wait_for(some_delivered, timeout=60, what="the first messages")
        first.stop(kill=True)
        delivered_before = sum(handler.received.values())
        assert delivered_before < PEOPLE, "the campaign finished before the worker could be killed"
        handler.released.set()

        second.start()

        async def settled() -> dict[str, int] | None:
            counts = await statuses(database, created["id"])
            return counts if not counts.get("queued") and not counts.get("handing_over") else None

        counts = await wait_for(
            settled, timeout=90, interval=0.5, what="the second worker to finish the campaign"
        )
        await second.wait_ready()
        async with httpx.AsyncClient(base_url=second.url, headers=headers) as http:
            report = (await http.get(f"/v1/campaigns/{created['id']}/report")).json()
    finally:
        first.stop()
        second.stop()

    assert max(handler.received.values()) == 1, "someone got the same message twice"
    assert set(counts) <= {"sent", "unknown"}
    assert counts.get("sent", 0) + counts.get("unknown", 0) == PEOPLE
    assert counts.get("sent", 0) <= sum(handler.received.values()) <= PEOPLE
    # Only what was in hand when the worker died may be unknown: at most the SMTP connections' worth.
    assert counts.get("unknown", 0) <= 10
    assert report["variants"]["a"]["unknown"] == counts.get("unknown", 0)


def settings_now() -> Any:
    from datetime import UTC, datetime

    return datetime.now(UTC)
