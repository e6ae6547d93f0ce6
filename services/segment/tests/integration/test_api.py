"""The segment API on the running stack: definitions, bad input, scopes, and entered events on Kafka."""

from __future__ import annotations

import asyncio
import secrets
from collections.abc import AsyncIterator
from typing import Any

import httpx
import pytest
from cdp_common.events import ProfileCreated, ProfileUpdated, SegmentEntered, make_envelope
from cdp_common.kafka import create_producer
from cdp_common.testing import PlatformUnderTest, Stack, read_topic, wait_for
from cdp_common.topics import TopicName

pytestmark = pytest.mark.e2e


@pytest.fixture
async def http() -> AsyncIterator[httpx.AsyncClient]:
    async with httpx.AsyncClient(timeout=15) as client:
        yield client


async def publish(platform: PlatformUnderTest, *payloads: Any) -> None:
    settings = platform.settings()
    producer = create_producer(settings, client_id="segment-api-test")
    await producer.start()
    try:
        for payload in payloads:
            envelope = make_envelope(payload=payload, source="profile", subject=payload.profile_id)
            await producer.send_and_wait(
                settings.topic(TopicName.PROFILES), value=envelope.to_bytes(), key=payload.profile_id.encode()
            )
    finally:
        await producer.stop()


async def test_define_a_segment_and_see_a_profile_enter_it(
    stack: Stack, http: httpx.AsyncClient, platform: PlatformUnderTest
) -> None:
    url, admin = stack.url("segment"), stack.admin()
    key = "api_" + secrets.token_hex(3)
    # A plan of this test's own: the session's other tests have "pro" customers too.
    plan = "pro_" + secrets.token_hex(3)
    rule = {"all": [{"trait": "plan", "op": "eq", "value": plan}, {"geo": {"country": ["DE"]}}]}

    preview = await http.post(f"{url}/v1/segments/preview", json={"rule": rule}, headers=admin)
    assert preview.status_code == 200
    assert preview.json()["size"] == 0

    created = await http.post(
        f"{url}/v1/segments", json={"key": key, "name": "Pro in Germany", "rule": rule}, headers=admin
    )
    assert created.status_code == 201, created.text
    assert created.json()["version"] == 1
    assert created.json()["status"] == "building"
    job_id = created.json()["job"]["id"]

    async def built() -> dict[str, Any] | None:
        segment = (await http.get(f"{url}/v1/segments/{key}", headers=admin)).json()
        return segment if segment["status"] == "ready" else None

    segment = await wait_for(built, what="the segment to be built")
    assert segment["job"]["id"] == job_id
    assert segment["job"]["state"] == "succeeded"
    job = (await http.get(f"{url}/v1/jobs/{job_id}", headers=admin)).json()
    assert job["done"] == job["total"]
    assert (
        await http.post(f"{url}/v1/segments", json={"key": key, "name": "again", "rule": rule}, headers=admin)
    ).status_code == 409

    profile_id = "prof-" + secrets.token_hex(4)
    await publish(
        platform,
        ProfileCreated(profile_id=profile_id, version=1, changed_traits={"plan": "free"}),
        ProfileUpdated(
            profile_id=profile_id, version=2, changed_traits={"plan": plan, "address": {"country": "DE"}}
        ),
    )

    async def member() -> dict[str, Any] | None:
        page = (await http.get(f"{url}/v1/segments/{key}/members", headers=admin)).json()
        return page if page["items"] else None

    page = await wait_for(member, what="the profile to enter the segment")
    assert [m["profile_id"] for m in page["items"]] == [profile_id]

    settings = platform.settings()
    events = await read_topic(
        bootstrap=settings.kafka_bootstrap,
        topic=settings.topic(TopicName.SEGMENTS),
        until=lambda es: any(e.data.segment_key == key for e in es if isinstance(e.data, SegmentEntered)),
    )
    entered = next(e for e in events if isinstance(e.data, SegmentEntered) and e.data.segment_key == key)
    assert entered.subject == profile_id
    assert entered.data.reason["cause"]["changed"] == ["trait:address", "trait:plan"]

    mine = (await http.get(f"{url}/v1/profiles/{profile_id}/segments", headers=admin)).json()
    assert [s["segment_key"] for s in mine["items"]] == [key]
    explained = (await http.get(f"{url}/v1/segments/{key}/explain/{profile_id}", headers=admin)).json()
    assert explained["member"] is True
    assert [c["actual"] for c in explained["explanation"]["conditions"]] == [plan, "de"]
    assert explained["last_change"]["event_id"] == entered.id
    history = (await http.get(f"{url}/v1/segments/{key}/history", headers=admin)).json()
    assert [h["change"] for h in history["items"]] == ["entered"]
    exported = (await http.get(f"{url}/v1/privacy/profiles/{profile_id}", headers=admin)).json()
    assert [m["segment_key"] for m in exported["data"]["memberships"]] == [key]

    changed = await http.put(
        f"{url}/v1/segments/{key}",
        json={"name": "Pro anywhere", "rule": {"trait": "plan", "op": "eq", "value": plan}},
        headers=admin,
    )
    assert changed.status_code == 200
    assert changed.json()["version"] == 2
    assert changed.json()["status"] == "building"
    await wait_for(built, what="the new version to be built")
    assert [
        m["profile_id"]
        for m in (await http.get(f"{url}/v1/segments/{key}/members", headers=admin)).json()["items"]
    ] == [profile_id]
    versions = (await http.get(f"{url}/v1/segments/{key}/versions", headers=admin)).json()
    assert [v["version"] for v in versions["items"]] == [1, 2]
    deleted = await http.delete(f"{url}/v1/segments/{key}", headers=admin)
    assert deleted.status_code == 202
    assert (await http.get(f"{url}/v1/segments/{key}", headers=admin)).status_code == 404

    async def members_gone() -> dict[str, Any] | None:
        job = (await http.get(f"{url}/v1/jobs/{deleted.json()['job']['id']}", headers=admin)).json()
        return job if job["state"] == "succeeded" else None

    gone = await wait_for(members_gone, what="the deleted segment's members to leave")
    assert gone["result"] == {"exited": 1}
    assert gone["done"] == gone["total"] == 1


async def test_the_same_key_created_at_once_gives_one_segment_and_conflicts(
    stack: Stack, http: httpx.AsyncClient
) -> None:
    url, admin = stack.url("segment"), stack.admin()
    body = {
        "key": "race_" + secrets.token_hex(3),
        "name": "race",
        "rule": {"trait": "plan", "op": "eq", "value": "pro"},
    }
    answers = await asyncio.gather(
        *(http.post(f"{url}/v1/segments", json=body, headers=admin) for _ in range(4))
    )
    assert sorted(a.status_code for a in answers) == [201, 409, 409, 409]
    assert all(a.json()["error"]["code"] == "conflict" for a in answers if a.status_code == 409)


async def test_built_in_segments_exist_on_a_fresh_stack(stack: Stack, http: httpx.AsyncClient) -> None:
    keys: list[str] = []
    cursor = None
    while True:
        params = {"limit": 7, **({"cursor": cursor} if cursor else {})}
        page = (
            await http.get(f"{stack.url('segment')}/v1/segments", params=params, headers=stack.admin())
        ).json()
        keys += [s["key"] for s in page["items"]]
        cursor = page["next"]
        if cursor is None:
            break
    expected = {
        "rfm_champions", "rfm_loyal", "rfm_potential_loyalists", "rfm_new", "rfm_promising", "rfm_need_attention",
        "rfm_at_risk", "rfm_cant_lose", "rfm_hibernating", "rfm_lost", "lifecycle_new", "lifecycle_active",
        "lifecycle_at_risk", "lifecycle_churned", "lifecycle_reactivated",
    }  # fmt: skip
    assert expected <= set(keys)
    refused = await http.delete(f"{stack.url('segment')}/v1/segments/rfm_champions", headers=stack.admin())
    assert refused.status_code == 409


@pytest.mark.parametrize(
    ("body", "status", "where"),
    [
        ({"key": "bad", "name": "x", "rule": {"trait": "plan", "op": "gt", "value": "x"}}, 422, "rule.value"),
        ({"key": "Bad Key", "name": "x", "rule": {"trait": "plan", "op": "exists"}}, 422, "key"),
        ({"key": "refs", "name": "x", "rule": {"segment": "does_not_exist"}}, 422, "rule"),
        (
            {"key": "regex", "name": "x", "rule": {"trait": "a", "op": "regex", "value": "(a)\\1"}},
            422,
            "rule.value",
        ),
        ({"key": "huge", "name": "x", "rule": {"trait": "a", "op": "eq", "value": "x" * 300_000}}, 413, None),
        ({"name": "no key"}, 422, None),
    ],
)
async def test_bad_definitions_get_a_clear_4xx(
    stack: Stack, http: httpx.AsyncClient, body: dict[str, Any], status: int, where: str | None
) -> None:
    response = await http.post(f"{stack.url('segment')}/v1/segments", json=body, headers=stack.admin())
    assert response.status_code == status
    error = response.json()["error"]
    assert error["message"]
    if where is not None:
        assert error["details"]["where"] == where


async def test_scopes(stack: Stack, http: httpx.AsyncClient) -> None:
    url = stack.url("segment")
    assert (await http.get(f"{url}/v1/segments")).status_code == 401
    token = await http.post(
        f"{stack.url('ingest')}/v1/tokens",
        json={"name": "reader", "scopes": ["segments:read"]},
        headers=stack.admin(),
    )
    reader = {"Authorization": f"Bearer {token.json()['token']}"}

    async def accepted() -> bool:
        return (await http.get(f"{url}/v1/segments", headers=reader)).status_code == 200

    await wait_for(accepted, what="the token to reach segment")
    body = {"key": "nope", "name": "x", "rule": {"trait": "a", "op": "exists"}}
    assert (await http.post(f"{url}/v1/segments", json=body, headers=reader)).status_code == 403
    assert (await http.get(f"{url}/v1/models", headers=reader)).status_code == 200


async def test_the_computed_trait_of_an_event_condition_is_owned_by_its_segment_until_deleted(
    stack: Stack, http: httpx.AsyncClient
) -> None:
    segment_url, profile_url, admin = stack.url("segment"), stack.url("profile"), stack.admin()
    key = "buyers_" + secrets.token_hex(3)
    owner = f"segment:{key}"
    rule = {"event": "Bought " + secrets.token_hex(3), "op": "gte", "value": 1, "within_days": 30}
    created = await http.post(
        f"{segment_url}/v1/segments", json={"key": key, "name": "Buyers", "rule": rule}, headers=admin
    )
    assert created.status_code == 201, created.text

    async def owned() -> dict[str, Any] | None:
        listed = (await http.get(f"{profile_url}/v1/computed-traits", headers=admin)).json()
        return next((t for t in listed["items"] if owner in t["owners"]), None)

    trait = await wait_for(owned, what="profile to name the segment as the trait's owner")
    assert trait["owners"] == [owner]
    refused = await http.delete(f"{profile_url}/v1/computed-traits/{trait['key']}", headers=admin)
    assert refused.status_code == 409
    assert refused.json()["error"]["details"] == {"owners": [owner]}

    assert (await http.delete(f"{segment_url}/v1/segments/{key}", headers=admin)).status_code == 202

    async def released() -> bool:
        found = await http.get(f"{profile_url}/v1/computed-traits/{trait['key']}", headers=admin)
        owners: list[str] = found.json()["owners"]
        return not owners

    await wait_for(released, what="the deleted segment to release the trait")
    deleted = await http.delete(f"{profile_url}/v1/computed-traits/{trait['key']}", headers=admin)
    assert deleted.status_code == 202, deleted.text
