"""Profiling consent on the running stack: a withdrawal recorded at the consent service takes the person
out of a segment within seconds, through the real broker, and a new grant brings them back."""

from __future__ import annotations

import secrets
from collections.abc import AsyncIterator
from typing import Any

import httpx
import pytest
from cdp_common.events import ProfileCreated, SegmentExited, make_envelope
from cdp_common.kafka import create_producer
from cdp_common.testing import PlatformUnderTest, Stack, read_topic, wait_for
from cdp_common.topics import TopicName

pytestmark = pytest.mark.e2e


@pytest.fixture
async def http() -> AsyncIterator[httpx.AsyncClient]:
    async with httpx.AsyncClient(timeout=15) as client:
        yield client


async def publish_profiles(platform: PlatformUnderTest, traits: dict[str, dict[str, Any]]) -> None:
    settings = platform.settings()
    producer = create_producer(settings, client_id="segment-purposes-test")
    await producer.start()
    try:
        for profile_id, values in traits.items():
            payload = ProfileCreated(profile_id=profile_id, version=1, changed_traits=values)
            envelope = make_envelope(payload=payload, source="profile", subject=profile_id)
            await producer.send_and_wait(
                settings.topic(TopicName.PROFILES), value=envelope.to_bytes(), key=profile_id.encode()
            )
    finally:
        await producer.stop()


async def test_withdrawing_profiling_at_the_consent_service_takes_a_person_out_within_seconds(
    stack: Stack, http: httpx.AsyncClient, platform: PlatformUnderTest
) -> None:
    segment_url, consent_url, admin = stack.url("segment"), stack.url("consent"), stack.admin()
    key = "purposes_" + secrets.token_hex(3)
    plan = "pro_" + secrets.token_hex(3)
    ada, bob = "ada-" + secrets.token_hex(4), "bob-" + secrets.token_hex(4)
    created = await http.post(
        f"{segment_url}/v1/segments",
        json={"key": key, "name": "Pro", "rule": {"trait": "plan", "op": "eq", "value": plan}},
        headers=admin,
    )
    assert created.status_code == 201, created.text
    await publish_profiles(platform, {ada: {"plan": plan}, bob: {"plan": plan}})

    async def members() -> set[str]:
        page = (await http.get(f"{segment_url}/v1/segments/{key}/members", headers=admin)).json()
        return {m["profile_id"] for m in page["items"]}

    async def members_are(expected: set[str]) -> bool:
        return await members() == expected

    await wait_for(lambda: members_are({ada, bob}), timeout=60, what="both to enter the segment")

    async def decide(status: str) -> None:
        response = await http.post(
            f"{consent_url}/v1/consents",
            json={
                "profile_id": ada,
                "purpose": "profiling_segmentation",
                "channel": "email",
                "status": status,
                "source": "preference-centre",
            },
            headers=admin,
        )
        assert response.status_code == 201, response.text

    await decide("withdrawn")
    await wait_for(lambda: members_are({bob}), timeout=15, what="ada to leave the segment")

    settings = platform.settings()
    events = await read_topic(
        bootstrap=settings.kafka_bootstrap,
        topic=settings.topic(TopicName.SEGMENTS),
        until=lambda es: any(isinstance(e.data, SegmentExited) and e.subject == ada for e in es),
    )
    exited = next(e.data for e in events if isinstance(e.data, SegmentExited) and e.subject == ada)
    assert exited.segment_key == key
    assert exited.reason["cause"]["why"] == "consent"
    assert exited.reason["cause"]["type"] == "cdp.consent.withdrawn.v1"

    explained = (await http.get(f"{segment_url}/v1/segments/{key}/explain/{ada}", headers=admin)).json()
    assert explained["member"] is False
    assert explained["excluded"]["reason"] == "consent"
    assert explained["excluded"]["decisions"] == {"profiling_segmentation:email": "withdrawn"}
    history = (
        await http.get(f"{segment_url}/v1/segments/{key}/history?profile_id={ada}", headers=admin)
    ).json()
    assert [(h["change"], h["reason"]["cause"].get("why")) for h in history["items"]] == [
        ("exited", "consent"),
        ("entered", None),
    ]

    await decide("granted")
    await wait_for(lambda: members_are({ada, bob}), timeout=15, what="ada to come back after granting")
