"""What ingest answers to bad input: a clear 4xx with the error body, never a 5xx."""

from __future__ import annotations

import httpx
import pytest

from .conftest import Stack

pytestmark = pytest.mark.e2e


async def test_bad_tracking_calls_get_clear_4xx(stack: Stack, http: httpx.AsyncClient) -> None:
    url = f"{stack.url('ingest')}/v1/track"
    auth = (stack.write_key, "")
    cases = [
        (dict(content=b"{oops", auth=auth), 400, "invalid_json"),
        (dict(content=b"\xff\xfe{}", auth=auth), 400, "invalid_encoding"),
        (dict(json=[1, 2], auth=auth), 400, "invalid_json"),
        (dict(json={"event": "X"}, auth=auth), 400, "no_user_anon_id"),
        (dict(json={"userId": "u"}, auth=auth), 400, "missing_event"),
        (
            dict(json={"userId": "u", "event": "X", "messageId": "m" * 101}, auth=auth),
            400,
            "invalid_message_id",
        ),
        (
            dict(json={"userId": "u", "event": "X", "timestamp": "yesterday"}, auth=auth),
            400,
            "invalid_timestamp",
        ),
        (
            dict(json={"userId": "u", "event": "X", "properties": {"p": "x" * 40_000}}, auth=auth),
            413,
            "payload_too_large",
        ),
        (dict(json={"userId": "u", "event": "X"}), 401, "missing_write_key"),
        (dict(json={"userId": "u", "event": "X"}, auth=("wk_wrong", "")), 401, "invalid_write_key"),
    ]
    for kwargs, status, code in cases:
        response = await http.post(url, **kwargs)  # type: ignore[arg-type]
        assert response.status_code == status, (code, response.text)
        assert response.json()["error"]["code"] == code


async def test_write_key_in_the_body_is_accepted(stack: Stack, http: httpx.AsyncClient) -> None:
    response = await http.post(
        f"{stack.url('ingest')}/v1/track",
        json={"writeKey": stack.write_key, "anonymousId": "anon-1", "event": "Page Loaded"},
    )
    assert response.status_code == 200
