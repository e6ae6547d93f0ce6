"""Every route of the profile API on the service running as its own process, fed through Kafka.

Also the privacy consumer end to end: a request on cdp.privacy.v1 yields profile's receipt and
profile.erased, and re-sent events of the erased person create nobody."""

from __future__ import annotations

import secrets
import string
from collections.abc import AsyncIterator
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import httpx
import pytest
from aiokafka import AIOKafkaProducer
from cdp_common.auth import hash_token
from cdp_common.envelope import Envelope
from cdp_common.events import (
    PrivacyReceipt,
    PrivacyRequestOpened,
    ProfileErased,
    TokenCreated,
    make_envelope,
)
from cdp_common.hashing import subject_hash
from cdp_common.kafka import create_producer
from cdp_common.settings import PlatformSettings
from cdp_common.testing import PlatformUnderTest, ServiceProcess, free_port, read_topic, unique_env, wait_for
from cdp_common.topics import TopicName

from ..conftest import tracking

pytestmark = [pytest.mark.integration, pytest.mark.timeout(300)]


@dataclass
class Running:
    """The profile service of this module and a producer onto its environment's topics."""

    url: str
    admin: dict[str, str]
    settings: PlatformSettings
    producer: AIOKafkaProducer

    async def publish(self, topic: TopicName, envelope: Envelope[Any]) -> None:
        await self.producer.send_and_wait(
            self.settings.topic(topic), value=envelope.to_bytes(), key=envelope.subject.encode()
        )

    async def send(self, **fields: Any) -> None:
        await self.publish(TopicName.EVENTS, tracking(**fields))


@pytest.fixture(scope="module")
async def service(
    platform: PlatformUnderTest, tmp_path_factory: pytest.TempPathFactory
) -> AsyncIterator[Running]:
    env = unique_env(platform)
    settings = platform.settings(env=env)
    process = ServiceProcess(
        name="profile",
        port=free_port(),
        environ={**platform.environ(), "CDP_ENV": env, "CDP_PROFILE_WINDOW_CHECK_INTERVAL_S": "0.5"},
        log_path=Path(tmp_path_factory.mktemp("profile-api")) / "profile.log",
    )
    process.start()
    producer = create_producer(settings, client_id="profile-api-test")
    try:
        await process.wait_ready(timeout=180)
        await producer.start()
        yield Running(
            url=process.url,
            admin={"Authorization": f"Bearer {platform.admin_token}"},
            settings=settings,
            producer=producer,
        )
    finally:
        await producer.stop()
        process.stop()


@pytest.fixture
async def http() -> AsyncIterator[httpx.AsyncClient]:
    async with httpx.AsyncClient(timeout=30) as client:
        yield client


async def get(http: httpx.AsyncClient, service: Running, path: str, **params: Any) -> httpx.Response:
    return await http.get(f"{service.url}{path}", params=params, headers=service.admin)


async def profile_when(
    http: httpx.AsyncClient, service: Running, ref: str, check: Any = bool
) -> dict[str, Any]:
    async def probe() -> dict[str, Any] | None:
        response = await get(http, service, f"/v1/profiles/{ref}")
        if response.status_code != 200:
            return None
        body: dict[str, Any] = response.json()
        return body if check(body) else None

    return await wait_for(probe, what=f"profile {ref}")


async def token(service: Running, scopes: list[str]) -> dict[str, str]:
    secret = "cdp_" + secrets.token_hex(16)
    created = TokenCreated(
        token_id=secrets.token_hex(6), name="profile-api", token_hash=hash_token(secret), scopes=scopes
    )
    await service.publish(
        TopicName.TOKENS, make_envelope(payload=created, source="ingest", subject=created.token_id)
    )
    return {"Authorization": f"Bearer {secret}"}


async def test_profile_routes_answer_by_id_and_by_identifier(
    service: Running, http: httpx.AsyncClient
) -> None:
    user, anon = "api-" + secrets.token_hex(4), "anon-" + secrets.token_hex(4)
    email = f"{user}@example.com"
    now = datetime.now(UTC)
    await service.send(anonymous_id=anon, type="page", name="Home", at=now - timedelta(minutes=3))
    await service.send(
        user_id=user,
        type="identify",
        traits={"email": email, "first_name": "Ada"},
        at=now - timedelta(minutes=2),
    )
    await service.send(
        user_id=user, anonymous_id=anon, event="Order Completed", properties={"total": 12.5}, at=now
    )
    profile = await profile_when(
        http, service, f"user_id:{user}", lambda p: p["computed_traits"].get("orders") == 1
    )
    profile = await profile_when(
        http, service, f"anonymous_id:{anon}", lambda p: p["computed_traits"].get("page_views") == 1
    )
    assert profile["common_traits"]["first_name"] == "Ada"
    assert profile["traits"]["email"] == email
    same = (await get(http, service, f"/v1/profiles/email:{email.upper()}")).json()
    assert same["id"] == profile["id"]

    traits = (await get(http, service, f"/v1/profiles/{profile['id']}/traits")).json()
    assert traits["traits"]["first_name"]["value"] == "Ada"
    assert set(traits["traits"]["first_name"]) == {"value", "source", "event_id", "timestamp"}

    identifiers = (await get(http, service, f"/v1/profiles/{profile['id']}/identifiers")).json()
    assert {(i["type"], i["value"]) for i in identifiers["items"]} == {
        ("user_id", user),
        ("anonymous_id", anon),
        ("email", email),
    }
    merges = (await get(http, service, f"/v1/profiles/{profile['id']}/merges")).json()
    assert [m["rule"] for m in merges["items"]] == ["shared_identifier:anonymous_id"]
    absorbed = merges["items"][0]["absorbed_id"]
    by_old_id = (await get(http, service, f"/v1/profiles/{absorbed}")).json()
    assert by_old_id["id"] == profile["id"]

    computed = (await get(http, service, f"/v1/profiles/{profile['id']}/computed")).json()["computed_traits"]
    assert computed["revenue"] == {"USD": 12.5}
    assert computed["days_since_last_order"] == 0

    first = (await get(http, service, f"/v1/profiles/{profile['id']}/events", limit=2)).json()
    assert len(first["items"]) == 2
    assert first["next"] is not None
    rest = (
        await get(http, service, f"/v1/profiles/{profile['id']}/events", limit=2, cursor=first["next"])
    ).json()
    assert len(rest["items"]) == 1
    assert rest["next"] is None
    pages = (await get(http, service, f"/v1/profiles/{profile['id']}/events", type="page")).json()["items"]
    assert [e["name"] for e in pages] == ["Home"]
    named = (await get(http, service, f"/v1/profiles/{profile['id']}/events", name="Order Completed")).json()
    assert [e["type"] for e in named["items"]] == ["track"]
    future = (datetime.now(UTC) + timedelta(days=1)).isoformat()
    assert (await get(http, service, f"/v1/profiles/{profile['id']}/events", since=future)).json()[
        "items"
    ] == []

    found = (await get(http, service, "/v1/profiles", trait="email", value=email)).json()
    assert [p["id"] for p in found["items"]] == [profile["id"]]

    split = await http.post(f"{service.url}/v1/profiles/{absorbed}/split", json={}, headers=service.admin)
    assert split.status_code == 200, split.text
    assert split.json()["restored_profile_id"] == absorbed
    again = await http.post(f"{service.url}/v1/profiles/{absorbed}/split", json={}, headers=service.admin)
    assert again.status_code == 404


async def test_bad_input_gets_a_clear_4xx(service: Running, http: httpx.AsyncClient) -> None:
    cases = [
        (await get(http, service, "/v1/profiles/Bad Type:x"), 400, "invalid_reference"),
        (await get(http, service, "/v1/profiles/phone:not-a-number"), 400, "invalid_reference"),
        (
            await get(http, service, "/v1/profiles/user_id:nobody-" + secrets.token_hex(4)),
            404,
            "profile_not_found",
        ),
        (await get(http, service, "/v1/profiles/no-such-id"), 404, "profile_not_found"),
        (
            await get(http, service, "/v1/profiles/no-such-id/events", cursor="%%%not-a-cursor"),
            400,
            "invalid_cursor",
        ),
        (await get(http, service, "/v1/profiles/x/events", name="n" * 201), 422, "invalid_request"),
        (
            await get(http, service, "/v1/profiles/x/events", since="2026-01-01T00:00:00"),
            400,
            "invalid_time",
        ),
        (await get(http, service, "/v1/profiles/x/events", limit=100000), 422, "invalid_request"),
        (await get(http, service, "/v1/profiles", trait="email"), 422, "invalid_request"),
        (await get(http, service, "/v1/identity/quarantine", cursor="e30"), 400, "invalid_cursor"),
        (await get(http, service, "/v1/duplicates", cursor="bm90IGpzb24"), 400, "invalid_cursor"),
    ]
    for response, status, code in cases:
        assert response.status_code == status, response.text
        assert response.json()["error"]["code"] == code
    write = service.admin
    url = f"{service.url}/v1/computed-traits"
    oversized = {
        "key": "x1",
        "aggregation": "count",
        "filters": [{"property": "a", "op": "eq", "value": 1}] * 21,
    }
    huge_value = {
        "key": "x2",
        "aggregation": "count",
        "filters": [{"property": "a", "op": "eq", "value": "v" * 5000}],
    }
    for body in (
        oversized,
        huge_value,
        {"key": "Not A Key", "aggregation": "count"},
        {"key": "orders", "aggregation": "count"},
        {"key": "x3", "aggregation": "sum"},
        {"key": "x4", "aggregation": "median", "property": "p"},
        {"key": "x5", "aggregation": "count", "window_days": 0},
        {"key": "x6", "aggregation": "count", "sql": "drop table"},
    ):
        response = await http.post(url, json=body, headers=write)
        assert response.status_code == 422, (body, response.text)
        assert response.json()["error"]["code"] == "invalid_request"
    for pattern in ("(unclosed", r"^(?!vip-).*-test$"):
        bad_rules = await http.put(
            f"{service.url}/v1/identity/rules", json={"blocked_patterns": [pattern]}, headers=write
        )
        assert bad_rules.status_code == 422, pattern
        assert "RE2" in bad_rules.text, "the answer says which patterns are taken"
    merge_one = await http.post(
        f"{service.url}/v1/duplicates/merge", json={"profile_ids": ["only-one"]}, headers=write
    )
    assert merge_one.status_code == 422
    merge_unknown = await http.post(
        f"{service.url}/v1/duplicates/merge", json={"profile_ids": ["nope-1", "nope-2"]}, headers=write
    )
    assert merge_unknown.status_code == 404


async def test_scopes_guard_reads_and_writes(service: Running, http: httpx.AsyncClient) -> None:
    reader = await token(service, ["profiles:read"])
    other = await token(service, ["segments:read"])

    async def both_known() -> bool:
        # The two tokens travel on different partitions, so either may arrive first.
        read = await http.get(f"{service.url}/v1/computed-traits", headers=reader)
        wrong_scope = await http.get(f"{service.url}/v1/identity/rules", headers=other)
        return read.status_code == 200 and wrong_scope.status_code != 401

    await wait_for(both_known, what="both tokens to reach profile")
    assert (await http.get(f"{service.url}/v1/identity/rules", headers=other)).status_code == 403
    write = await http.post(
        f"{service.url}/v1/computed-traits", json={"key": "nope", "aggregation": "count"}, headers=reader
    )
    assert write.status_code == 403
    assert (await http.get(f"{service.url}/v1/profiles/x")).status_code == 401


async def test_computed_traits_rules_quarantine_and_duplicates_routes(
    service: Running, http: httpx.AsyncClient
) -> None:
    user = "ct-" + secrets.token_hex(4)
    key = "orders_30d_" + secrets.token_hex(3)
    await service.send(user_id=user, event="Order Completed", properties={"total": 5}, at=datetime.now(UTC))
    await profile_when(http, service, f"user_id:{user}", lambda p: p["computed_traits"].get("orders") == 1)
    created = await http.post(
        f"{service.url}/v1/computed-traits",
        json={"key": key, "aggregation": "count", "event_name": "Order Completed", "window_days": 30},
        headers=service.admin,
    )
    assert created.status_code == 202, created.text
    assert created.json()["computed_trait"]["key"] == key
    assert created.json()["computed_trait"]["status"] == "building"
    job_id = created.json()["job"]["id"]

    async def built() -> dict[str, Any] | None:
        found = (await get(http, service, f"/v1/computed-traits/{key}")).json()
        return found if found["status"] == "ready" else None

    ready = await wait_for(built, what="the backfill job to build the trait")
    assert ready["job"]["id"] == job_id
    assert ready["job"]["state"] == "succeeded"
    assert ready["job"]["done"] == ready["job"]["total"] >= 1
    assert ready["backfilled_profiles"] >= 1
    job = (await get(http, service, f"/v1/jobs/{job_id}")).json()
    assert job["kind"] == "computed_trait_backfill"
    assert job["state"] == "succeeded"
    missing = await http.get(f"{service.url}/v1/computed-traits/nope_{key}", headers=service.admin)
    assert missing.status_code == 404
    duplicate = await http.post(
        f"{service.url}/v1/computed-traits", json={"key": key, "aggregation": "count"}, headers=service.admin
    )
    assert duplicate.status_code == 409
    listed = (await get(http, service, "/v1/computed-traits")).json()
    assert key in [d["key"] for d in listed["items"]]
    assert "revenue" in listed["builtin"]
    profile = await profile_when(
        http, service, f"user_id:{user}", lambda p: p["computed_traits"].get(key) == 1
    )
    values = (await get(http, service, f"/v1/computed-traits/{key}/values", limit="10000")).json()
    assert {"profile_id": profile["id"], "value": 1} in values["items"]
    await service.send(user_id=user, event="Order Completed", properties={"total": 5}, at=datetime.now(UTC))
    await profile_when(http, service, profile["id"], lambda p: p["computed_traits"].get(key) == 2)

    rules = (await get(http, service, "/v1/identity/rules")).json()
    assert rules["limits"]["user_id"] == 1
    assert "test@test.com" in rules["blocked_values"]
    changed = await http.put(
        f"{service.url}/v1/identity/rules", json={**rules, "supernode_threshold": 50}, headers=service.admin
    )
    assert changed.status_code == 200
    assert (await get(http, service, "/v1/identity/rules")).json()["supernode_threshold"] == 50
    await http.put(f"{service.url}/v1/identity/rules", json=rules, headers=service.admin)
    quarantine = await get(http, service, "/v1/identity/quarantine")
    assert quarantine.status_code == 200
    assert "items" in quarantine.json()

    suffix = secrets.token_hex(3)
    await service.send(
        user_id=f"d1-{suffix}",
        type="identify",
        traits={
            "first_name": "Margarethe",
            "last_name": f"Dup{suffix}",
            "email": f"marga.dup{suffix}@gmail.com",
        },
    )
    await service.send(
        anonymous_id=f"d2-{suffix}",
        type="identify",
        traits={
            "first_name": "Margarete",
            "last_name": f"Dup{suffix}",
            "email": f"marga.dup{suffix}@gmial.com",
        },
    )
    one = await profile_when(http, service, f"user_id:d1-{suffix}")
    two = await profile_when(http, service, f"anonymous_id:d2-{suffix}")

    async def suspected() -> dict[str, Any] | None:
        items = (await get(http, service, "/v1/duplicates", limit=1000)).json()["items"]
        return next((s for s in items if set(s["profile_ids"]) == {one["id"], two["id"]}), None)

    suspect = await wait_for(suspected, what="the duplicate suspect")
    assert suspect["score"] >= 0.8
    assert await get(http, service, f"/v1/profiles/{two['id']}") is not None
    merged = await http.post(
        f"{service.url}/v1/duplicates/merge",
        json={"profile_ids": [one["id"], two["id"]]},
        headers=service.admin,
    )
    assert merged.status_code == 200, merged.text
    assert merged.json()["profile_id"] == one["id"]
    ledger = (await get(http, service, f"/v1/profiles/{one['id']}/merges")).json()["items"]
    assert [m["rule"] for m in ledger] == ["operator"]


async def test_ibm_and_i_b_m_reach_the_queue_and_a_dismissal_holds_through_changes_and_scans(
    service: Running, http: httpx.AsyncClient
) -> None:
    suffix = secrets.token_hex(3)
    await service.send(user_id=f"ibm-{suffix}", type="identify", traits={"company": f"IBM {suffix}"})
    await service.send(
        user_id=f"ibm-dotted-{suffix}", type="identify", traits={"company": {"name": f"I.B.M. {suffix}"}}
    )
    one = await profile_when(http, service, f"user_id:ibm-{suffix}")
    two = await profile_when(http, service, f"user_id:ibm-dotted-{suffix}")
    pair = sorted((one["id"], two["id"]))

    async def listed() -> list[dict[str, Any]]:
        items: list[dict[str, Any]] = []
        cursor = None
        while True:
            params: dict[str, Any] = {"limit": 50} | ({"cursor": cursor} if cursor else {})
            page = (await get(http, service, "/v1/duplicates", **params)).json()
            items += page["items"]
            cursor = page["next"]
            if cursor is None:
                return items

    async def suspected() -> dict[str, Any] | None:
        return next((item for item in await listed() if item["profile_ids"] == pair), None)

    suspect = await wait_for(suspected, what="the IBM pair in the queue")
    assert suspect["score"] == 1.0
    assert suspect["reasons"] == {"company": 1.0}
    scores = [item["score"] for item in await listed()]
    assert scores == sorted(scores, reverse=True)

    dismissed = await http.post(
        f"{service.url}/v1/duplicates/dismiss", json={"profile_ids": pair[::-1]}, headers=service.admin
    )
    assert dismissed.status_code == 200, dismissed.text
    assert dismissed.json()["state"] == "dismissed"
    # One of them changes (still IBM), and a full scan runs: the pair stays out.
    await service.send(
        user_id=f"ibm-{suffix}", type="identify", traits={"company": f"IBM {suffix} Corp", "plan": "pro"}
    )
    await profile_when(
        http, service, f"user_id:ibm-{suffix}", check=lambda p: p["traits"].get("plan") == "pro"
    )

    async def settled() -> bool:
        return bool((await get(http, service, "/v1/duplicates")).json()["changes_waiting"] == 0)

    await wait_for(settled, what="the change compared")
    scan = await http.post(f"{service.url}/v1/duplicates/scan", json={"full": True}, headers=service.admin)
    assert scan.status_code == 202

    async def scanned() -> bool:
        job = (await get(http, service, f"/v1/jobs/{scan.json()['job']['id']}")).json()
        return bool(job["state"] == "succeeded")

    await wait_for(scanned, timeout=120, what="the full scan")
    assert pair not in [item["profile_ids"] for item in await listed()]

    bad = [
        (await get(http, service, "/v1/duplicates", min_score=0.5), 422, "invalid_request"),
        (
            await http.post(
                f"{service.url}/v1/duplicates/dismiss",
                json={"profile_ids": [one["id"], "no-such-profile"]},
                headers=service.admin,
            ),
            404,
            "profile_not_found",
        ),
        (
            await http.post(
                f"{service.url}/v1/duplicates/dismiss",
                json={"profile_ids": [one["id"], one["id"]]},
                headers=service.admin,
            ),
            409,
            "same_profile",
        ),
    ]
    for response, status, code in bad:
        assert response.status_code == status, response.text
        assert response.json()["error"]["code"] == code


async def test_privacy_request_on_the_topic_erases_and_answers(
    service: Running, http: httpx.AsyncClient, platform: PlatformUnderTest
) -> None:
    email = f"gone-{secrets.token_hex(4)}@example.com"
    await service.send(user_id="gone-" + secrets.token_hex(4), type="identify", traits={"email": email})
    profile = await profile_when(http, service, f"email:{email}")
    settings = service.settings
    request_id = "pr-" + secrets.token_hex(4)
    opened = make_envelope(
        payload=PrivacyRequestOpened(
            request_id=request_id,
            request_type="erasure",
            subject_type="email",
            subject_hash=subject_hash(key=platform.hash_key, subject_type="email", value=email),
            deadline=datetime.now(UTC) + timedelta(days=30),
        ),
        source="consent",
        subject=request_id,
    )
    await service.publish(TopicName.PRIVACY, opened)
    receipts = await read_topic(
        bootstrap=settings.kafka_bootstrap,
        topic=settings.topic(TopicName.PRIVACY),
        until=lambda es: any(
            isinstance(e.data, PrivacyReceipt)
            and e.data.request_id == request_id
            and e.data.service == "profile"
            for e in es
        ),
    )
    receipt = next(
        e
        for e in receipts
        if isinstance(e.data, PrivacyReceipt)
        and e.data.service == "profile"
        and e.data.request_id == request_id
    )
    assert receipt.data.profile_ids == [profile["id"]]
    erased = await read_topic(
        bootstrap=settings.kafka_bootstrap,
        topic=settings.topic(TopicName.PROFILES),
        until=lambda es: any(
            isinstance(e.data, ProfileErased) and e.data.request_id == request_id for e in es
        ),
    )
    assert any(e.subject == profile["id"] for e in erased if isinstance(e.data, ProfileErased))
    assert (await get(http, service, f"/v1/profiles/email:{email}")).status_code == 404
    await service.send(anonymous_id="x-" + secrets.token_hex(4), type="identify", traits={"email": email})
    marker = "after-" + secrets.token_hex(4)
    await service.send(user_id=marker, event="Marker")
    await profile_when(http, service, f"user_id:{marker}")
    assert (await get(http, service, f"/v1/profiles/email:{email}")).status_code == 404


async def test_a_computed_trait_is_deleted_once_no_owner_relies_on_it(
    service: Running, http: httpx.AsyncClient
) -> None:
    user = "del-" + secrets.token_hex(4)
    key = "orders_owned_" + secrets.token_hex(3)
    url = f"{service.url}/v1/computed-traits"
    spec = {"key": key, "aggregation": "count", "event_name": "Order Completed"}
    await service.send(user_id=user, event="Order Completed", properties={"total": 5}, at=datetime.now(UTC))
    await profile_when(http, service, f"user_id:{user}", lambda p: p["computed_traits"].get("orders") == 1)

    created = await http.post(url, json={**spec, "owner": "segment:vip"}, headers=service.admin)
    assert created.status_code == 202, created.text
    assert created.json()["computed_trait"]["owners"] == ["segment:vip"]
    shared = await http.post(url, json={**spec, "owner": "campaign:c-1"}, headers=service.admin)
    assert shared.status_code == 200, shared.text
    assert shared.json()["computed_trait"]["owners"] == ["campaign:c-1", "segment:vip"]
    other = await http.post(url, json={**spec, "window_days": 7, "owner": "segment:x"}, headers=service.admin)
    assert other.status_code == 409
    assert other.json()["error"]["code"] == "computed_trait_exists"
    profile = await profile_when(
        http, service, f"user_id:{user}", lambda p: p["computed_traits"].get(key) == 1
    )

    refused = await http.delete(f"{url}/{key}", headers=service.admin)
    assert refused.status_code == 409
    assert refused.json()["error"]["code"] == "computed_trait_owned"
    assert refused.json()["error"]["details"] == {"owners": ["campaign:c-1", "segment:vip"]}
    for _ in range(2):  # releasing twice changes nothing
        released = await http.delete(f"{url}/{key}/owners/segment:vip", headers=service.admin)
        assert released.status_code == 200, released.text
        assert released.json()["owners"] == ["campaign:c-1"]
    still = await http.delete(f"{url}/{key}", headers=service.admin)
    assert still.json()["error"]["details"] == {"owners": ["campaign:c-1"]}
    assert (await get(http, service, f"/v1/computed-traits/{key}")).json()["owners"] == ["campaign:c-1"]
    await http.delete(f"{url}/{key}/owners/campaign:c-1", headers=service.admin)

    deleted = await http.delete(f"{url}/{key}", headers=service.admin)
    assert deleted.status_code == 202, deleted.text
    job_id = deleted.json()["job"]["id"]
    assert (await get(http, service, f"/v1/computed-traits/{key}")).status_code == 404
    assert (await get(http, service, f"/v1/computed-traits/{key}/values")).status_code == 404
    assert key not in [d["key"] for d in (await get(http, service, "/v1/computed-traits")).json()["items"]]

    async def purged() -> dict[str, Any] | None:
        job: dict[str, Any] = (await get(http, service, f"/v1/jobs/{job_id}")).json()
        return job if job["state"] == "succeeded" else None

    job = await wait_for(purged, what="the deletion job")
    assert job["kind"] == "computed_trait_purge"
    assert job["done"] >= 1
    assert key not in (await get(http, service, f"/v1/profiles/{profile['id']}")).json()["computed_traits"]
    assert (await http.delete(f"{url}/{key}", headers=service.admin)).status_code == 404
    assert (await http.delete(f"{url}/{key}/owners/segment:vip", headers=service.admin)).status_code == 404
    # Once its values are gone, the key can be defined anew.
    again = await http.post(url, json=spec, headers=service.admin)
    assert again.status_code == 202, again.text
    assert again.json()["computed_trait"]["owners"] == []


async def test_exchange_rates_are_loaded_read_back_and_bad_ones_refused(
    service: Running, http: httpx.AsyncClient
) -> None:
    url = f"{service.url}/v1/exchange-rates"
    one_day = {"date": "1998-06-01", "base": "EUR", "rates": {"XTS": 1.25, "XBA": 0.8}}
    loaded = await http.put(url, json=one_day, headers=service.admin)
    assert loaded.status_code == 200, loaded.text
    assert loaded.json() == {"days": 1, "rates": 3, "reporting_currency": "EUR"}
    # A list of days, one of them loaded again: the later load replaces its rates.
    days = [{**one_day, "rates": {"XTS": 2.5}}, {"date": "1998-06-02", "rates": {"XTS": 5}}]
    assert (await http.put(url, json=days, headers=service.admin)).json()["days"] == 2
    read = (await get(http, service, "/v1/exchange-rates", currency="XTS", date="1998-06-01")).json()
    assert (read["rates_date"], read["base"], read["rate"], read["value_of_one"]) == (
        "1998-06-01",
        "EUR",
        2.5,
        0.4,
    )
    # Cross rates: no XBA rate on the 2nd, so the 1st's stands.
    assert (await get(http, service, "/v1/exchange-rates", currency="XBA", date="1998-06-03")).json()[
        "value_of_one"
    ] == 1.25
    refusals: list[Any] = [
        {**one_day, "rates": {"xts": 1.2}},
        {**one_day, "rates": {"XTS": -1}},
        {**one_day, "rates": {"XTS": "NaN"}},
        {**one_day, "rates": {"XTS": "Infinity"}},
        {**one_day, "rates": {"XTS": 0}},
        {**one_day, "rates": {}},
        # The base is 1 unit of itself; and no more than 400 currencies a day.
        {**one_day, "rates": {"EUR": 2, "XTS": 1.25}},
        {
            **one_day,
            "rates": {f"Q{a}{b}": 1 for a in string.ascii_uppercase for b in string.ascii_uppercase[:16]},
        },
        {**one_day, "date": "1998-02-30"},
        {**one_day, "base": "euro"},
        [],
    ]
    for bad in refusals:
        refused = await http.put(url, json=bad, headers=service.admin)
        assert refused.status_code == 422, (bad, refused.text)
        assert refused.json()["error"]["code"]
    unknown = await get(http, service, "/v1/exchange-rates", currency="XTS", date="1990-01-01")
    assert (unknown.status_code, unknown.json()["error"]["code"]) == (404, "rate_not_found")
    assert (await get(http, service, "/v1/exchange-rates", currency="usd")).status_code == 422
