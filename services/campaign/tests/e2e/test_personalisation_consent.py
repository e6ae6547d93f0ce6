"""Personalisation consent through the real consent service: of two people who both agreed to the
newsletter, the one who denied personalisation gets the template's default greeting, the other their name.

The campaign service runs in-process (its mails go to the session's SMTP server) and asks the
stack's consent service over HTTP; profiles and segment entries reach it on the real broker."""

from __future__ import annotations

import secrets
from collections.abc import AsyncIterator
from typing import Any

import httpx
import pytest
from cdp_campaign import store
from cdp_campaign.context import CampaignContext
from cdp_campaign.main import Gateways, create_app
from cdp_campaign.settings import Settings
from cdp_common.events import ProfileUpdated, SegmentEntered, make_envelope
from cdp_common.kafka import create_producer
from cdp_common.testing import (
    Mailbox,
    PlatformUnderTest,
    Stack,
    answers_ready,
    free_port,
    private_database,
    serving,
    unique_env,
    wait_for,
)
from cdp_common.topics import TopicName

pytestmark = pytest.mark.e2e


@pytest.fixture
async def campaign_service(
    platform: PlatformUnderTest, stack: Stack, mailbox: Mailbox
) -> AsyncIterator[tuple[str, Settings, CampaignContext]]:
    """A campaign service of this test, with the real consent gate pointed at the stack's consent service."""
    env = unique_env(platform).replace("-", "_")
    port = free_port()
    url = f"http://127.0.0.1:{port}"
    async with private_database(platform, f"{env}_campaign") as database_url:
        settings = platform.settings(
            Settings,
            env=env,
            database_url=database_url,
            smtp_url=f"smtp://127.0.0.1:{mailbox.port}",
            consent_url=stack.url("consent"),
            ingest_url=stack.url("ingest"),
            campaign_public_url=url,
            campaign_quiet_start="00:00",
            campaign_quiet_end="00:00",
            campaign_frequency_cap=0,
        )
        assert isinstance(settings, Settings)
        app = create_app(settings, Gateways(run_scheduler=False))
        async with serving(app, port):
            await wait_for(lambda: answers_ready(url), timeout=90, interval=0.2, what="the campaign service")
            yield url, settings, app.state.campaign


async def test_a_person_who_denied_personalisation_gets_the_default_greeting(
    stack: Stack, mailbox: Mailbox, campaign_service: tuple[str, Settings, CampaignContext]
) -> None:
    url, settings, ctx = campaign_service
    tag = secrets.token_hex(4)
    ada, bob = f"ada-{tag}", f"bob-{tag}"
    segment = f"newsletter-{tag}"
    async with httpx.AsyncClient(timeout=15, headers=stack.admin()) as http:

        async def decide(profile_id: str, purpose: str, status: str) -> None:
            response = await http.post(
                f"{stack.url('consent')}/v1/consents",
                json={
                    "profile_id": profile_id,
                    "purpose": purpose,
                    "channel": "email",
                    "status": status,
                    "source": "signup-form",
                },
            )
            assert response.status_code == 201, response.text

        for person in (ada, bob):
            await decide(person, "email_marketing", "granted")
        await decide(bob, "personalisation", "denied")

        producer = create_producer(settings, client_id="personalisation-test")
        await producer.start()
        try:
            for person, name in ((ada, "Ada"), (bob, "Bob")):
                traits = {"email": f"{person}@example.com", "first_name": name}
                messages: list[tuple[TopicName, Any]] = [
                    (TopicName.PROFILES, ProfileUpdated(profile_id=person, version=1, changed_traits=traits)),
                    (
                        TopicName.SEGMENTS,
                        SegmentEntered(
                            profile_id=person,
                            segment_key=segment,
                            segment_version=1,
                            at=ctx.clock.now(),
                        ),
                    ),
                ]
                for topic, payload in messages:
                    envelope = make_envelope(payload=payload, source="test", subject=person)
                    await producer.send_and_wait(
                        settings.topic(topic), value=envelope.to_bytes(), key=person.encode()
                    )
        finally:
            await producer.stop()

        async def known() -> bool:
            async with ctx.session_factory() as session:
                members = set(await store.segment_members(session=session, segment_key=segment))
                contacts = await store.contacts_of(session=session, profile_ids=[ada, bob])
            return members >= {ada, bob} and len(contacts) == 2

        await wait_for(known, timeout=60, what="campaign to learn both people")
        body = {
            "name": "Newsletter",
            "channel": "email",
            "audience": {"type": "segment", "segment_key": segment},
            "variants": [
                {
                    "key": "a",
                    "subject": "Hello {{ profile.first_name | default('there') }}",
                    "body": "<p>Hi {{ profile.first_name | default('there') }}</p>"
                    "<p>{% for s in segments %}[{{ s }}]{% endfor %}</p>",
                }
            ],
            "holdout_percent": 0,
        }
        created = await http.post(f"{url}/v1/campaigns", json=body)
        assert created.status_code == 201, created.text
        scheduled = await http.post(f"{url}/v1/campaigns/{created.json()['id']}/schedule")
        assert scheduled.json()["status"] == "running"

        async def delivered() -> bool:
            return bool(mailbox.to(f"{ada}@example.com") and mailbox.to(f"{bob}@example.com"))

        await wait_for(delivered, timeout=60, what="both e-mails")
    [to_ada] = mailbox.to(f"{ada}@example.com")
    [to_bob] = mailbox.to(f"{bob}@example.com")
    assert to_ada["Subject"] == "Hello Ada"
    assert to_bob["Subject"] == "Hello there"
    ada_html = to_ada.get_body(preferencelist=("html",)).get_content()  # type: ignore[union-attr]
    bob_html = to_bob.get_body(preferencelist=("html",)).get_content()  # type: ignore[union-attr]
    assert f"[{segment}]" in ada_html
    assert "Hi there" in bob_html
    assert "Bob" not in bob_html
    assert segment not in bob_html
