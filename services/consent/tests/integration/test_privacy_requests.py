"""Privacy requests on consent's side: opening with the subject as a keyed hash, receipts per
service, access bundles fetched over HTTP with retries, erasure completion, deadlines.

The profile service's part (resolving the subject, publishing its receipt and profile.erased)
is played here by publishing what it publishes."""

from __future__ import annotations

import secrets
from datetime import UTC, datetime, timedelta
from typing import Any

import asyncpg
import httpx
import pytest
from cdp_common.db import create_engine, create_session_factory
from cdp_common.events import (
    PrivacyReceipt,
    PrivacyRequestCompleted,
    PrivacyRequestOpened,
    ProfileCreated,
    ProfileErased,
)
from cdp_common.hashing import subject_hash
from cdp_common.testing import read_topic, wait_for
from cdp_common.topics import TopicName
from cdp_consent import store

from ..conftest import ConsentUnderTest, OtherServices

pytestmark = pytest.mark.integration


async def open_request(http: httpx.AsyncClient, kind: str, subject_type: str, value: str) -> dict[str, Any]:
    response = await http.post(
        "/v1/privacy/requests", json={"type": kind, "subject": {"type": subject_type, "value": value}}
    )
    assert response.status_code == 202, response.text
    body: dict[str, Any] = response.json()
    return body


async def receipt(
    consent: ConsentUnderTest, request_id: str, service: str, profile_ids: list[str], **details: int
) -> None:
    await consent.publish(
        TopicName.PRIVACY,
        payload=PrivacyReceipt(
            request_id=request_id, service=service, profile_ids=profile_ids, details=details
        ),
        subject=request_id,
        source=service,
    )


async def finished(http: httpx.AsyncClient, request_id: str) -> dict[str, Any] | None:
    body: dict[str, Any] = (await http.get(f"/v1/privacy/requests/{request_id}")).json()
    return body if body["status"] in ("completed", "failed") else None


async def test_an_access_request_goes_out_hashed_and_yields_one_bundle_from_every_service(
    consent: ConsentUnderTest, http: httpx.AsyncClient, other_services: OtherServices
) -> None:
    profile_id = "p-" + secrets.token_hex(6)
    address = f"Grace.{secrets.token_hex(3)}@Example.org"
    other_services.parts.setdefault("profile", {})[profile_id] = {
        "traits": {"email": address.lower(), "name": "Grace"}
    }
    other_services.parts.setdefault("ingest", {})[profile_id] = {"sources": []}
    other_services.parts.setdefault("campaign", {})[profile_id] = {"contact": {"email": address.lower()}}
    other_services.failures_left["campaign"] = 2
    consent_decision = {
        "profile_id": profile_id,
        "purpose": "analytics",
        "channel": "push",
        "status": "granted",
        "source": "app",
    }
    assert (await http.post("/v1/consents", json=consent_decision)).status_code == 201

    opened = await open_request(http, "access", "email", f" {address} ")
    assert opened["status"] == "pending"
    assert opened["awaiting"] == ["profile", "ingest", "segment", "campaign", "consent"]

    def opened_event(envelopes: list[Any]) -> bool:
        return any(
            isinstance(e.data, PrivacyRequestOpened) and e.data.request_id == opened["id"] for e in envelopes
        )

    read = await read_topic(
        bootstrap=consent.settings.kafka_bootstrap,
        topic=consent.settings.topic(TopicName.PRIVACY),
        until=opened_event,
    )
    event = next(
        e for e in read if isinstance(e.data, PrivacyRequestOpened) and e.data.request_id == opened["id"]
    )
    assert event.subject == opened["id"]
    assert event.data.subject_type == "email"
    assert event.data.subject_hash == subject_hash(
        key=consent.settings.hash_key.get_secret_value(), subject_type="email", value=address.lower()
    )
    assert address.lower() not in event.to_bytes().decode().lower(), "the subject never travels in clear"
    assert (event.data.deadline - event.time).days in (29, 30)

    await receipt(consent, opened["id"], "profile", [profile_id], found=1)
    done = await wait_for(lambda: finished(http, opened["id"]), what="the access request to complete")
    assert done["status"] == "completed"
    assert set(done["receipts"]) == {"profile", "ingest", "segment", "campaign", "consent"}
    assert done["receipts"]["segment"]["details"] == {"profiles_with_data": 0}
    assert done["receipts"]["campaign"]["details"] == {"profiles_with_data": 1}
    assert done["awaiting"] == []
    assert other_services.failures_left["campaign"] == 0, "campaign failed twice and was retried"
    assert all(auth == consent.admin()["Authorization"] for _, _, auth in other_services.calls)

    bundle = (await http.get(f"/v1/privacy/requests/{opened['id']}/bundle")).json()
    assert bundle["format"] == "cdp.access-bundle.v1"
    assert bundle["profile_ids"] == [profile_id]
    assert bundle["services"]["profile"][profile_id]["traits"]["name"] == "Grace"
    assert bundle["services"]["campaign"][profile_id]["contact"]["email"] == address.lower()
    assert bundle["services"]["segment"] == {}
    consent_part = bundle["services"]["consent"][profile_id]
    assert [(c["purpose"], c["status"]) for c in consent_part["consents"]] == [("analytics", "granted")]

    def completed_event(envelopes: list[Any]) -> bool:
        return any(
            isinstance(e.data, PrivacyRequestCompleted) and e.data.request_id == opened["id"]
            for e in envelopes
        )

    await read_topic(
        bootstrap=consent.settings.kafka_bootstrap,
        topic=consent.settings.topic(TopicName.PRIVACY),
        until=completed_event,
    )


async def test_an_access_request_fails_when_a_service_keeps_failing(
    consent: ConsentUnderTest, http: httpx.AsyncClient, other_services: OtherServices
) -> None:
    profile_id = "p-" + secrets.token_hex(6)
    other_services.parts.setdefault("segment", {})[profile_id] = {"memberships": []}
    other_services.failures_left["segment"] = 1_000
    try:
        opened = await open_request(http, "access", "user_id", "u-" + secrets.token_hex(4))
        await receipt(consent, opened["id"], "profile", [profile_id], found=1)
        done = await wait_for(lambda: finished(http, opened["id"]), timeout=60, what="the request to give up")
    finally:
        other_services.failures_left["segment"] = 0
    assert done["status"] == "failed"
    assert done["last_error"] == "segment answered 503"
    bundle = await http.get(f"/v1/privacy/requests/{opened['id']}/bundle")
    assert bundle.status_code == 409
    assert bundle.json()["error"]["code"] == "bundle_not_ready"


async def test_an_erasure_completes_with_five_receipts_and_consent_erases_its_own_data(
    consent: ConsentUnderTest, http: httpx.AsyncClient
) -> None:
    profile_id = "p-" + secrets.token_hex(6)
    address = f"erase.{secrets.token_hex(3)}@example.com"
    await consent.publish(
        TopicName.PROFILES,
        payload=ProfileCreated(
            profile_id=profile_id, version=1, identifiers=[{"type": "email", "value": address}]
        ),
        subject=profile_id,
    )
    grant = {
        "profile_id": profile_id,
        "purpose": "email_marketing",
        "channel": "email",
        "status": "granted",
        "source": "form",
        "evidence": {"ip": "203.0.113.9", "user_agent": "Browser"},
    }
    assert (await http.post("/v1/consents", json=grant)).status_code == 201

    async def known() -> bool:
        return (await http.get(f"/v1/privacy/profiles/{profile_id}")).json()["data"][
            "known_profile"
        ] is not None

    await wait_for(known, what="the profile to reach consent")
    opened = await open_request(http, "erasure", "email", address)
    await receipt(consent, opened["id"], "profile", [profile_id], found=1)
    await consent.publish(
        TopicName.PROFILES,
        payload=ProfileErased(profile_id=profile_id, version=2, request_id=opened["id"]),
        subject=profile_id,
    )
    for service in ("ingest", "segment", "campaign"):
        await receipt(consent, opened["id"], service, [profile_id])

    done = await wait_for(lambda: finished(http, opened["id"]), what="the erasure to complete")
    assert done["status"] == "completed"
    assert set(done["receipts"]) == {"profile", "ingest", "segment", "campaign", "consent"}
    assert done["receipts"]["consent"]["details"] == {
        "consent_ledger": 1,
        "consent_state": 1,
        "profile_contacts": 1,
        "known_profiles": 1,
    }
    assert (await http.get(f"/v1/privacy/profiles/{profile_id}")).status_code == 404
    assert (await http.get(f"/v1/consents/{profile_id}/history")).json()["items"] == []
    lookup = await http.post("/v1/suppressions/lookup", json={"type": "email", "value": address})
    assert lookup.json()["entry"]["reason"] == "erased", "the erased address is never contacted again"
    conn = await asyncpg.connect(consent.database_url)
    try:
        leftovers = await conn.fetchval(
            "SELECT count(*) FROM consent.consent_ledger WHERE evidence::text LIKE '%203.0.113.9%'"
        )
    finally:
        await conn.close()
    assert leftovers == 0


async def test_an_erasure_of_nobody_completes_on_the_profile_receipt_alone(
    consent: ConsentUnderTest, http: httpx.AsyncClient
) -> None:
    opened = await open_request(http, "erasure", "phone", "+49 30 1234567")
    await receipt(consent, opened["id"], "profile", [], found=0)
    done = await wait_for(lambda: finished(http, opened["id"]), what="the request to complete")
    assert done["status"] == "completed"
    assert list(done["receipts"]) == ["profile"]
    assert done["profile_ids"] == []
    assert "found nobody" in done["note"]


async def test_an_access_request_about_nobody_yields_an_empty_bundle(
    consent: ConsentUnderTest, http: httpx.AsyncClient
) -> None:
    opened = await open_request(http, "access", "anonymous_id", "anon-" + secrets.token_hex(4))
    await receipt(consent, opened["id"], "profile", [], found=0)
    done = await wait_for(lambda: finished(http, opened["id"]), what="the request to complete")
    assert done["status"] == "completed"
    bundle = (await http.get(f"/v1/privacy/requests/{opened['id']}/bundle")).json()
    assert bundle["profile_ids"] == []
    assert all(part == {} for part in bundle["services"].values())


async def test_deadlines_are_flagged_and_foreign_receipts_are_ignored(
    consent: ConsentUnderTest, http: httpx.AsyncClient
) -> None:
    opened = await open_request(http, "access", "user_id", "late-" + secrets.token_hex(3))
    assert opened["overdue"] is False
    conn = await asyncpg.connect(consent.database_url)
    try:
        await conn.execute(
            "UPDATE consent.privacy_requests SET deadline = now() - interval '1 day' WHERE id = $1",
            opened["id"],
        )
    finally:
        await conn.close()
    late = (await http.get(f"/v1/privacy/requests/{opened['id']}")).json()
    assert late["overdue"] is True
    assert late["status"] == "pending"

    await receipt(consent, "someone-elses-request", "segment", ["p-x"])
    await receipt(consent, opened["id"], "ingest", [])

    async def ingest_answered() -> bool:
        body = (await http.get(f"/v1/privacy/requests/{opened['id']}")).json()
        return "ingest" in body["receipts"]

    await wait_for(ingest_answered, what="the receipt after the foreign one")


async def test_bad_privacy_requests_are_refused_clearly(http: httpx.AsyncClient) -> None:
    cases = [
        {"type": "deletion", "subject": {"type": "email", "value": "a@example.com"}},
        {"type": "access", "subject": {"type": "phone", "value": "call me maybe"}},
        {"type": "access", "subject": {"type": "Email", "value": "a@example.com"}},
        {"type": "access", "subject": {"type": "email", "value": "   "}},
        {"type": "access", "subject": {"type": "email", "value": "x" * 1001}},
        {"type": "access"},
        {"type": "access", "subject": {"type": "email", "value": "a@example.com"}, "extra": 1},
    ]
    for body in cases:
        response = await http.post("/v1/privacy/requests", json=body)
        assert response.status_code == 422, body
        assert response.json()["error"]["code"] in ("invalid_request", "invalid_subject")
    assert (await http.get("/v1/privacy/requests/nope")).status_code == 404
    assert (await http.get("/v1/privacy/requests/nope/bundle")).status_code == 404
    erasure = await open_request(http, "erasure", "user_id", "u-" + secrets.token_hex(3))
    not_access = await http.get(f"/v1/privacy/requests/{erasure['id']}/bundle")
    assert not_access.status_code == 409
    assert not_access.json()["error"]["code"] == "not_an_access_request"


async def test_open_requests_are_summarised_against_their_deadlines(
    consent: ConsentUnderTest, http: httpx.AsyncClient
) -> None:
    engine = create_engine(database_url=consent.settings.database_url, schema="consent", pool_size=1)
    factory = create_session_factory(engine)
    warn_before = timedelta(days=7)
    try:
        async with factory() as session:
            before = await store.summarise_open_requests(
                session=session, now=datetime.now(UTC), warn_before=warn_before
            )
        ids = [
            (await open_request(http, "erasure", "user_id", "due-" + secrets.token_hex(3)))["id"]
            for _ in range(3)
        ]
        conn = await asyncpg.connect(consent.database_url)
        try:
            for request_id, days in zip(ids, (-1, 3, 20), strict=True):
                await conn.execute(
                    "UPDATE consent.privacy_requests SET deadline = now() + make_interval(days => $2) WHERE id = $1",
                    request_id,
                    days,
                )
        finally:
            await conn.close()
        async with factory() as session:
            after = await store.summarise_open_requests(
                session=session, now=datetime.now(UTC), warn_before=warn_before
            )
    finally:
        await engine.dispose()
    assert after.open - before.open == 3
    assert after.due_soon - before.due_soon == 1, "only the request due in 3 days is near its deadline"
    assert after.overdue - before.overdue == 1
    assert after.oldest_age_s >= before.oldest_age_s
