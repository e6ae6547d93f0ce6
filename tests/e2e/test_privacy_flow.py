"""GDPR requests across all five services: a person created through ingest, their consent, an
access request whose bundle holds their data, an erasure that completes with five receipts and
leaves none of their e-mail, phone or name in any service's tables, and re-sent events that do
not bring them back."""

from __future__ import annotations

import re
import secrets
from typing import Any

import asyncpg
import httpx
import pytest
from cdp_common.testing import PlatformUnderTest, wait_for

from .conftest import Stack
from .test_event_flow import profile_of

pytestmark = pytest.mark.e2e

SCHEMAS = ("ingest", "profile", "segment", "campaign", "consent")
TEXT_TYPES = ("text", "character varying", "character", "json", "jsonb")


async def identify(http: httpx.AsyncClient, stack: Stack, body: dict[str, Any]) -> None:
    response = await http.post(f"{stack.url('ingest')}/v1/identify", json=body, auth=(stack.write_key, ""))
    assert response.status_code == 200, response.text


async def open_request(http: httpx.AsyncClient, stack: Stack, kind: str, email: str) -> str:
    response = await http.post(
        f"{stack.url('consent')}/v1/privacy/requests",
        json={"type": kind, "subject": {"type": "email", "value": email}},
        headers=stack.admin(),
    )
    assert response.status_code == 202, response.text
    request_id: str = response.json()["id"]
    return request_id


async def finished(http: httpx.AsyncClient, stack: Stack, request_id: str) -> dict[str, Any] | None:
    response = await http.get(
        f"{stack.url('consent')}/v1/privacy/requests/{request_id}", headers=stack.admin()
    )
    body: dict[str, Any] = response.json()
    return body if body["status"] in ("completed", "failed") else None


async def find_everywhere(database_url: str, needles: list[str]) -> list[str]:
    """Return 'schema.table.column' for every text or JSON column holding any needle."""
    conn = await asyncpg.connect(database_url)
    try:
        columns = await conn.fetch(
            "SELECT table_schema, table_name, column_name FROM information_schema.columns"
            " WHERE table_schema = ANY($1::text[]) AND data_type = ANY($2::text[])",
            list(SCHEMAS),
            list(TEXT_TYPES),
        )
        found = []
        for schema, table, column in columns:
            # Names come from information_schema, not from input.
            hits = await conn.fetchval(
                f'SELECT count(*) FROM "{schema}"."{table}" WHERE "{column}"::text ILIKE ANY($1::text[])',  # noqa: S608
                [f"%{needle}%" for needle in needles],
            )
            if hits:
                found.append(f"{schema}.{table}.{column}")
        return found
    finally:
        await conn.close()


async def erased_events_dropped(http: httpx.AsyncClient, stack: Stack) -> float:
    text = (await http.get(f"{stack.url('profile')}/metrics")).text
    match = re.search(r'^cdp_profile_events_dropped_total\{reason="erased"\} (\S+)$', text, re.MULTILINE)
    return float(match.group(1)) if match else 0.0


# Generous: when this test runs first it also waits for the five services to start.
@pytest.mark.timeout(400)
async def test_access_then_erasure_across_every_service(
    stack: Stack, http: httpx.AsyncClient, platform: PlatformUnderTest
) -> None:
    user_id = "gdpr-" + secrets.token_hex(4)
    email = f"Ada.{secrets.token_hex(4)}@Example.com"
    phone = "+4930" + str(secrets.randbelow(9_000_000) + 1_000_000)
    name = "Lovelace" + secrets.token_hex(3)
    person = {
        "userId": user_id,
        "messageId": "m-" + secrets.token_hex(6),
        "traits": {"email": email, "phone": phone, "name": name, "first_name": "Ada", "last_name": name},
    }
    await identify(http, stack, person)
    profile = await wait_for(lambda: profile_of(http, stack, f"user_id:{user_id}"), what="the profile")
    profile_id = profile["id"]
    grant = await http.post(
        f"{stack.url('consent')}/v1/consents",
        json={
            "profile_id": profile_id,
            "purpose": "email_marketing",
            "channel": "email",
            "status": "granted",
            "source": "e2e-form",
            "wording_version": "v1",
            "evidence": {"ip": "203.0.113.5"},
        },
        headers=stack.admin(),
    )
    assert grant.status_code == 201

    async def consent_knows_the_profile() -> bool:
        url = f"{stack.url('consent')}/v1/privacy/profiles/{profile_id}"
        response = await http.get(url, headers=stack.admin())
        return response.status_code == 200 and response.json()["data"]["known_profile"] is not None

    await wait_for(consent_knows_the_profile, what="consent to learn the profile")

    access_id = await open_request(http, stack, "access", email.upper())
    access = await wait_for(lambda: finished(http, stack, access_id), timeout=60, what="the access request")
    assert access["status"] == "completed", access
    assert set(access["receipts"]) == set(SCHEMAS)
    bundle = (
        await http.get(
            f"{stack.url('consent')}/v1/privacy/requests/{access_id}/bundle", headers=stack.admin()
        )
    ).json()
    assert profile_id in bundle["profile_ids"]
    as_text = str(bundle["services"]["profile"]).lower()
    assert email.lower() in as_text
    assert name.lower() in as_text
    consents = bundle["services"]["consent"][profile_id]["consents"]
    assert [(c["purpose"], c["status"]) for c in consents] == [("email_marketing", "granted")]

    erasure_id = await open_request(http, stack, "erasure", email)
    erasure = await wait_for(lambda: finished(http, stack, erasure_id), timeout=60, what="the erasure")
    assert erasure["status"] == "completed", erasure
    assert set(erasure["receipts"]) == set(SCHEMAS)
    assert all(r["status"] == "done" for r in erasure["receipts"].values())
    assert all(profile_id in r["profile_ids"] for r in erasure["receipts"].values())
    assert await profile_of(http, stack, f"user_id:{user_id}") is None
    gone = await http.get(
        f"{stack.url('consent')}/v1/privacy/requests/{access_id}/bundle", headers=stack.admin()
    )
    assert gone.status_code == 410, "the access bundle went with the person"

    needles = [email.lower(), phone, name.lower()]
    assert await find_everywhere(platform.database_url, needles) == []

    dropped_before = await erased_events_dropped(http, stack)
    # The same message again (a replay), then the same person under a new message id.
    await identify(http, stack, person)
    await identify(http, stack, {**person, "messageId": "m-" + secrets.token_hex(6)})

    async def new_message_dropped() -> bool:
        return await erased_events_dropped(http, stack) >= dropped_before + 1

    await wait_for(new_message_dropped, what="profile to drop the re-sent event of the erased person")
    assert await profile_of(http, stack, f"user_id:{user_id}") is None
    assert await find_everywhere(platform.database_url, needles) == []
