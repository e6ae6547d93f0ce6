"""The privacy hook: on profile.erased every service erases what it holds and sends its receipt."""

from __future__ import annotations

import secrets

import httpx
import pytest
from cdp_common.events import PrivacyReceipt, ProfileErased, make_envelope
from cdp_common.kafka import create_producer
from cdp_common.testing import PlatformUnderTest, read_topic, wait_for
from cdp_common.topics import TopicName

from .conftest import Stack
from .test_event_flow import DOWNSTREAM, known_version, profile_of, track

pytestmark = pytest.mark.e2e


async def test_profile_erased_removes_the_record_everywhere_and_yields_receipts(
    stack: Stack, http: httpx.AsyncClient, platform: PlatformUnderTest
) -> None:
    user_id = "erase-" + secrets.token_hex(4)
    assert (await track(http, stack, {"userId": user_id, "event": "Signed Up"})).status_code == 200
    profile = await wait_for(lambda: profile_of(http, stack, f"user_id:{user_id}"), what="the profile")
    for service in DOWNSTREAM:
        await wait_for(
            lambda s=service: known_version(http, stack, s, profile["id"]), what=f"{service} record"
        )

    # Publish what the profile service publishes when it erases a person.
    request_id = "pr-" + secrets.token_hex(4)
    settings = platform.settings()
    erased = make_envelope(
        payload=ProfileErased(profile_id=profile["id"], version=99, request_id=request_id),
        source="profile",
        subject=profile["id"],
    )
    producer = create_producer(settings, client_id="e2e-erasure")
    await producer.start()
    try:
        await producer.send_and_wait(
            settings.topic(TopicName.PROFILES), value=erased.to_bytes(), key=profile["id"].encode()
        )
    finally:
        await producer.stop()

    async def gone(service: str) -> bool:
        return await known_version(http, stack, service, profile["id"]) is None

    for service in DOWNSTREAM:
        await wait_for(lambda s=service: gone(s), what=f"{service} to erase its record")

    def receipts_in(envelopes: list) -> bool:  # type: ignore[type-arg]
        return {
            e.data.service
            for e in envelopes
            if isinstance(e.data, PrivacyReceipt) and e.data.request_id == request_id
        } >= set(DOWNSTREAM) | {"ingest"}

    read = await read_topic(
        bootstrap=settings.kafka_bootstrap, topic=settings.topic(TopicName.PRIVACY), until=receipts_in
    )
    receipts = [
        e.data for e in read if isinstance(e.data, PrivacyReceipt) and e.data.request_id == request_id
    ]
    assert {r.service for r in receipts} == {*DOWNSTREAM, "ingest"}
    for receipt in receipts:
        assert receipt.profile_ids == [profile["id"]]
        if receipt.service == "ingest":
            assert receipt.details == {}
        else:
            assert receipt.details["known_profiles"] == 1
        assert receipt.status == "done"
