"""Fixtures of the campaign service's tests: the service in-process on a free port, in its own
database and topics, with fakes for the consent service, ingest and the SMS provider passed
through the same seams main.py uses, a clock the tests move, and a real SMTP server on loopback."""

from __future__ import annotations

import asyncio
import secrets
from collections.abc import AsyncIterator, Sequence
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from typing import Any

import httpx
import pytest
from aiokafka import AIOKafkaProducer
from cdp_campaign.context import CampaignContext
from cdp_campaign.gateways import ConsentUnavailable, ConsentVerdicts, Rejected
from cdp_campaign.jobs import scheduler_tick
from cdp_campaign.main import Gateways, create_app
from cdp_campaign.settings import Settings
from cdp_common.db import transaction
from cdp_common.envelope import Envelope, Payload
from cdp_common.events import ProfileUpdated, SegmentEntered, TrackingEventReceived, make_envelope
from cdp_common.kafka import create_producer
from cdp_common.purposes import excluded_from
from cdp_common.testing import (
    Mailbox,
    PlatformUnderTest,
    answers_ready,
    free_port,
    private_database,
    serving,
    unique_env,
    wait_for,
)
from cdp_common.topics import TopicName


class FakeClock:
    """A clock the tests set and move."""

    def __init__(self) -> None:
        self.current = datetime(2026, 11, 23, 12, 0, tzinfo=UTC)

    def now(self) -> datetime:
        return self.current

    def advance(self, **delta: float) -> datetime:
        self.current += timedelta(**delta)
        return self.current


@dataclass
class FakeConsent:
    """The consent service as the tests want it: who has consent, the decisions on gated purposes
    (`purpose:channel` → status, per profile, judged by the platform's rule), whether it answers at all."""

    granted: set[str] = field(default_factory=set)
    decisions: dict[str, dict[str, str]] = field(default_factory=dict)
    opt_in: frozenset[str] = frozenset()
    suppressed_profiles: set[str] = field(default_factory=set)
    suppressed_addresses: set[str] = field(default_factory=set)
    down: bool = False
    withdrawals: list[tuple[str, str, str]] = field(default_factory=list)
    checks: int = 0

    async def check(self, *, profile_ids: Sequence[str], purpose: str, channel: str) -> ConsentVerdicts:
        self.checks += 1
        if self.down:
            raise ConsentUnavailable("consent service unreachable: ConnectError")
        allowed = {p for p in profile_ids if p in self.granted and p not in self.suppressed_profiles}
        refused = {
            p: "suppressed" if p in self.suppressed_profiles else "no_record"
            for p in profile_ids
            if p not in allowed
        }
        return ConsentVerdicts(allowed=allowed, refused=refused)

    async def excluded(self, *, profile_ids: Sequence[str], purpose: str) -> set[str]:
        if self.down:
            raise ConsentUnavailable("consent service unreachable: ConnectError")
        return {
            p for p in profile_ids if excluded_from(purpose, self.decisions.get(p, {}), opt_in=self.opt_in)
        }

    async def is_suppressed(self, *, kind: str, value: str) -> bool:
        if self.down:
            raise ConsentUnavailable("down")
        return value in self.suppressed_addresses

    async def withdraw(self, *, profile_id: str, purpose: str, channel: str, at: datetime) -> None:
        if self.down:
            raise ConsentUnavailable("down")
        self.withdrawals.append((profile_id, purpose, channel))
        self.granted.discard(profile_id)


@dataclass
class FakeTracker:
    """Ingest's tracking API as the tests see it: the events sent back."""

    events: list[dict[str, Any]] = field(default_factory=list)

    async def track(
        self, *, profile_id: str, event: str, properties: dict[str, Any], message_id: str, at: datetime
    ) -> None:
        self.events.append(
            {"profile_id": profile_id, "event": event, "properties": properties, "message_id": message_id}
        )


@dataclass
class FakeSms:
    """An SMS provider that keeps what it was given; numbers ending in 0000 are refused."""

    sent: list[tuple[str, str]] = field(default_factory=list)

    async def send_sms(self, *, to: str, body: str, reference: str) -> None:
        if to.endswith("0000"):
            raise Rejected("unknown number")
        self.sent.append((to, body))


@dataclass
class CampaignUnderTest:
    """The campaign service of the tests and the fakes around it."""

    url: str
    settings: Settings
    ctx: CampaignContext
    producer: AIOKafkaProducer
    clock: FakeClock
    consent: FakeConsent
    tracker: FakeTracker
    sms: FakeSms
    mailbox: Mailbox
    admin_token: str
    database_url: str

    def admin(self) -> dict[str, str]:
        """Headers that authenticate as the admin."""
        return {"Authorization": f"Bearer {self.admin_token}"}

    async def publish(
        self, topic: TopicName, *, payload: Payload, subject: str, source: str = "test"
    ) -> Envelope[Any]:
        """Publish an event on one of the service's topics, as another service would."""
        envelope = make_envelope(payload=payload, source=source, subject=subject)
        await self.producer.send_and_wait(
            self.settings.topic(topic), value=envelope.to_bytes(), key=subject.encode()
        )
        return envelope

    async def publish_many(
        self, topic: TopicName, items: Sequence[tuple[Payload, str]], source: str = "test"
    ) -> None:
        """Publish many events at once and wait for every acknowledgement."""
        futures = []
        for payload, subject in items:
            envelope = make_envelope(payload=payload, source=source, subject=subject)
            futures.append(
                await self.producer.send(
                    self.settings.topic(topic), value=envelope.to_bytes(), key=subject.encode()
                )
            )
        await asyncio.gather(*futures)

    async def profile(
        self,
        profile_id: str,
        traits: dict[str, Any],
        *,
        version: int = 1,
        event: TrackingEventReceived | None = None,
    ) -> None:
        """Publish a profile update carrying traits (and optionally the event that caused it)."""
        await self.publish(
            TopicName.PROFILES,
            payload=ProfileUpdated(
                profile_id=profile_id, version=version, changed_traits=traits, event=event
            ),
            subject=profile_id,
            source="profile",
        )

    async def enter(self, profile_id: str, segment_key: str) -> None:
        """Publish that a profile entered a segment."""
        await self.publish(
            TopicName.SEGMENTS,
            payload=SegmentEntered(
                profile_id=profile_id, segment_key=segment_key, segment_version=1, at=self.clock.now()
            ),
            subject=profile_id,
            source="segment",
        )

    def track_event(
        self, name: str, properties: dict[str, Any] | None = None, *, at: datetime | None = None
    ) -> TrackingEventReceived:
        """Return a resolved tracking event as profile carries it."""
        when = at or self.clock.now()
        return TrackingEventReceived(
            type="track",
            messageId=secrets.token_hex(8),
            sourceId="src_test",
            receivedAt=when,
            timestamp=when,
            event=name,
            properties=properties or {},
        )

    async def tick(self) -> None:
        """Run the scheduler once at the clock's time."""
        async with transaction(self.ctx.session_factory) as session:
            assert await scheduler_tick(session=session, ctx=self.ctx, now=self.clock.now())

    async def sends(self, http: httpx.AsyncClient, campaign_id: str, profile_id: str) -> list[dict[str, Any]]:
        """Return one recipient's timeline in a campaign."""
        response = await http.get(f"/v1/campaigns/{campaign_id}/recipients/{profile_id}")
        assert response.status_code == 200, response.text
        items: list[dict[str, Any]] = response.json()["sends"]
        return items

    async def settled(
        self, http: httpx.AsyncClient, campaign_id: str, profile_ids: Sequence[str]
    ) -> dict[str, dict[str, Any]]:
        """Wait until every recipient's send is decided; return each one's send."""

        async def decided() -> dict[str, dict[str, Any]] | None:
            result = {}
            for pid in profile_ids:
                items = await self.sends(http, campaign_id, pid)
                if not items or items[-1]["status"] in ("queued", "handing_over"):
                    return None
                result[pid] = items[-1]
            return result

        return await wait_for(decided, timeout=30, what="every send to be decided")


@pytest.fixture(scope="session")
async def campaign(platform: PlatformUnderTest, mailbox: Mailbox) -> AsyncIterator[CampaignUnderTest]:
    """Start the campaign service on a free port in its own database, topics and groups."""
    env = unique_env(platform).replace("-", "_")
    port = free_port()
    url = f"http://127.0.0.1:{port}"
    async with private_database(platform, f"{env}_campaign") as database_url:
        settings = platform.settings(
            Settings,
            env=env,
            database_url=database_url,
            smtp_url=f"smtp://127.0.0.1:{mailbox.port}",
            campaign_public_url=url,
            campaign_retry_backoff_s=0.01,
            campaign_webhook_timeout_s=2.0,
            # Small jobs, several at once: broadcasts here run as concurrent jobs.
            campaign_send_job_size=2,
            campaign_parallel_jobs=3,
        )
        assert isinstance(settings, Settings)
        clock, consent, tracker, sms = FakeClock(), FakeConsent(), FakeTracker(), FakeSms()
        app = create_app(
            settings, Gateways(consent=consent, tracker=tracker, sms=sms, clock=clock, run_scheduler=False)
        )
        producer = create_producer(settings, client_id="campaign-tests")
        async with serving(app, port):
            await wait_for(lambda: answers_ready(url), timeout=90, interval=0.2, what="the campaign service")
            await producer.start()
            try:
                yield CampaignUnderTest(
                    url=url,
                    settings=settings,
                    ctx=app.state.campaign,
                    producer=producer,
                    clock=clock,
                    consent=consent,
                    tracker=tracker,
                    sms=sms,
                    mailbox=mailbox,
                    admin_token=platform.admin_token,
                    database_url=database_url,
                )
            finally:
                await producer.stop()


@pytest.fixture
async def http(campaign: CampaignUnderTest) -> AsyncIterator[httpx.AsyncClient]:
    """An HTTP client for the campaign service, authenticated as the admin."""
    async with httpx.AsyncClient(base_url=campaign.url, headers=campaign.admin(), timeout=15) as client:
        yield client


def email_campaign(**overrides: Any) -> dict[str, Any]:
    """Return a valid e-mail campaign body, with overrides."""
    body: dict[str, Any] = {
        "name": "Winter sale",
        "channel": "email",
        "audience": {"type": "segment", "segment_key": "seg-" + secrets.token_hex(4)},
        "goal": {"event": "Order Completed", "window_hours": 72},
        "variants": [
            {
                "key": "a",
                "subject": "Hello {{ profile.first_name | default('there') }}",
                "body": '<p>Hi {{ profile.first_name | default("there") }}</p><a href="https://shop.example/sale">Shop</a>',
            }
        ],
        "holdout_percent": 0,
    }
    body.update(overrides)
    return body
