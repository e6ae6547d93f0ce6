"""Who is excluded from a gated purpose, as the other services ask it: the exclusions API and the catalogue."""

from __future__ import annotations

import secrets

import httpx
import pytest

pytestmark = pytest.mark.integration


def new_profile() -> str:
    return "p-" + secrets.token_hex(6)


async def decide(http: httpx.AsyncClient, profile_id: str, purpose: str, channel: str, status: str) -> None:
    response = await http.post(
        "/v1/consents",
        json={
            "profile_id": profile_id,
            "purpose": purpose,
            "channel": channel,
            "status": status,
            "source": "preference-centre",
        },
    )
    assert response.status_code == 201, response.text


async def test_a_refusal_on_any_channel_excludes_under_legitimate_interest(http: httpx.AsyncClient) -> None:
    withdrew, granted, silent, elsewhere = (new_profile() for _ in range(4))
    await decide(http, withdrew, "personalisation", "email", "granted")
    await decide(http, withdrew, "personalisation", "push", "withdrawn")
    await decide(http, granted, "personalisation", "email", "granted")
    await decide(http, elsewhere, "profiling_segmentation", "email", "denied")

    response = await http.post(
        "/v1/consents/exclusions",
        json={"purpose": "personalisation", "profile_ids": [withdrew, granted, silent, elsewhere, withdrew]},
    )
    assert response.status_code == 200, response.text
    assert response.json() == {
        "purpose": "personalisation",
        "basis": "legitimate_interest",
        "excluded": [withdrew],
    }

    again = await http.post(
        "/v1/consents/exclusions",
        json={"purpose": "profiling_segmentation", "profile_ids": [elsewhere, granted]},
    )
    assert again.json()["excluded"] == [elsewhere]


async def test_only_gated_purposes_are_answered(http: httpx.AsyncClient) -> None:
    response = await http.post(
        "/v1/consents/exclusions", json={"purpose": "email_marketing", "profile_ids": [new_profile()]}
    )
    assert response.status_code == 422
    assert response.json()["error"]["code"] == "unknown_purpose_or_channel"
    assert "personalisation" in response.json()["error"]["message"]
    empty = await http.post("/v1/consents/exclusions", json={"purpose": "analytics", "profile_ids": []})
    assert empty.status_code == 422


async def test_the_catalogue_says_what_each_gated_purpose_gates_and_rests_on(http: httpx.AsyncClient) -> None:
    catalogue = (await http.get("/v1/consents/catalogue")).json()
    gated = catalogue["gated_purposes"]
    assert set(gated) == {"profiling_segmentation", "personalisation", "analytics"}
    assert {g["basis"] for g in gated.values()} == {"legitimate_interest"}
    assert gated["personalisation"]["gates"].startswith("campaign")
