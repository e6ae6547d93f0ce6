"""Templates are tried out when a campaign or journey is saved, in the same sandbox and composing
workers (time and memory limits) as at send: one that cannot render safely is refused with 422
`invalid_template` saying where and why; what still fails at send is refused per recipient."""

from __future__ import annotations

import secrets
from typing import Any

import httpx
import pytest
from cdp_campaign import store
from cdp_campaign.domain.campaigns import CampaignSpec

from ..conftest import CampaignUnderTest, email_campaign

pytestmark = pytest.mark.integration

RECURSIVE = "{% macro f(n) %}{{ f(n+1) }}{% endmacro %}{{ f(0) }}"


def variant(key: str = "a", **fields: Any) -> dict[str, Any]:
    return {"key": key, "subject": "Hello", "body": "<p>Hi {{ profile.first_name }}</p>", **fields}


def journey(body: str) -> dict[str, Any]:
    return {
        "name": "Welcome",
        "trigger": {"type": "segment_entered", "segment_key": "seg-" + secrets.token_hex(4)},
        "steps": [
            {"type": "send", "content": variant("welcome")},
            {"type": "wait", "hours": 24},
            {"type": "send", "content": variant("reminder", body=body)},
        ],
    }


@pytest.mark.parametrize(
    ("body", "reason"),
    [
        (RECURSIVE, "recursed"),
        ("{% for i in range(100000000) %}x{% endfor %}", "range"),
        ("{% for i in range(10000) %}{% for j in range(10000) %}{{ i }}{% endfor %}{% endfor %}", ""),
        ("{{ 'x' * 90000 }}{{ 'x' * 90000 }}{{ 'x' * 90000 }}", "larger than"),
        ("{{ 'x' | center(2000000000) }}", ""),
        ("{{ ''.__class__.__mro__[1].__subclasses__() }}", "unsafe"),
        ("<p>Hi</p>\n{% if %}", "invalid"),
    ],
)
async def test_a_template_that_cannot_render_safely_is_refused_when_saved(
    http: httpx.AsyncClient, body: str, reason: str
) -> None:
    response = await http.post(
        "/v1/campaigns", json=email_campaign(variants=[variant(), variant("b", body=body)])
    )
    assert response.status_code == 422, response.text
    error = response.json()["error"]
    assert error["code"] == "invalid_template"
    assert reason in error["message"]
    assert error["details"]["variant"] == "b"
    assert error["details"]["field"] == "body"


async def test_the_reason_names_the_line_and_the_locale(http: httpx.AsyncClient) -> None:
    german = {"subject": "Hallo", "body": "<p>Hallo</p>\n<p>{{ profile.first_name }}</p>\n" + RECURSIVE}
    response = await http.post(
        "/v1/campaigns", json=email_campaign(variants=[variant(locales={"de": german})])
    )
    assert response.status_code == 422, response.text
    details = response.json()["error"]["details"]
    assert details["variant"] == "a"
    assert details["locale"] == "de"
    assert details["line"] == 3
    syntax = await http.post(
        "/v1/campaigns", json=email_campaign(variants=[variant(subject="Hi {{ profile.first_name }")])
    )
    assert syntax.json()["error"]["details"] | {"reason": None} == {
        "variant": "a",
        "field": "subject",
        "line": 1,
        "reason": None,
    }


async def test_a_change_to_a_bad_template_is_refused_and_the_campaign_kept(http: httpx.AsyncClient) -> None:
    created = await http.post("/v1/campaigns", json=email_campaign())
    assert created.status_code == 201, created.text
    cid = created.json()["id"]
    patched = await http.patch(f"/v1/campaigns/{cid}", json={"variants": [variant(body=RECURSIVE)]})
    assert patched.status_code == 422, patched.text
    assert patched.json()["error"]["code"] == "invalid_template"
    kept = await http.get(f"/v1/campaigns/{cid}")
    assert kept.json()["variants"] == created.json()["variants"]


async def test_journeys_are_checked_on_create_and_on_replace(http: httpx.AsyncClient) -> None:
    refused = await http.post("/v1/journeys", json=journey(RECURSIVE))
    assert refused.status_code == 422, refused.text
    assert refused.json()["error"]["code"] == "invalid_template"
    assert refused.json()["error"]["details"]["step"] == 2
    created = await http.post("/v1/journeys", json=journey("<p>Still there, {{ profile.first_name }}?</p>"))
    assert created.status_code == 201, created.text
    jid = created.json()["id"]
    replaced = await http.put(
        f"/v1/journeys/{jid}", json=journey("{{ 'x' * 90000 }}{{ 'x' * 90000 }}{{ 'x' * 90000 }}")
    )
    assert replaced.status_code == 422, replaced.text
    assert replaced.json()["error"]["details"]["step"] == 2
    assert (await http.get(f"/v1/journeys/{jid}")).json()["steps"] == created.json()["steps"]


async def test_templates_that_read_traits_a_person_may_lack_are_still_accepted(
    http: httpx.AsyncClient,
) -> None:
    for body in (
        "<p>{{ profile.age + 1 }}</p>",
        "<p>{{ profile.first_name.upper() }} {{ computed.orders_30d | default(0) }}</p>",
        "{% for p in recommendations %}{{ p.name }} {{ p.price }}{% endfor %}",
    ):
        response = await http.post("/v1/campaigns", json=email_campaign(variants=[variant(body=body)]))
        assert response.status_code == 201, (body, response.text)


async def test_a_test_send_that_cannot_render_answers_422_not_500(
    http: httpx.AsyncClient, campaign: CampaignUnderTest
) -> None:
    address = f"qa-{secrets.token_hex(3)}@example.com"
    lacking = await http.post(
        "/v1/campaigns", json=email_campaign(variants=[variant(body="{{ profile.age + 1 }}")])
    )
    sent = await http.post(f"/v1/campaigns/{lacking.json()['id']}/test-send", json={"address": address})
    assert sent.status_code == 422, sent.text
    assert sent.json()["error"]["code"] == "invalid_template"
    # A campaign saved before templates were checked when saved still fails only its sends.
    spec = CampaignSpec.model_validate(email_campaign(variants=[variant(body=RECURSIVE)]))
    async with campaign.ctx.session_factory() as session, session.begin():
        stored = await store.insert_definition(
            session=session,
            table=store.campaigns,
            id="cmp_" + secrets.token_hex(8),
            name=spec.name,
            status="draft",
            spec=spec.model_dump(mode="json"),
        )
    old = await http.post(f"/v1/campaigns/{stored['id']}/test-send", json={"address": address})
    assert old.status_code == 422, old.text
    assert "recursed" in old.json()["error"]["message"]
    assert campaign.mailbox.to(address) == []
