"""Alias and accounts end to end, through ingest as a website and a CRM would send them.

An anonymous visitor aliased to a customer is one profile, the ledger says why; an alias of two
known customers is refused and the ledger says that too. Group calls make an account whose
members a segment on the account's industry finds, and when the industry changes, every member
leaves, the one whose call changed it and the others alike.
"""

from __future__ import annotations

import secrets
from typing import Any

import httpx
import pytest
from cdp_common.testing import wait_for

from .conftest import Stack

pytestmark = pytest.mark.e2e


async def call(http: httpx.AsyncClient, stack: Stack, kind: str, body: dict[str, Any]) -> None:
    response = await http.post(f"{stack.url('ingest')}/v1/{kind}", json=body, auth=(stack.write_key, ""))
    assert response.status_code == 200, response.text


async def read(http: httpx.AsyncClient, stack: Stack, service: str, path: str) -> httpx.Response:
    return await http.get(f"{stack.url(service)}{path}", headers=stack.admin())


async def profile_id(http: httpx.AsyncClient, stack: Stack, ref: str) -> str | None:
    response = await read(http, stack, "profile", f"/v1/profiles/{ref}")
    return response.json()["id"] if response.status_code == 200 else None


async def test_alias_joins_a_visitor_to_a_customer_and_refuses_two_customers(
    stack: Stack, http: httpx.AsyncClient
) -> None:
    tag = secrets.token_hex(4)
    anon, ada, bob = f"anon-{tag}", f"ada-{tag}", f"bob-{tag}"
    await call(http, stack, "track", {"anonymousId": anon, "event": "Product Viewed"})
    await call(http, stack, "identify", {"userId": ada, "traits": {"first_name": "Ada"}})
    await call(http, stack, "identify", {"userId": bob})
    visitor = await wait_for(lambda: profile_id(http, stack, f"anonymous_id:{anon}"), what="the visitor")
    customer = await wait_for(lambda: profile_id(http, stack, f"user_id:{ada}"), what="the customer")
    assert visitor != customer
    await wait_for(lambda: profile_id(http, stack, f"user_id:{bob}"), what="the other customer")

    await call(http, stack, "alias", {"previousId": anon, "userId": ada})

    async def joined() -> bool:
        return await profile_id(http, stack, f"anonymous_id:{anon}") == customer

    await wait_for(joined, what="the visitor to join the customer")
    merges = (await read(http, stack, "profile", f"/v1/profiles/user_id:{ada}/merges")).json()["items"]
    assert [(m["kind"], m["rule"], m["absorbed_id"]) for m in merges] == [("merge", "alias", visitor)]

    await call(http, stack, "alias", {"previousId": ada, "userId": bob})

    async def refusal() -> dict[str, Any] | None:
        items = (await read(http, stack, "profile", f"/v1/profiles/user_id:{bob}/merges")).json()["items"]
        return next((m for m in items if m["kind"] == "refused"), None)

    refused = await wait_for(refusal, what="the refusal in the ledger")
    assert refused["absorbed_id"] == customer
    assert refused["reason"]["refused"] == "limit:user_id"
    assert await profile_id(http, stack, f"user_id:{ada}") == customer


async def test_a_segment_on_an_accounts_industry_follows_the_account(
    stack: Stack, http: httpx.AsyncClient
) -> None:
    tag = secrets.token_hex(4)
    company, key = f"acme-{tag}", f"retail_{tag}"
    buyers = [f"buyer-{tag}-{i}" for i in range(3)]
    created = await http.post(
        f"{stack.url('segment')}/v1/segments",
        headers=stack.admin(),
        json={
            "key": key,
            "name": "Buyers at retailers",
            "rule": {
                "all": [
                    {"account_trait": "industry", "op": "eq", "value": "Retail"},
                    {"account_trait": "name", "op": "starts_with", "value": f"Acme {tag}"},
                ]
            },
        },
    )
    assert created.status_code == 201, created.text
    traits = {"name": f"Acme {tag}", "industry": "Retail", "employees": 120, "plan": "enterprise"}
    for buyer in buyers:
        await call(http, stack, "group", {"userId": buyer, "groupId": company, "traits": traits})

    async def members() -> set[str]:
        found = await read(http, stack, "segment", f"/v1/segments/{key}/members?limit=100")
        assert found.status_code == 200, found.text
        return {item["profile_id"] for item in found.json()["items"]}

    ids = [await wait_for(lambda b=b: profile_id(http, stack, f"user_id:{b}"), what=b) for b in buyers]

    async def all_in() -> bool:
        return await members() == set(ids)

    await wait_for(all_in, what="the account's members to enter the segment")
    account = (await read(http, stack, "profile", f"/v1/accounts/{company}")).json()
    assert account["traits"] == traits
    assert sorted(account["members"]) == sorted(ids)
    person = (await read(http, stack, "profile", f"/v1/profiles/{ids[0]}")).json()
    assert [(a["group_id"], a["name"]) for a in person["accounts"]] == [(company, f"Acme {tag}")]
    unknown = await read(http, stack, "profile", f"/v1/accounts/nobody-{tag}")
    assert unknown.status_code == 404
    assert unknown.json()["error"]["code"] == "account_not_found"

    await call(
        http, stack, "group", {"userId": buyers[0], "groupId": company, "traits": {"industry": "Wholesale"}}
    )

    async def all_out() -> bool:
        return await members() == set()

    await wait_for(all_out, what="every member to leave when the industry changes")
