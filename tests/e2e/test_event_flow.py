"""One event end to end: ingest → cdp.events.v1 → profile → cdp.profiles.v1 → segment, campaign, consent."""

from __future__ import annotations

import secrets
from typing import Any

import httpx
import pytest
from cdp_common.testing import wait_for

from .conftest import Stack

pytestmark = pytest.mark.e2e

DOWNSTREAM = ("segment", "campaign", "consent")


async def track(http: httpx.AsyncClient, stack: Stack, body: dict[str, Any]) -> httpx.Response:
    return await http.post(f"{stack.url('ingest')}/v1/track", json=body, auth=(stack.write_key, ""))


async def profile_of(http: httpx.AsyncClient, stack: Stack, ref: str) -> dict[str, Any] | None:
    response = await http.get(f"{stack.url('profile')}/v1/profiles/{ref}", headers=stack.admin())
    return response.json() if response.status_code == 200 else None


async def known_version(http: httpx.AsyncClient, stack: Stack, service: str, profile_id: str) -> int | None:
    response = await http.get(f"{stack.url(service)}/v1/privacy/profiles/{profile_id}", headers=stack.admin())
    if response.status_code != 200:
        return None
    version: int = response.json()["data"]["known_profile"]["version"]
    return version


async def test_tracked_event_creates_the_profile_and_reaches_every_service(
    stack: Stack, http: httpx.AsyncClient
) -> None:
    user_id = "user-" + secrets.token_hex(4)
    response = await track(
        http,
        stack,
        {
            "userId": user_id,
            "event": "Signed Up",
            "properties": {"plan": "pro"},
            "context": {"traits": {"name": "Ada"}},
        },
    )
    assert response.status_code == 200
    assert response.json() == {"success": True}

    profile = await wait_for(lambda: profile_of(http, stack, f"user_id:{user_id}"), what="the profile")
    assert profile["traits"] == {"name": "Ada"}
    assert {"type": "user_id", "value": user_id} in profile["identifiers"]
    assert profile["version"] == 1
    by_id = await profile_of(http, stack, profile["id"])
    assert by_id is not None
    assert by_id["id"] == profile["id"]

    for service in DOWNSTREAM:
        version = await wait_for(
            lambda s=service: known_version(http, stack, s, profile["id"]),
            what=f"{service} to record the profile",
        )
        assert version == 1

    traits = (
        await http.get(f"{stack.url('profile')}/v1/profiles/user_id:{user_id}/traits", headers=stack.admin())
    ).json()
    assert traits["traits"]["name"]["value"] == "Ada"
    assert traits["traits"]["name"]["source"].startswith("src_")


async def test_a_resent_message_id_is_applied_once(stack: Stack, http: httpx.AsyncClient) -> None:
    user_id = "user-" + secrets.token_hex(4)
    first = {"userId": user_id, "event": "Product Viewed", "messageId": "m-" + secrets.token_hex(6)}
    assert (await track(http, stack, first)).status_code == 200
    assert (await track(http, stack, first)).status_code == 200
    assert (await track(http, stack, {"userId": user_id, "event": "Product Added"})).status_code == 200

    async def at_version_two() -> dict[str, Any] | None:
        profile = await profile_of(http, stack, f"user_id:{user_id}")
        return profile if profile and profile["version"] >= 2 else None

    profile = await wait_for(at_version_two, what="both distinct events")
    assert profile["version"] == 2, "the resent messageId must not count as a third event"
    for service in DOWNSTREAM:
        await wait_for(
            lambda s=service: version_is(http, stack, s, profile["id"], 2),
            what=f"{service} at version 2",
        )


async def version_is(
    http: httpx.AsyncClient, stack: Stack, service: str, profile_id: str, expected: int
) -> bool:
    return await known_version(http, stack, service, profile_id) == expected


async def test_unknown_profile_is_a_404_with_the_error_body(stack: Stack, http: httpx.AsyncClient) -> None:
    response = await http.get(
        f"{stack.url('profile')}/v1/profiles/user_id:nobody-{secrets.token_hex(3)}", headers=stack.admin()
    )
    assert response.status_code == 404
    assert response.json()["error"]["code"] == "profile_not_found"
