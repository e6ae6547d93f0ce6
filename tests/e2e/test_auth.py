"""Tokens: created on ingest, honoured by all five services, and refused everywhere once revoked."""

from __future__ import annotations

import json
import secrets

import httpx
import pytest
from cdp_common.testing import wait_for

from .conftest import SERVICES, Stack

pytestmark = pytest.mark.e2e


def privacy_url(stack: Stack, service: str) -> str:
    return f"{stack.url(service)}/v1/privacy/profiles/p-{secrets.token_hex(3)}"


async def create_token(http: httpx.AsyncClient, stack: Stack, scopes: list[str]) -> tuple[str, str]:
    response = await http.post(
        f"{stack.url('ingest')}/v1/tokens", json={"name": "e2e", "scopes": scopes}, headers=stack.admin()
    )
    assert response.status_code == 201, response.text
    body = response.json()
    assert body["scopes"] == sorted(scopes)
    return body["id"], body["token"]


async def statuses(http: httpx.AsyncClient, stack: Stack, token: str) -> dict[str, int]:
    headers = {"Authorization": f"Bearer {token}"}
    return {s: (await http.get(privacy_url(stack, s), headers=headers)).status_code for s in SERVICES}


async def test_a_token_works_on_every_service_until_it_is_revoked(
    stack: Stack, http: httpx.AsyncClient
) -> None:
    token_id, token = await create_token(http, stack, ["privacy:admin"])

    async def accepted_everywhere() -> bool:
        # 404: authenticated and authorised, and the made-up profile is unknown.
        return set((await statuses(http, stack, token)).values()) == {404}

    await wait_for(accepted_everywhere, what="the token to reach all five services")

    listed = (await http.get(f"{stack.url('ingest')}/v1/tokens?limit=1000", headers=stack.admin())).json()
    mine = next(t for t in listed["items"] if t["id"] == token_id)
    assert "token" not in mine
    assert mine["revoked_at"] is None

    revoked = await http.delete(f"{stack.url('ingest')}/v1/tokens/{token_id}", headers=stack.admin())
    assert revoked.status_code == 200
    assert revoked.json()["revoked_at"] is not None

    async def refused_everywhere() -> bool:
        return set((await statuses(http, stack, token)).values()) == {401}

    await wait_for(refused_everywhere, what="the revocation to reach all five services")
    again = await http.delete(f"{stack.url('ingest')}/v1/tokens/{token_id}", headers=stack.admin())
    assert again.status_code == 200


async def test_missing_or_malformed_credentials_are_401_with_the_error_body(
    stack: Stack, http: httpx.AsyncClient
) -> None:
    for service in SERVICES:
        for headers in (
            {},
            {"Authorization": "Basic abc"},
            {"Authorization": "Bearer"},
            {"Authorization": "Bearer nope"},
        ):
            response = await http.get(privacy_url(stack, service), headers=headers)
            assert response.status_code == 401, (service, headers)
            error = response.json()["error"]
            assert error["code"] in {"unauthorized", "invalid_token"}
            assert error["message"]


async def test_a_token_without_the_scope_is_403_everywhere(stack: Stack, http: httpx.AsyncClient) -> None:
    _, token = await create_token(http, stack, ["profiles:read"])

    async def forbidden_everywhere() -> bool:
        return set((await statuses(http, stack, token)).values()) == {403}

    await wait_for(forbidden_everywhere, what="a 403 from every service")
    response = await http.get(privacy_url(stack, "segment"), headers={"Authorization": f"Bearer {token}"})
    assert response.json()["error"]["details"] == {"required_scope": "privacy:admin"}
    # The same token reads profiles, which its scope allows.
    ok = await http.get(
        f"{stack.url('profile')}/v1/profiles/user_id:nobody", headers={"Authorization": f"Bearer {token}"}
    )
    assert ok.status_code == 404


async def test_token_admin_rejects_unknown_scopes_and_unknown_ids(
    stack: Stack, http: httpx.AsyncClient
) -> None:
    # "events:write" grants nothing (events are sent with a write key), so no token carries it.
    for scope in ("root", "events:write"):
        bad = await http.post(
            f"{stack.url('ingest')}/v1/tokens", json={"name": "x", "scopes": [scope]}, headers=stack.admin()
        )
        assert bad.status_code == 422, scope
        assert bad.json()["error"]["code"] == "invalid_request"
        assert scope in json.dumps(bad.json()["error"]), "the answer names the unknown scope"
    missing = await http.delete(f"{stack.url('ingest')}/v1/tokens/does-not-exist", headers=stack.admin())
    assert missing.status_code == 404
    _, limited = await create_token(http, stack, ["profiles:read"])
    await wait_for(
        lambda: _status_is(http, f"{stack.url('ingest')}/v1/tokens", limited, 403), what="the token on ingest"
    )


async def _status_is(http: httpx.AsyncClient, url: str, token: str, expected: int) -> bool:
    return (await http.get(url, headers={"Authorization": f"Bearer {token}"})).status_code == expected
