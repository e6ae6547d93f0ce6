"""Fixtures of the consent service's tests: the service running in-process on a free port, in its
own database and topics, with a real SMTP server on loopback that keeps what it receives."""

from __future__ import annotations

from collections.abc import AsyncIterator
from dataclasses import dataclass, field
from typing import Any

import httpx
import pytest
from aiokafka import AIOKafkaProducer
from cdp_common.envelope import Envelope, Payload
from cdp_common.events import make_envelope
from cdp_common.kafka import create_producer
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
from cdp_consent.main import create_app
from cdp_consent.settings import Settings
from fastapi import FastAPI, Request
from fastapi.responses import JSONResponse


@dataclass
class OtherServices:
    """Stand-ins for the other four services' access routes, on one port under /<service>."""

    url: str
    parts: dict[str, dict[str, Any]] = field(default_factory=dict)
    failures_left: dict[str, int] = field(default_factory=dict)
    calls: list[tuple[str, str, str | None]] = field(default_factory=list)

    def base(self, service: str) -> str:
        """Base URL that plays one service."""
        return f"{self.url}/{service}"


def other_services_app(services: OtherServices) -> FastAPI:
    """Serve GET /<service>/v1/privacy/profiles/{id} from the parts the test put there."""
    app = FastAPI()

    @app.get("/{service}/v1/privacy/profiles/{profile_id}")
    async def part(service: str, profile_id: str, request: Request) -> JSONResponse:
        services.calls.append((service, profile_id, request.headers.get("authorization")))
        if services.failures_left.get(service, 0) > 0:
            services.failures_left[service] -= 1
            return JSONResponse({"error": {"code": "unavailable"}}, status_code=503)
        data = services.parts.get(service, {}).get(profile_id)
        if data is None:
            return JSONResponse({"error": {"code": "not_found"}}, status_code=404)
        return JSONResponse({"service": service, "profile_id": profile_id, "data": data})

    return app


@dataclass
class ConsentUnderTest:
    """The consent service of the tests: its URL, settings, and a producer for feeding its topics."""

    url: str
    settings: Settings
    producer: AIOKafkaProducer
    admin_token: str
    database_url: str
    published: list[str] = field(default_factory=list)

    def admin(self) -> dict[str, str]:
        """Headers that authenticate as the admin."""
        return {"Authorization": f"Bearer {self.admin_token}"}

    async def publish(
        self, topic: TopicName, *, payload: Payload, subject: str, source: str = "profile"
    ) -> Envelope[Any]:
        """Publish an event on one of the service's topics, as another service would."""
        envelope = make_envelope(payload=payload, source=source, subject=subject)
        await self.producer.send_and_wait(
            self.settings.topic(topic), value=envelope.to_bytes(), key=subject.encode()
        )
        return envelope


@pytest.fixture(scope="session")
async def other_services() -> AsyncIterator[OtherServices]:
    """Run the stand-ins for ingest, profile, segment and campaign on a free port."""
    port = free_port()
    services = OtherServices(url=f"http://127.0.0.1:{port}")
    async with serving(other_services_app(services), port):
        yield services


@pytest.fixture(scope="session")
async def consent(
    platform: PlatformUnderTest, mailbox: Mailbox, other_services: OtherServices
) -> AsyncIterator[ConsentUnderTest]:
    """Start the consent service on a free port in its own database, topics and groups."""
    env = unique_env(platform).replace("-", "_")
    port = free_port()
    url = f"http://127.0.0.1:{port}"
    async with private_database(platform, f"{env}_consent") as database_url:
        settings = platform.settings(
            Settings,
            env=env,
            database_url=database_url,
            smtp_url=f"smtp://127.0.0.1:{mailbox.port}",
            consent_url=url,
            ingest_url=other_services.base("ingest"),
            profile_url=other_services.base("profile"),
            segment_url=other_services.base("segment"),
            campaign_url=other_services.base("campaign"),
            scheduler_interval_s=0.1,
            assembly_retry_s=0.2,
            assembly_max_attempts=4,
        )
        assert isinstance(settings, Settings)
        producer = create_producer(settings, client_id="consent-tests")
        async with serving(create_app(settings), port):
            await wait_for(lambda: answers_ready(url), timeout=60, interval=0.2, what="consent to be ready")
            await producer.start()
            try:
                yield ConsentUnderTest(
                    url=url,
                    settings=settings,
                    producer=producer,
                    admin_token=platform.admin_token,
                    database_url=database_url,
                )
            finally:
                await producer.stop()


@pytest.fixture
async def http(consent: ConsentUnderTest) -> AsyncIterator[httpx.AsyncClient]:
    """An HTTP client for the consent service, authenticated as the admin."""
    async with httpx.AsyncClient(base_url=consent.url, headers=consent.admin(), timeout=15) as client:
        yield client
