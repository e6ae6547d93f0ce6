"""What no service can store is refused with 400 and the error body on every service, never a 500:
a NUL character or a lone surrogate in any string of a body, in a path or in a query, JSON nested
past any sensible depth, integers beyond 64 bits."""

from __future__ import annotations

import json
from collections.abc import AsyncIterator
from typing import Any

import httpx
import pytest
from cdp_common.settings import PlatformSettings

from .conftest import Stack

pytestmark = pytest.mark.e2e

# One admin route with a JSON body and one route with a path parameter per service.
BODIES: dict[str, tuple[str, dict[str, Any]]] = {
    "ingest": ("/v1/sources", {"name": "shop"}),
    "profile": (
        "/v1/computed-traits",
        {"key": "orders_count", "aggregation": "count", "event_name": "Order"},
    ),
    "segment": (
        "/v1/segments",
        {"key": "vip", "name": "VIP", "rule": {"trait": "tier", "op": "eq", "value": "a"}},
    ),
    "campaign": ("/v1/campaigns", {"name": "Spring", "segment": "vip", "channel": "email"}),
    "consent": (
        "/v1/consents",
        {
            "profile_id": "p1",
            "purpose": "email_marketing",
            "channel": "email",
            "status": "granted",
            "source": "web",
        },
    ),
}
PATHS = {
    "ingest": "/v1/sources/src_a%00b",
    "profile": "/v1/profiles/user_id:a%00b",
    "segment": "/v1/segments/a%00b",
    "campaign": "/v1/campaigns/a%00b",
    "consent": "/v1/consents/a%00b",
}


def with_text(body: dict[str, Any], text: str) -> dict[str, Any]:
    """The body with `text` appended to its first string field."""
    name = next(key for key, value in body.items() if isinstance(value, str))
    return {**body, name: body[name] + text}


async def post_raw(http: httpx.AsyncClient, stack: Stack, url: str, body: bytes) -> httpx.Response:
    """Send JSON text as it is, as the admin."""
    return await http.post(url, content=body, headers={**stack.admin(), "Content-Type": "application/json"})


def assert_refused(response: httpx.Response, code: str, *, where: str | None = None) -> None:
    assert response.status_code == 400, response.text[:300]
    error = response.json()["error"]
    assert error["code"] == code, error
    assert error["message"]
    if where is not None:
        assert where in error["details"].values(), error


@pytest.fixture(params=list(BODIES))
def create_route(request: pytest.FixtureRequest, stack: Stack) -> tuple[str, dict[str, Any]]:
    """The URL of one service's admin route with a JSON body, and a body for it."""
    path, body = BODIES[request.param]
    return stack.url(request.param) + path, body


async def test_a_nul_or_a_lone_surrogate_in_a_body_is_400(
    stack: Stack, http: httpx.AsyncClient, create_route: tuple[str, dict[str, Any]]
) -> None:
    url, body = create_route
    name = next(key for key, value in body.items() if isinstance(value, str))
    response = await http.post(url, json=with_text(body, "\u0000x"), headers=stack.admin())
    assert_refused(response, "nul_character", where=name)
    # A lone surrogate travels only as a JSON escape, which json.dumps writes for it.
    response = await post_raw(http, stack, url, json.dumps(with_text(body, "\ud800x")).encode())
    assert_refused(response, "invalid_encoding", where=name)
    # And encoded as if it were a character, which is not UTF-8.
    raw = json.dumps(with_text(body, "\udfffx"), ensure_ascii=False).encode("utf-8", "surrogatepass")
    assert_refused(await post_raw(http, stack, url, raw), "invalid_encoding", where=name)
    nested: dict[str, Any] = {"leaf": "\u0000"}
    response = await http.post(url, json={**body, "extra": {"deep": [nested]}}, headers=stack.admin())
    assert_refused(response, "nul_character", where="extra.deep[0].leaf")


@pytest.mark.parametrize("service", list(PATHS))
async def test_a_nul_in_a_path_or_a_query_is_400(stack: Stack, http: httpx.AsyncClient, service: str) -> None:
    response = await http.get(stack.url(service) + PATHS[service], headers=stack.admin())
    assert_refused(response, "nul_character")
    path, _ = BODIES[service]
    response = await http.get(stack.url(service) + path + "?cursor=a%00b", headers=stack.admin())
    if response.status_code != 405:  # a create-only route has no list to page
        assert_refused(response, "nul_character", where="cursor")


async def test_deep_bodies_and_huge_integers_are_400_with_the_error_body(
    stack: Stack, http: httpx.AsyncClient, create_route: tuple[str, dict[str, Any]]
) -> None:
    url, _ = create_route
    for levels in (100, 2000, 100_000):
        response = await post_raw(http, stack, url, b'{"extra": ' + b"[" * levels + b"]" * levels + b"}")
        assert response.status_code == 400, (levels, response.text[:300])
        assert response.json()["error"]["code"] == "too_deep"
    for digits in (30, 4301, 100_000):
        response = await post_raw(http, stack, url, b'{"extra": ' + b"9" * digits + b"}")
        assert response.status_code == 400, (digits, response.text[:300])
        assert response.json()["error"]["code"] == "number_out_of_range"


async def test_a_valid_body_is_still_taken(stack: Stack, http: httpx.AsyncClient) -> None:
    response = await http.post(
        stack.url("ingest") + "/v1/sources", json={"name": "Café \U0001f600 [{}]"}, headers=stack.admin()
    )
    assert response.status_code == 201, response.text
    assert response.json()["name"] == "Café \U0001f600 [{}]"


async def test_a_body_past_the_size_limit_is_413_with_the_error_body(
    stack: Stack, http: httpx.AsyncClient, create_route: tuple[str, dict[str, Any]]
) -> None:
    url, body = create_route
    limit = PlatformSettings.model_fields["max_body_bytes"].default  # the session's services keep it
    huge = json.dumps(with_text(body, "x" * limit)).encode()
    declared = await post_raw(http, stack, url, huge)

    async def chunks() -> AsyncIterator[bytes]:
        for start in range(0, len(huge), 65536):
            yield huge[start : start + 65536]

    # Sent without a Content-Length (chunked), the body is refused once it passes the limit.
    streamed = await http.post(
        url, content=chunks(), headers={**stack.admin(), "Content-Type": "application/json"}
    )
    for response in (declared, streamed):
        assert response.status_code == 413, response.text[:300]
        error = response.json()["error"]
        assert error["code"] == "payload_too_large"
        assert error["details"] == {"max_bytes": limit}
