"""Sources (create, rotate, disable), scopes, the rate limit, tracking plans and transactions over HTTP."""

from __future__ import annotations

import json
import secrets
from typing import Any

import httpx
import pytest
from cdp_common.testing import PlatformUnderTest, wait_for

from ..conftest import Ingest, message_id, read_events

pytestmark = pytest.mark.e2e


async def token_with(ingest: Ingest, http: httpx.AsyncClient, scopes: list[str]) -> dict[str, str]:
    """Issue a token with scopes and wait until ingest's replica knows it."""
    response = await http.post(
        f"{ingest.url}/v1/tokens", json={"name": "t", "scopes": scopes}, headers=ingest.admin()
    )
    assert response.status_code == 201
    headers = {"Authorization": f"Bearer {response.json()['token']}"}

    async def known() -> bool:
        return (await http.get(f"{ingest.url}/v1/sources", headers=headers)).status_code != 401

    await wait_for(known, what="the token to replicate")
    return headers


async def send(
    http: httpx.AsyncClient, ingest: Ingest, write_key: str, call: dict[str, Any]
) -> httpx.Response:
    return await http.post(f"{ingest.url}/v1/track", json=call, auth=(write_key, ""))


async def test_sources_are_created_rotated_disabled_and_enabled_with_sources_write(
    ingest: Ingest, http: httpx.AsyncClient
) -> None:
    writer = await token_with(ingest, http, ["sources:write"])
    created = await http.post(f"{ingest.url}/v1/sources", json={"name": "web"}, headers=writer)
    assert created.status_code == 201
    source = created.json()
    key, sid = source["write_key"], source["id"]
    assert (await send(http, ingest, key, {"userId": "u", "event": "E"})).status_code == 200
    fetched = (await http.get(f"{ingest.url}/v1/sources/{sid}", headers=writer)).json()
    assert fetched["name"] == "web"
    assert "write_key" not in fetched
    listed = (await http.get(f"{ingest.url}/v1/sources?limit=1000", headers=writer)).json()
    assert sid in {item["id"] for item in listed["items"]}

    rotated = await http.post(f"{ingest.url}/v1/sources/{sid}/rotate", headers=writer)
    assert rotated.status_code == 200
    new_key = rotated.json()["write_key"]
    assert new_key != key
    old = await send(http, ingest, key, {"userId": "u", "event": "E"})
    assert (old.status_code, old.json()["error"]["code"]) == (401, "invalid_write_key")
    assert (await send(http, ingest, new_key, {"userId": "u", "event": "E"})).status_code == 200

    disabled = await http.post(f"{ingest.url}/v1/sources/{sid}/disable", headers=writer)
    assert disabled.json()["disabled_at"] is not None
    assert (await send(http, ingest, new_key, {"userId": "u", "event": "E"})).status_code == 401
    settings = await http.get(f"{ingest.url}/v1/projects/{new_key}/settings")
    assert settings.status_code == 404
    await http.post(f"{ingest.url}/v1/sources/{sid}/enable", headers=writer)
    assert (await send(http, ingest, new_key, {"userId": "u", "event": "E"})).status_code == 200


async def test_the_sources_api_refuses_missing_and_narrow_tokens_and_unknown_ids(
    ingest: Ingest, http: httpx.AsyncClient
) -> None:
    reader = await token_with(ingest, http, ["profiles:read"])
    assert (await http.post(f"{ingest.url}/v1/sources", json={"name": "x"})).status_code == 401
    forbidden = await http.post(f"{ingest.url}/v1/sources", json={"name": "x"}, headers=reader)
    assert (forbidden.status_code, forbidden.json()["error"]["code"]) == (403, "forbidden")
    for method, path in (("GET", ""), ("POST", "/rotate"), ("POST", "/disable"), ("GET", "/tracking-plan")):
        response = await http.request(
            method, f"{ingest.url}/v1/sources/src_nope{path}", headers=ingest.admin()
        )
        assert response.status_code == 404, path
    bad = await http.post(f"{ingest.url}/v1/sources", json={"name": ""}, headers=ingest.admin())
    assert bad.status_code == 422


async def test_a_write_key_over_its_rate_gets_429_with_retry_after(
    ingest: Ingest, http: httpx.AsyncClient, source: dict[str, Any]
) -> None:
    changed = await http.patch(
        f"{ingest.url}/v1/sources/{source['id']}",
        json={"rate_limit_per_s": 0.2, "rate_limit_burst": 2},
        headers=ingest.admin(),
    )
    assert changed.status_code == 200
    assert changed.json()["rate_limit_burst"] == 2
    answers = [await send(http, ingest, source["write_key"], {"userId": "u", "event": "E"}) for _ in range(3)]
    assert [a.status_code for a in answers] == [200, 200, 429]
    assert answers[2].json()["error"]["code"] == "rate_limited"
    assert int(answers[2].headers["retry-after"]) >= 1
    other = await send(http, ingest, ingest.write_key, {"userId": "u", "event": "E"})
    assert other.status_code == 200, "another write key keeps its own budget"
    metrics = (await http.get(f"{ingest.url}/metrics")).text
    assert f'cdp_ingest_rate_limited_total{{source="{source["id"]}"}} 1.0' in metrics


PLAN = {
    "events": {
        "Order Completed": {
            "type": "object",
            "properties": {"order_id": {"type": "string"}, "total": {"type": "number"}},
            "required": ["order_id"],
        }
    },
    "identify": {"type": "object", "properties": {"email": {"type": "string"}}},
}


async def put_plan(http: httpx.AsyncClient, ingest: Ingest, source_id: str, mode: str) -> None:
    response = await http.put(
        f"{ingest.url}/v1/sources/{source_id}/tracking-plan",
        json={**PLAN, "mode": mode},
        headers=ingest.admin(),
    )
    assert response.status_code == 200, response.text
    assert response.json()["mode"] == mode


async def test_tracking_plan_modes_flag_omit_and_block(
    ingest: Ingest, platform: PlatformUnderTest, http: httpx.AsyncClient, source: dict[str, Any]
) -> None:
    key, sid = source["write_key"], source["id"]
    await put_plan(http, ingest, sid, "flag")
    flagged = message_id()
    response = await send(
        http,
        ingest,
        key,
        {
            "userId": "u",
            "event": "Order Completed",
            "messageId": flagged,
            "properties": {"order_id": "o1", "total": 5, "coupon": "x"},
        },
    )
    assert response.status_code == 200
    assert (
        await send(http, ingest, key, {"userId": "u", "event": "Unplanned", "messageId": message_id()})
    ).status_code == 200
    violations = (await http.get(f"{ingest.url}/v1/sources/{sid}/violations", headers=ingest.admin())).json()
    assert [(v["kind"], v["event"], v["refused"]) for v in violations["items"]] == [
        ("unplanned_event", "Unplanned", False)
    ]

    await put_plan(http, ingest, sid, "omit")
    omitted = message_id()
    response = await send(
        http,
        ingest,
        key,
        {
            "userId": "u",
            "event": "Order Completed",
            "messageId": omitted,
            "properties": {"order_id": "o2", "total": 5, "coupon": "x"},
        },
    )
    assert response.status_code == 200

    await put_plan(http, ingest, sid, "block")
    blocked = await send(http, ingest, key, {"userId": "u", "event": "Unplanned"})
    assert (blocked.status_code, blocked.json()["error"]["code"]) == (400, "unplanned_event")
    broken = await send(
        http, ingest, key, {"userId": "u", "event": "Order Completed", "properties": {"order_id": 7}}
    )
    assert broken.status_code == 400
    assert broken.json()["error"]["code"] == "tracking_plan_violation"
    assert broken.json()["error"]["details"] == {"field": "properties.order_id"}
    batch = await http.post(
        f"{ingest.url}/v1/batch",
        json={
            "batch": [
                {"type": "track", "userId": "u", "event": "Unplanned"},
                {"type": "identify", "userId": "u", "traits": {"email": "a@b.c"}},
            ]
        },
        auth=(key, ""),
    )
    assert batch.json()["accepted"] == 1
    assert batch.json()["rejected"][0]["error"]["code"] == "unplanned_event"

    events = await read_events(platform, [flagged, omitted])
    assert events[flagged].data.properties["coupon"] == "x"
    assert events[omitted].data.properties == {"order_id": "o2", "total": 5}
    violations = (
        await http.get(f"{ingest.url}/v1/sources/{sid}/violations?limit=2", headers=ingest.admin())
    ).json()
    assert [v["refused"] for v in violations["items"]] == [True, True]
    assert violations["next"] is not None
    metrics = (await http.get(f"{ingest.url}/metrics")).text
    assert (
        f'cdp_ingest_tracking_plan_violations_total{{kind="unplanned_event",refused="true",source="{sid}"}}'
        in metrics
    )


async def test_an_invalid_tracking_plan_is_refused(
    ingest: Ingest, http: httpx.AsyncClient, source: dict[str, Any]
) -> None:
    url = f"{ingest.url}/v1/sources/{source['id']}/tracking-plan"
    bad_schema = await http.put(
        url, json={"mode": "flag", "events": {"X": {"type": 12}}}, headers=ingest.admin()
    )
    assert (bad_schema.status_code, bad_schema.json()["error"]["code"]) == (422, "invalid_tracking_plan")
    bad_mode = await http.put(url, json={"mode": "sometimes"}, headers=ingest.admin())
    assert bad_mode.status_code == 422
    lookahead = {"type": "object", "properties": {"code": {"type": "string", "pattern": "^(?!test-)"}}}
    backtracking = await http.put(
        url, json={"mode": "block", "events": {"Coupon Applied": lookahead}}, headers=ingest.admin()
    )
    assert (backtracking.status_code, backtracking.json()["error"]["code"]) == (422, "invalid_tracking_plan")
    assert "RE2" in backtracking.json()["error"]["message"]


def sale(order_id: str, **changes: Any) -> dict[str, Any]:
    document: dict[str, Any] = {
        "order_id": order_id,
        "customer": {"email": "ada@example.com"},
        "items": [{"sku": "TEA-1", "name": "Tea", "category": "Tea", "price": 4.5, "quantity": 2}],
        "total": 9.0,
        "currency": "EUR",
        "channel": "store",
        "store_id": "berlin-1",
        "payment_method": "card",
        "time": "2026-11-19T17:30:00+01:00",
    }
    document.update(changes)
    return document


async def test_transactions_single_and_bulk_are_idempotent_on_the_order_id(
    ingest: Ingest, platform: PlatformUnderTest, http: httpx.AsyncClient
) -> None:
    url = f"{ingest.url}/v1/transactions"
    order = "POS-" + secrets.token_hex(4)
    for _ in range(2):
        response = await http.post(url, json=sale(order), auth=(ingest.write_key, ""))
        assert response.status_code == 200, response.text
        assert response.json() == {"success": True}
    bad = await http.post(url, json=sale(order, currency="euro"), auth=(ingest.write_key, ""))
    assert (bad.status_code, bad.json()["error"]["code"]) == (400, "invalid_transaction")
    assert bad.json()["error"]["details"] == {"field": "currency"}

    bulk_orders = ["ERP-" + secrets.token_hex(4) for _ in range(2)]
    lines = [
        json.dumps(sale(bulk_orders[0], channel="online", store_id=None)),
        "",
        "{not json",
        json.dumps(sale(bulk_orders[1], kind="refund")),
        json.dumps(sale("x", channel="store", store_id=None)),
    ]
    response = await http.post(
        url,
        content="\n".join(lines),
        headers={"Content-Type": "application/x-ndjson"},
        auth=(ingest.write_key, ""),
    )
    assert response.status_code == 200, response.text
    answer = response.json()
    assert answer["accepted"] == 2
    assert [(r["index"], r["error"]["code"]) for r in answer["rejected"]] == [
        (2, "invalid_json"),
        (4, "invalid_transaction"),
    ]

    mids = [f"txn:purchase:{order}", f"txn:purchase:{bulk_orders[0]}", f"txn:refund:{bulk_orders[1]}"]
    events = await read_events(platform, mids)
    store_sale = events[mids[0]].data
    assert store_sale.event == "Order Completed"
    assert store_sale.properties["store_id"] == "berlin-1"
    assert events[mids[0]].subject == "email:ada@example.com"
    assert events[mids[2]].data.event == "Order Refunded"
    none_valid = await http.post(
        url, content="{oops}\n", headers={"Content-Type": "application/x-ndjson"}, auth=(ingest.write_key, "")
    )
    assert none_valid.status_code == 400


@pytest.mark.parametrize(
    ("body", "content_type", "status", "code"),
    [
        ("\n".join([json.dumps(sale("o"))] * 2400), "application/x-ndjson", 413, "payload_too_large"),
        (
            "\n".join(["{}"] * 2501),
            "application/x-ndjson",
            413,
            "too_many_events",
        ),
        (
            json.dumps(sale("big", items=[{"sku": "x" * 150, "price": 1, "quantity": 1}] * 300)),
            "application/json",
            413,
            "payload_too_large",
        ),
        ("[1, 2]", "application/json", 400, "invalid_transaction"),
        ("{oops", "application/json", 400, "invalid_json"),
    ],
)
async def test_transaction_requests_that_cannot_be_taken_are_refused(
    ingest: Ingest, http: httpx.AsyncClient, body: str, content_type: str, status: int, code: str
) -> None:
    response = await http.post(
        f"{ingest.url}/v1/transactions",
        content=body,
        headers={"Content-Type": content_type},
        auth=(ingest.write_key, ""),
    )
    assert response.status_code == status, response.text
    assert response.json()["error"]["code"] == code
