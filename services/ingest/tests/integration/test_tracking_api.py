"""The tracking API over HTTP: every endpoint, every body form, every limit and every kind of bad input."""

from __future__ import annotations

import asyncio
import gzip
import json
from typing import Any

import httpx
import orjson
import pytest
from cdp_common.testing import PlatformUnderTest

from ..conftest import Ingest, message_id, read_events

pytestmark = pytest.mark.e2e

CALLS: dict[str, dict[str, Any]] = {
    "identify": {"userId": "u-1", "traits": {"email": "ada@example.com"}},
    "track": {"anonymousId": "a-1", "event": "Signed Up", "properties": {"plan": "pro"}},
    "page": {"anonymousId": "a-1", "name": "Home", "properties": {"path": "/"}},
    "screen": {"userId": "u-1", "name": "Settings"},
    "group": {"userId": "u-1", "groupId": "g-1", "traits": {"name": "ACME"}},
    "alias": {"previousId": "a-1", "userId": "u-1"},
}
SHORT = {"identify": "i", "track": "t", "page": "p", "screen": "s", "group": "g", "alias": "a"}


async def test_every_call_type_on_its_long_and_short_path_reaches_kafka(
    ingest: Ingest, platform: PlatformUnderTest, http: httpx.AsyncClient
) -> None:
    sent: dict[str, str] = {}
    for call_type, call in CALLS.items():
        for path in (call_type, SHORT[call_type]):
            mid = message_id()
            response = await http.post(
                f"{ingest.url}/v1/{path}",
                json={**call, "messageId": mid},
                auth=(ingest.write_key, ""),
            )
            assert response.status_code == 200, response.text
            assert response.json() == {"success": True}
            sent[mid] = call_type
    events = await read_events(platform, sent)
    for mid, call_type in sent.items():
        data = events[mid].data
        assert data.type == call_type
        assert data.context["ip"] == "127.0.0.1"
        assert data.sourceId.startswith("src_")
    group = next(events[m].data for m, t in sent.items() if t == "group")
    assert (group.groupId, group.traits) == ("g-1", {"name": "ACME"})
    alias = next(events[m].data for m, t in sent.items() if t == "alias")
    assert (alias.previousId, alias.userId) == ("a-1", "u-1")


async def test_browser_bodies_text_plain_gzip_and_write_key_in_the_body(
    ingest: Ingest, platform: PlatformUnderTest, http: httpx.AsyncClient
) -> None:
    url = f"{ingest.url}/v1/t"
    beacon = message_id()
    # What navigator.sendBeacon sends: text/plain, no Authorization, the write key in the body.
    response = await http.post(
        url,
        content=json.dumps(
            {"writeKey": ingest.write_key, "anonymousId": "a", "event": "Left", "messageId": beacon}
        ),
        headers={"Content-Type": "text/plain;charset=UTF-8", "Origin": "https://shop.example.com"},
    )
    assert response.status_code == 200
    assert response.headers["access-control-allow-origin"] == "*"
    zipped = message_id()
    response = await http.post(
        url,
        content=gzip.compress(
            json.dumps({"anonymousId": "a", "event": "Zipped", "messageId": zipped}).encode()
        ),
        headers={"Content-Encoding": "gzip", "Content-Type": "application/json"},
        auth=(ingest.write_key, ""),
    )
    assert response.status_code == 200, response.text
    events = await read_events(platform, [beacon, zipped])
    assert events[zipped].data.event == "Zipped"
    assert "writeKey" not in events[beacon].data.model_dump()


async def test_a_refusal_reaches_the_browser_that_sent_the_call(
    ingest: Ingest, http: httpx.AsyncClient
) -> None:
    response = await http.post(
        f"{ingest.url}/v1/t",
        content=b'{"writeKey": "' + ingest.write_key.encode() + b'", "event": "No user"}',
        headers={"Content-Type": "text/plain", "Origin": "https://shop.example.com"},
    )
    assert response.status_code == 400
    assert response.json()["error"]["code"] == "no_user_anon_id"
    assert response.headers["access-control-allow-origin"] == "*"


async def test_cors_preflight_is_answered(ingest: Ingest, http: httpx.AsyncClient) -> None:
    response = await http.options(
        f"{ingest.url}/v1/batch",
        headers={
            "Origin": "https://shop.example.com",
            "Access-Control-Request-Method": "POST",
            "Access-Control-Request-Headers": "content-type,authorization",
        },
    )
    assert response.status_code == 200
    assert response.headers["access-control-allow-origin"] == "*"
    assert "POST" in response.headers["access-control-allow-methods"]


async def test_the_settings_document_points_analytics_js_back_here(
    ingest: Ingest, http: httpx.AsyncClient
) -> None:
    response = await http.get(f"{ingest.url}/v1/projects/{ingest.write_key}/settings")
    assert response.status_code == 200
    segment = response.json()["integrations"]["Segment.io"]
    assert segment["apiHost"] == ingest.url.removeprefix("http://") + "/v1"
    assert segment["protocol"] == "http"
    assert segment["apiKey"] == ingest.write_key
    unknown = await http.get(f"{ingest.url}/v1/projects/wk_nope/settings")
    assert unknown.status_code == 404
    assert unknown.json()["error"]["code"] == "source_not_found"


async def test_external_ids_alone_identify_an_event_and_key_it(
    ingest: Ingest, platform: PlatformUnderTest, http: httpx.AsyncClient
) -> None:
    mid = message_id()
    response = await http.post(
        f"{ingest.url}/v1/track",
        json={
            "event": "Email Opened",
            "messageId": mid,
            "context": {"externalIds": [{"id": "Ada@Example.com", "type": "email", "collection": "users"}]},
        },
        auth=(ingest.write_key, ""),
    )
    assert response.status_code == 200, response.text
    events = await read_events(platform, [mid])
    assert events[mid].subject == "email:ada@example.com"


async def test_the_forwarded_for_header_of_an_untrusted_peer_is_ignored(
    ingest: Ingest, platform: PlatformUnderTest, http: httpx.AsyncClient
) -> None:
    mid = message_id()
    response = await http.post(
        f"{ingest.url}/v1/track",
        json={"userId": "u", "event": "X", "messageId": mid},
        headers={"X-Forwarded-For": "198.51.100.77"},
        auth=(ingest.write_key, ""),
    )
    assert response.status_code == 200
    assert (await read_events(platform, [mid]))[mid].data.context["ip"] == "127.0.0.1"


def _deep(levels: int) -> dict[str, Any]:
    value: dict[str, Any] = {"leaf": 1}
    for _ in range(levels):
        value = {"n": value}
    return value


def _nested(opening: bytes, closing: bytes, levels: int, *, user: bytes = b"u") -> bytes:
    """A track call whose property nests `levels` containers deep (without parsing it, which would fail)."""
    value = opening * levels + (b"1" if opening.endswith(b":") else b"") + closing * levels
    return b'{"userId": "' + user + b'", "event": "X", "properties": {"a": ' + value + b"}}"


def _number(digits: int, *, sign: bytes = b"", user: bytes = b"u") -> bytes:
    """A track call with an integer property of `digits` digits."""
    return b'{"userId": "' + user + b'", "event": "X", "properties": {"n": ' + sign + b"9" * digits + b"}}"


BAD_SINGLE_CALLS: list[tuple[str, dict[str, Any], int, str]] = [
    ("malformed JSON", {"content": b"{oops"}, 400, "invalid_json"),
    ("not an object", {"json": [1, 2]}, 400, "invalid_json"),
    ("invalid UTF-8", {"content": b'{"userId": "\xff\xfe", "event": "X"}'}, 400, "invalid_encoding"),
    ("lone surrogate", {"content": b'{"userId": "\\ud800", "event": "X"}'}, 400, "invalid_encoding"),
    (
        "NaN",
        {"content": b'{"userId": "u", "event": "X", "properties": {"a": NaN}}'},
        400,
        "non_finite_number",
    ),
    (
        "Infinity",
        {"content": b'{"userId": "u", "event": "X", "properties": {"a": -Infinity}}'},
        400,
        "non_finite_number",
    ),
    (
        "huge number",
        {"content": b'{"userId": "u", "event": "X", "properties": {"a": 1e999}}'},
        400,
        "non_finite_number",
    ),
    ("2,000 levels of arrays", {"content": _nested(b"[", b"]", 2000)}, 400, "too_deep"),
    ("2,000 levels of objects", {"content": _nested(b'{"n":', b"}", 2000)}, 400, "too_deep"),
    ("100,000 levels, over 32 KB", {"content": _nested(b"[", b"]", 100_000)}, 413, "payload_too_large"),
    ("integer of 4,301 digits", {"content": _number(4301)}, 400, "number_out_of_range"),
    ("negative integer of 4,301 digits", {"content": _number(4301, sign=b"-")}, 400, "number_out_of_range"),
    ("integer of 100,000 digits, over 32 KB", {"content": _number(100_000)}, 413, "payload_too_large"),
    (
        "NUL in a property name",
        {"content": b'{"userId": "u", "event": "X", "properties": {"a\\u0000": 1}}'},
        400,
        "nul_character",
    ),
    ("NUL", {"json": {"userId": "u", "event": "X", "properties": {"a": "x\u0000"}}}, 400, "nul_character"),
    (
        "integer beyond 64 bits",
        {"content": b'{"userId": "u", "event": "X", "properties": {"n": [1, 123456789012345678901234]}}'},
        400,
        "number_out_of_range",
    ),
    ("too deep", {"json": {"userId": "u", "event": "X", "properties": _deep(20)}}, 400, "too_deep"),
    (
        "long string",
        {"json": {"userId": "u", "event": "X", "properties": {"a": "x" * 9000}}},
        400,
        "string_too_long",
    ),
    (
        "too many properties",
        {"json": {"userId": "u", "event": "X", "properties": {f"p{i}": i for i in range(300)}}},
        400,
        "too_many_properties",
    ),
    (
        "future",
        {"json": {"userId": "u", "event": "X", "timestamp": "2099-01-01T00:00:00Z"}},
        400,
        "timestamp_out_of_range",
    ),
    ("no identity", {"json": {"event": "X"}}, 400, "no_user_anon_id"),
    ("no event", {"json": {"userId": "u"}}, 400, "missing_event"),
    (
        "bad order",
        {"json": {"userId": "u", "event": "Order Completed", "properties": {"total": 3}}},
        400,
        "invalid_ecommerce_event",
    ),
    (
        "over 32 KB",
        {"json": {"userId": "u", "event": "X", "properties": {"p": ["x" * 4000] * 9}}},
        413,
        "payload_too_large",
    ),
    (
        "form body",
        {"content": b"--x\r\n", "headers": {"Content-Type": "multipart/form-data; boundary=x"}},
        415,
        "unsupported_media_type",
    ),
    ("brotli", {"content": b"xx", "headers": {"Content-Encoding": "br"}}, 415, "unsupported_encoding"),
    ("bad gzip", {"content": b"not gzip", "headers": {"Content-Encoding": "gzip"}}, 400, "invalid_gzip"),
    (
        "gzip bomb",
        {
            "content": gzip.compress(b'{"userId": "u", "event": "X", "p": "' + b"0" * 5_000_000 + b'"}'),
            "headers": {"Content-Encoding": "gzip"},
        },
        413,
        "payload_too_large",
    ),
]


@pytest.mark.parametrize(
    ("what", "request_args", "status", "code"), BAD_SINGLE_CALLS, ids=[c[0] for c in BAD_SINGLE_CALLS]
)
async def test_bad_single_calls_get_a_4xx_that_says_what_is_wrong(
    ingest: Ingest, http: httpx.AsyncClient, what: str, request_args: dict[str, Any], status: int, code: str
) -> None:
    response = await http.post(f"{ingest.url}/v1/track", auth=(ingest.write_key, ""), **request_args)
    assert response.status_code == status, (what, response.text)
    error = response.json()["error"]
    assert error["code"] == code
    assert error["message"]


async def test_integers_are_kept_exactly_and_those_beyond_64_bits_are_refused_alone(
    ingest: Ingest, platform: PlatformUnderTest, http: httpx.AsyncClient
) -> None:
    exact, refused = message_id(), message_id()
    body = (
        b'{"batch": ['
        b'{"type": "track", "userId": "u", "event": "X", "messageId": "' + exact.encode() + b'",'
        b' "properties": {"max": 18446744073709551615, "min": -9223372036854775808,'
        b' "order": "12345678901234567890123456", "small": 7}},'
        b'{"type": "track", "userId": "u", "event": "X", "messageId": "' + refused.encode() + b'",'
        b' "properties": {"deep": {"n": -9223372036854775809}}}'
        b"]}"
    )
    response = await http.post(
        f"{ingest.url}/v1/batch",
        content=body,
        headers={"Content-Type": "application/json"},
        auth=(ingest.write_key, ""),
    )
    assert response.status_code == 200, response.text
    (rejection,) = response.json()["rejected"]
    assert rejection["index"] == 1
    assert rejection["error"]["code"] == "number_out_of_range"
    assert rejection["error"]["details"]["field"] == "properties.deep.n"
    stored = (await read_events(platform, [exact]))[exact].data.properties
    assert stored == {
        "max": 18446744073709551615,
        "min": -9223372036854775808,
        "order": "12345678901234567890123456",
        "small": 7,
    }
    assert type(stored["max"]) is int


async def post_batch(http: httpx.AsyncClient, ingest: Ingest, items: list[bytes]) -> httpx.Response:
    """Send items, each JSON text as it is, in one batch."""
    return await http.post(
        f"{ingest.url}/v1/batch",
        content=b'{"batch": [' + b", ".join(items) + b"]}",
        headers={"Content-Type": "application/json"},
        auth=(ingest.write_key, ""),
    )


async def test_a_batch_keeps_its_valid_items_whatever_the_others_hold(
    ingest: Ingest, platform: PlatformUnderTest, http: httpx.AsyncClient
) -> None:
    first, last = message_id(), message_id()
    hostile = [
        (_nested(b"[", b"]", 2000), "too_deep"),
        (_nested(b'{"n":', b"}", 2000), "too_deep"),
        (_nested(b"[", b"]", 100_000), "too_deep"),
        (_number(4301), "number_out_of_range"),
        (_number(100_000, sign=b"-"), "number_out_of_range"),
        (b'{"userId": "u", "event": "X", "properties": {"a": "x\\u0000y"}}', "nul_character"),
        (b'{"userId": "u", "event": "X", "properties": {"a": "x\\udc00y"}}', "invalid_encoding"),
        (b'{"userId": "u", "event": "X", "properties": {"a": 1e999}}', "non_finite_number"),
    ]
    items = [b'{"type": "track", "userId": "u", "event": "First", "messageId": "' + first.encode() + b'"}']
    items += [b'{"type": "track", ' + call.removeprefix(b"{") for call, _ in hostile]
    items.append(b'{"type": "track", "userId": "u", "event": "Last", "messageId": "' + last.encode() + b'"}')
    response = await post_batch(http, ingest, items)
    assert response.status_code == 200, response.text[:500]
    answer = response.json()
    assert answer["accepted"] == 2
    assert [(r["index"], r["error"]["code"]) for r in answer["rejected"]] == [
        (index, code) for index, (_, code) in enumerate(hostile, start=1)
    ]
    assert all(r["error"]["details"]["field"].startswith("properties.") for r in answer["rejected"])
    events = await read_events(platform, [first, last])
    assert (events[first].data.event, events[last].data.event) == ("First", "Last")


async def test_a_batch_of_only_hostile_items_is_refused_with_each_reason(
    ingest: Ingest, http: httpx.AsyncClient
) -> None:
    items = [
        b'{"type": "track", ' + _nested(b"[", b"]", 5000).removeprefix(b"{"),
        b'{"type": "track", ' + _number(5000).removeprefix(b"{"),
    ]
    response = await post_batch(http, ingest, items)
    assert response.status_code == 400, response.text[:500]
    error = response.json()["error"]
    assert error["code"] == "no_valid_event"
    assert [r["error"]["code"] for r in error["details"]["rejected"]] == ["too_deep", "number_out_of_range"]


async def test_unknown_and_missing_write_keys_get_401(ingest: Ingest, http: httpx.AsyncClient) -> None:
    url = f"{ingest.url}/v1/identify"
    cases = [
        ({}, "missing_write_key"),
        ({"auth": ("wk_wrong", "")}, "invalid_write_key"),
        ({"headers": {"Authorization": "Basic %%%"}}, "invalid_write_key"),
    ]
    for kwargs, code in cases:
        response = await http.post(url, json={"userId": "u"}, **kwargs)  # type: ignore[arg-type]
        assert response.status_code == 401
        assert response.json()["error"]["code"] == code


async def test_a_batch_accepts_its_valid_items_and_says_which_were_refused(
    ingest: Ingest, platform: PlatformUnderTest, http: httpx.AsyncClient
) -> None:
    good = [message_id() for _ in range(3)]
    body = {
        "batch": [
            {"type": "track", "userId": "u", "event": "A", "messageId": good[0]},
            {"type": "track", "userId": "u", "messageId": message_id()},
            {"type": "identify", "anonymousId": "a", "traits": {"x": 1}, "messageId": good[1]},
            {"type": "nonsense", "userId": "u"},
            "not an object",
            {"type": "page", "userId": "u", "properties": {"big": "x" * 8000, "more": ["y" * 8000] * 4}},
            {"type": "screen", "userId": "u", "name": "S", "messageId": good[2], "context": {"locale": "en"}},
        ],
        "context": {"library": {"name": "test"}, "locale": "de"},
        "sentAt": "2026-01-01T00:00:00Z",
    }
    for path in ("batch", "b", "import"):
        response = await http.post(f"{ingest.url}/v1/{path}", json=body, auth=(ingest.write_key, ""))
        assert response.status_code == 200, response.text
        answer = response.json()
        assert answer["success"] is True
        assert answer["accepted"] == 3
        assert [(r["index"], r["error"]["code"]) for r in answer["rejected"]] == [
            (1, "missing_event"),
            (3, "invalid_type"),
            (4, "invalid_item"),
            (5, "event_too_large"),
        ]
        assert answer["rejected"][0]["error"]["details"] == {"field": "event"}
    events = await read_events(platform, good)
    assert events[good[0]].data.context["library"] == {"name": "test"}
    assert events[good[2]].data.context["locale"] == "en"
    assert events[good[1]].data.sentAt is not None


@pytest.mark.parametrize(
    ("body", "status", "code"),
    [
        ({"batch": [{"type": "track", "userId": "u"}]}, 400, "no_valid_event"),
        ({"batch": []}, 400, "no_valid_event"),
        ({"batch": {"type": "track"}}, 400, "invalid_batch"),
        ({"batch": [{"type": "track", "userId": "u", "event": "E"}] * 2501}, 413, "too_many_events"),
        (
            {"batch": [{"type": "track", "userId": "u", "event": "E", "properties": {"p": "x" * 8000}}] * 70},
            413,
            "payload_too_large",
        ),
    ],
)
async def test_batches_that_cannot_be_taken_are_refused(
    ingest: Ingest, http: httpx.AsyncClient, body: dict[str, Any], status: int, code: str
) -> None:
    response = await http.post(
        f"{ingest.url}/v1/batch", content=orjson.dumps(body), auth=(ingest.write_key, "")
    )
    assert response.status_code == status, response.text
    assert response.json()["error"]["code"] == code
    if code == "no_valid_event":
        assert isinstance(response.json()["error"]["details"]["rejected"], list)


async def test_a_resent_message_id_keeps_its_envelope_id(
    ingest: Ingest, platform: PlatformUnderTest, http: httpx.AsyncClient
) -> None:
    mid = message_id()
    for _ in range(2):
        response = await http.post(
            f"{ingest.url}/v1/track",
            json={"userId": "u", "event": "E", "messageId": mid},
            auth=(ingest.write_key, ""),
        )
        assert response.status_code == 200
    envelopes = await read_events(platform, [mid])
    assert envelopes[mid].id  # both copies carry this id; consumers apply it once


async def test_metrics_count_accepted_and_refused_events_without_personal_data(
    ingest: Ingest, http: httpx.AsyncClient
) -> None:
    await http.post(
        f"{ingest.url}/v1/track",
        json={"userId": "secret-user", "event": "E"},
        auth=(ingest.write_key, ""),
    )
    await http.post(f"{ingest.url}/v1/track", json={"userId": "secret-user"}, auth=(ingest.write_key, ""))
    text = (await http.get(f"{ingest.url}/metrics")).text
    assert 'cdp_ingest_events_accepted_total{source="src_' in text
    assert 'reason="missing_event"' in text
    assert 'cdp_ingest_request_duration_seconds_bucket{endpoint="track"' in text
    assert "cdp_ingest_produce_duration_seconds_count" in text
    assert 'cdp_ingest_payload_size_bytes_bucket{endpoint="track"' in text
    assert "secret-user" not in text
    # The tracking paths skip FastAPI's routing but are still counted by their route template.
    assert 'cdp_http_requests_total{method="POST",route="/v1/track",service="ingest",status="200"}' in text
    assert 'cdp_http_requests_total{method="POST",route="/v1/track",service="ingest",status="400"}' in text


async def test_concurrent_requests_share_record_batches_and_keep_each_users_order(
    ingest: Ingest, platform: PlatformUnderTest, http: httpx.AsyncClient
) -> None:
    users = [f"order-{message_id()}" for _ in range(7)]

    def batch(request: int) -> list[dict[str, Any]]:
        return [
            {
                "type": "track",
                "userId": users[index % len(users)],
                "event": "Step",
                "messageId": message_id(),
                "properties": {"request": request, "step": index},
            }
            for index in range(120)
        ]

    batches = [batch(request) for request in range(6)]
    singles = [
        {"userId": users[index % len(users)], "event": "Single", "messageId": message_id()}
        for index in range(40)
    ]
    answers = await asyncio.gather(
        *(
            http.post(f"{ingest.url}/v1/batch", json={"batch": b}, auth=(ingest.write_key, ""))
            for b in batches
        ),
        *(http.post(f"{ingest.url}/v1/track", json=s, auth=(ingest.write_key, "")) for s in singles),
    )
    assert [a.status_code for a in answers] == [200] * len(answers), [
        a.text for a in answers if a.status_code != 200
    ]
    assert all(a.json()["accepted"] == 120 for a in answers[: len(batches)])
    sent = [item["messageId"] for b in batches for item in b] + [s["messageId"] for s in singles]
    events = await read_events(platform, sent)
    assert set(events) == set(sent)
    # A user's events sit in one partition, read in offset order: within a request they keep the sent order.
    read_order = list(events.values())
    for request in range(len(batches)):
        for user in users:
            steps = [
                e.data.properties["step"]
                for e in read_order
                if e.data.userId == user and e.data.properties.get("request") == request
            ]
            assert steps == sorted(steps)
            assert len(steps) > 0
