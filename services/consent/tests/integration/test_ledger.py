"""The consent ledger through the API: decisions, the state in force, history, withdrawal on
cdp.consents.v1, the check API, the suppression list, scopes and bad input."""

from __future__ import annotations

import secrets
from datetime import UTC, datetime, timedelta
from typing import Any

import asyncpg
import httpx
import pytest
from cdp_common.auth import hash_token
from cdp_common.events import ConsentGranted, ConsentWithdrawn, ProfileCreated, TokenCreated
from cdp_common.hashing import subject_hash
from cdp_common.testing import read_topic, wait_for
from cdp_common.topics import TopicName

from ..conftest import ConsentUnderTest

pytestmark = pytest.mark.integration


def new_profile() -> str:
    return "p-" + secrets.token_hex(6)


def decision(profile_id: str, status: str = "granted", **extra: Any) -> dict[str, Any]:
    return {
        "profile_id": profile_id,
        "purpose": "email_marketing",
        "channel": "email",
        "status": status,
        "source": "signup-form",
        "wording": "Yes, send me the newsletter.",
        "wording_version": "nl-2024-01",
        "evidence": {"ip": "203.0.113.7", "user_agent": "Mozilla/5.0", "form": "footer"},
        **extra,
    }


async def test_a_grant_is_kept_with_its_evidence_and_is_in_force(http: httpx.AsyncClient) -> None:
    profile_id = new_profile()
    response = await http.post("/v1/consents", json=decision(profile_id, legal_basis="consent"))
    assert response.status_code == 201, response.text
    entry = response.json()
    assert entry["status"] == "granted"
    assert entry["in_force"] is True
    assert entry["evidence"] == {"ip": "203.0.113.7", "user_agent": "Mozilla/5.0", "form": "footer"}
    assert entry["wording_version"] == "nl-2024-01"

    state = (await http.get(f"/v1/consents/{profile_id}")).json()
    assert state["consents"] == [
        {
            "purpose": "email_marketing",
            "channel": "email",
            "status": "granted",
            "at": entry["at"],
            "ledger_id": entry["id"],
            "source": "signup-form",
            "legal_basis": "consent",
            "wording_version": "nl-2024-01",
        }
    ]


async def test_history_keeps_every_decision_and_the_latest_time_is_in_force(http: httpx.AsyncClient) -> None:
    profile_id = new_profile()
    now = datetime.now(UTC)
    for status, minutes_ago in (("granted", 30), ("withdrawn", 10), ("granted", 20)):
        at = (now - timedelta(minutes=minutes_ago)).isoformat()
        assert (await http.post("/v1/consents", json=decision(profile_id, status, at=at))).status_code == 201

    state = (await http.get(f"/v1/consents/{profile_id}")).json()["consents"]
    assert [s["status"] for s in state] == ["withdrawn"], "the late-recorded older grant must not win"

    first = (await http.get(f"/v1/consents/{profile_id}/history", params={"limit": 2})).json()
    assert [e["status"] for e in first["items"]] == ["granted", "withdrawn"]
    rest = (await http.get(f"/v1/consents/{profile_id}/history", params={"cursor": first["next"]})).json()
    assert [e["status"] for e in rest["items"]] == ["granted"]
    assert rest["next"] is None


async def test_the_ledger_refuses_to_be_changed(consent: ConsentUnderTest, http: httpx.AsyncClient) -> None:
    profile_id = new_profile()
    assert (await http.post("/v1/consents", json=decision(profile_id))).status_code == 201
    conn = await asyncpg.connect(consent.database_url)
    try:
        with pytest.raises(asyncpg.RaiseError, match="append-only"):
            await conn.execute(
                "UPDATE consent.consent_ledger SET status = 'denied' WHERE profile_id = $1", profile_id
            )
    finally:
        await conn.close()


async def test_withdrawal_takes_effect_at_once_and_is_published(
    consent: ConsentUnderTest, http: httpx.AsyncClient
) -> None:
    profile_id = new_profile()
    assert (await http.post("/v1/consents", json=decision(profile_id))).status_code == 201
    check = {"purpose": "email_marketing", "channel": "email", "profile_ids": [profile_id]}
    assert (await http.post("/v1/consents/check", json=check)).json()["allowed"] == [profile_id]

    withdrawn = await http.post(
        "/v1/consents", json=decision(profile_id, "withdrawn", source="unsubscribe-link")
    )
    assert withdrawn.status_code == 201
    answer = (await http.post("/v1/consents/check", json=check)).json()
    assert answer["allowed"] == []
    assert answer["refused"] == {profile_id: "withdrawn"}

    def both_published(envelopes: list[Any]) -> bool:
        mine = [e for e in envelopes if getattr(e.data, "profile_id", None) == profile_id]
        return any(isinstance(e.data, ConsentWithdrawn) for e in mine)

    read = await read_topic(
        bootstrap=consent.settings.kafka_bootstrap,
        topic=consent.settings.topic(TopicName.CONSENTS),
        until=both_published,
    )
    mine = [e for e in read if getattr(e.data, "profile_id", None) == profile_id]
    assert [type(e.data) for e in mine] == [ConsentGranted, ConsentWithdrawn]
    assert mine[1].subject == profile_id
    assert mine[1].data.source == "unsubscribe-link"
    assert (mine[1].data.purpose, mine[1].data.channel) == ("email_marketing", "email")


async def test_check_answers_a_batch_and_fails_closed(http: httpx.AsyncClient) -> None:
    granted = [new_profile() for _ in range(3)]
    denied = new_profile()
    for profile_id in granted:
        assert (await http.post("/v1/consents", json=decision(profile_id))).status_code == 201
    assert (await http.post("/v1/consents", json=decision(denied, "denied"))).status_code == 201
    other_channel = new_profile()
    assert (await http.post("/v1/consents", json=decision(other_channel, channel="sms"))).status_code == 201
    unknown = [new_profile() for _ in range(995)]

    ids = [*granted, denied, other_channel, *unknown]
    response = await http.post(
        "/v1/consents/check", json={"purpose": "email_marketing", "channel": "email", "profile_ids": ids}
    )
    assert response.status_code == 200
    answer = response.json()
    assert sorted(answer["allowed"]) == sorted(granted)
    assert answer["refused"][denied] == "denied"
    assert answer["refused"][other_channel] == "no_record", "a grant on SMS says nothing about e-mail"
    assert all(answer["refused"][pid] == "no_record" for pid in unknown)
    assert len(answer["allowed"]) + len(answer["refused"]) == 1000


async def test_check_refuses_bad_questions_with_clear_errors(http: httpx.AsyncClient) -> None:
    def ask(**body: Any) -> dict[str, Any]:
        return {"purpose": "email_marketing", "channel": "email", "profile_ids": ["a"], **body}

    unknown_purpose = await http.post("/v1/consents/check", json=ask(purpose="world_domination"))
    assert unknown_purpose.status_code == 422
    assert unknown_purpose.json()["error"]["code"] == "unknown_purpose_or_channel"
    too_many = await http.post("/v1/consents/check", json=ask(profile_ids=[f"p{i}" for i in range(10_001)]))
    assert too_many.status_code == 413
    assert too_many.json()["error"]["details"] == {"limit": 10_000, "given": 10_001}
    assert (await http.post("/v1/consents/check", json=ask(profile_ids=[]))).status_code == 422
    malformed = await http.post(
        "/v1/consents/check", content=b"{not json", headers={"content-type": "application/json"}
    )
    assert malformed.status_code == 422
    assert malformed.json()["error"]["code"] == "invalid_request"


async def test_bad_decisions_are_refused_and_nothing_is_recorded(http: httpx.AsyncClient) -> None:
    profile_id = new_profile()
    cases = {
        "unknown purpose": decision(profile_id, purpose="mind_reading"),
        "unknown channel": decision(profile_id, channel="carrier_pigeon"),
        "unknown status": decision(profile_id, status="maybe"),
        "future time": decision(profile_id, at=(datetime.now(UTC) + timedelta(days=1)).isoformat()),
        "bad ip": decision(profile_id, evidence={"ip": "not-an-ip"}),
        "unknown field": decision(profile_id, color="blue"),
        "hostile source": decision(profile_id, source="'; DROP TABLE consent_ledger; --"),
        "oversized wording": decision(profile_id, wording="x" * 10_001),
        "bad legal basis": decision(profile_id, legal_basis="because"),
    }
    for name, body in cases.items():
        response = await http.post("/v1/consents", json=body)
        assert response.status_code == 422, name
        assert response.json()["error"]["code"] in ("invalid_request", "unknown_purpose_or_channel"), name
    history = (await http.get(f"/v1/consents/{profile_id}/history")).json()
    assert history["items"] == []
    assert (await http.get(f"/v1/consents/{profile_id}/history", params={"cursor": "%%%"})).status_code == 400


async def test_suppressed_addresses_are_kept_as_keyed_hashes_and_block_contact(
    consent: ConsentUnderTest, http: httpx.AsyncClient
) -> None:
    profile_id = new_profile()
    address = f"Someone.{secrets.token_hex(3)}@Example.com"
    await consent.publish(
        TopicName.PROFILES,
        payload=ProfileCreated(
            profile_id=profile_id, version=1, identifiers=[{"type": "email", "value": address.lower()}]
        ),
        subject=profile_id,
    )
    assert (await http.post("/v1/consents", json=decision(profile_id))).status_code == 201
    check = {"purpose": "email_marketing", "channel": "email", "profile_ids": [profile_id]}

    async def profile_known() -> bool:
        response = await http.get(f"/v1/privacy/profiles/{profile_id}")
        return response.status_code == 200 and response.json()["data"]["known_profile"] is not None

    await wait_for(profile_known, what="the profile to reach consent")
    assert (await http.post("/v1/consents/check", json=check)).json()["allowed"] == [profile_id]

    added = await http.post(
        "/v1/suppressions", json={"type": "email", "value": f"  {address} ", "reason": "complaint"}
    )
    assert added.status_code == 201
    expected = subject_hash(
        key=consent.settings.hash_key.get_secret_value(), subject_type="email", value=address.lower()
    )
    assert added.json()["hash"] == expected
    assert "value" not in added.json()
    again = await http.post("/v1/suppressions", json={"type": "email", "value": address})
    assert again.status_code == 201
    assert again.json()["reason"] == "complaint", "a duplicate keeps the first entry"

    answer = (await http.post("/v1/consents/check", json=check)).json()
    assert answer["refused"] == {profile_id: "suppressed"}
    sms = {"purpose": "sms_marketing", "channel": "sms", "profile_ids": [profile_id]}
    assert (await http.post("/v1/consents/check", json=sms)).json()["refused"] == {profile_id: "no_record"}

    lookup = await http.post("/v1/suppressions/lookup", json={"type": "email", "value": address.upper()})
    assert lookup.json()["suppressed"] is True
    conn = await asyncpg.connect(consent.database_url)
    try:
        stored = await conn.fetch(
            "SELECT hash, kind, reason FROM consent.suppressions WHERE hash = $1", expected
        )
        clear = await conn.fetchval(
            "SELECT count(*) FROM consent.suppressions WHERE hash ILIKE $1", f"%{address.split('@')[0]}%"
        )
    finally:
        await conn.close()
    assert [tuple(r) for r in stored] == [(expected, "email", "complaint")]
    assert clear == 0

    assert (await http.delete(f"/v1/suppressions/{expected}")).status_code == 204
    assert (await http.delete(f"/v1/suppressions/{expected}")).status_code == 404
    assert (await http.post("/v1/consents/check", json=check)).json()["allowed"] == [profile_id]


async def test_phone_suppression_is_normalised_and_bad_addresses_are_refused(http: httpx.AsyncClient) -> None:
    number = "+49 30 " + str(secrets.randbelow(9_000_000) + 1_000_000)
    first = await http.post("/v1/suppressions", json={"type": "phone", "value": number})
    assert first.status_code == 201
    same = await http.post(
        "/v1/suppressions/lookup", json={"type": "phone", "value": number.replace(" ", "")}
    )
    assert same.json()["suppressed"] is True
    for body in (
        {"type": "phone", "value": "not a number"},
        {"type": "email", "value": "no-at-sign"},
        {"type": "fax", "value": "123"},
        {"type": "email", "value": "x" * 400 + "@example.com"},
    ):
        response = await http.post("/v1/suppressions", json=body)
        assert response.status_code == 422, body
        assert response.json()["error"]["code"] in ("invalid_address", "invalid_request")


async def test_scopes_guard_reading_writing_and_privacy_administration(
    consent: ConsentUnderTest, http: httpx.AsyncClient
) -> None:
    token_id = "t" + secrets.token_hex(6)
    token = f"cdp_{token_id}_{secrets.token_urlsafe(16)}"
    await consent.publish(
        TopicName.TOKENS,
        payload=TokenCreated(
            token_id=token_id, name="reader", token_hash=hash_token(token), scopes=["consents:read"]
        ),
        subject=token_id,
        source="ingest",
    )
    reader = {"Authorization": f"Bearer {token}"}
    check = {"purpose": "email_marketing", "channel": "email", "profile_ids": ["x"]}

    async def token_known() -> bool:
        response = await http.post("/v1/consents/check", json=check, headers=reader)
        return response.status_code == 200

    await wait_for(token_known, what="the token to reach consent")
    written = await http.post("/v1/consents", json=decision(new_profile()), headers=reader)
    assert written.status_code == 403
    assert written.json()["error"]["details"] == {"required_scope": "consents:write"}
    assert (await http.delete(f"/v1/suppressions/{'0' * 64}", headers=reader)).status_code == 403
    async with httpx.AsyncClient(base_url=consent.url) as anonymous:
        assert (await anonymous.post("/v1/consents/check", json=check)).status_code == 401
        assert (await anonymous.get("/v1/consents/x")).status_code == 401
