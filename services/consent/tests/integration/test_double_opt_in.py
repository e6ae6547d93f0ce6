"""Double opt-in for e-mail end to end with a real SMTP server on loopback: the mail, the
single-use link, expiry, and the evidence kept with the grant."""

from __future__ import annotations

import re
import secrets
from typing import Any

import asyncpg
import httpx
import pytest
from cdp_common.testing import Mailbox, wait_for

from ..conftest import ConsentUnderTest

pytestmark = pytest.mark.integration

WORDING = "Yes, send me the monthly newsletter about new products. I can unsubscribe at any time."


async def request_opt_in(http: httpx.AsyncClient, profile_id: str, address: str) -> dict[str, Any]:
    response = await http.post(
        "/v1/opt-ins",
        json={
            "profile_id": profile_id,
            "email": address,
            "wording": WORDING,
            "wording_version": "newsletter-3",
            "evidence": {"ip": "192.0.2.10", "user_agent": "SignupBrowser/1.0", "form": "footer"},
        },
    )
    assert response.status_code == 202, response.text
    body: dict[str, Any] = response.json()
    return body


async def link_sent_to(mailbox: Mailbox, address: str) -> str:
    message = await wait_for(lambda: _first(mailbox, address), timeout=10, what="the confirmation mail")
    match = re.search(r"(http://\S+/v1/opt-ins/confirm\?token=\S+)", message.get_content())
    assert match is not None
    return match.group(1)


async def _first(mailbox: Mailbox, address: str) -> Any:
    messages = mailbox.to(address)
    return messages[0] if messages else None


async def test_confirmation_mail_grants_once_with_evidence(
    consent: ConsentUnderTest, http: httpx.AsyncClient, mailbox: Mailbox
) -> None:
    profile_id = "p-" + secrets.token_hex(6)
    address = f"ada.{secrets.token_hex(3)}@example.com"
    opt_in = await request_opt_in(http, profile_id, f" {address.upper()} ")
    assert opt_in["status"] == "pending"

    message = await wait_for(lambda: _first(mailbox, address), timeout=10, what="the confirmation mail")
    assert message["Subject"] == "Please confirm your e-mail address"
    assert not message.is_multipart(), "plain text only: no images, no tracking, no advertising"
    text = message.get_content()
    assert WORDING in text
    assert "newsletter-3" in text
    links = re.findall(r"https?://\S+", text)
    assert len(links) == 1, "the confirmation link is the only link"
    link = links[0]
    assert link.startswith(f"{consent.url}/v1/opt-ins/confirm?token=")
    for word in ("offer", "discount", "sale", "%", "buy"):
        assert word not in text.lower()

    state = (await http.get(f"/v1/consents/{profile_id}")).json()
    assert state["consents"] == []
    assert [p["id"] for p in state["pending_opt_ins"]] == [opt_in["id"]]
    check = {"purpose": "email_marketing", "channel": "email", "profile_ids": [profile_id]}
    assert (await http.post("/v1/consents/check", json=check)).json()["allowed"] == []

    async with httpx.AsyncClient(timeout=10, headers={"User-Agent": "ConfirmingBrowser/2.0"}) as public:
        page = await public.get(link)
        assert page.status_code == 200
        assert "form" in page.text
        assert address not in page.text.lower()
        assert profile_id not in page.text
        assert (await http.post("/v1/consents/check", json=check)).json()["allowed"] == [], (
            "opening is not confirming"
        )

        confirmed = await public.post(link)
        assert confirmed.status_code == 200
        assert confirmed.json()["status"] == "confirmed"
        assert profile_id not in confirmed.text
        assert address not in confirmed.text.lower()

        reused = await public.post(link)
        assert reused.status_code == 410
        assert reused.json()["error"]["code"] == "token_used"
        unknown = await public.post(
            f"{consent.url}/v1/opt-ins/confirm", params={"token": secrets.token_urlsafe(32)}
        )
        assert unknown.status_code == 404
        assert unknown.json()["error"]["code"] == "token_unknown"

    assert (await http.post("/v1/consents/check", json=check)).json()["allowed"] == [profile_id]
    history = (await http.get(f"/v1/consents/{profile_id}/history")).json()["items"]
    assert len(history) == 1
    entry = history[0]
    assert entry["source"] == "double_opt_in"
    assert entry["wording"] == WORDING
    assert entry["wording_version"] == "newsletter-3"
    proof = entry["evidence"]["double_opt_in"]
    assert proof["request"] == {"ip": "192.0.2.10", "user_agent": "SignupBrowser/1.0", "form": "footer"}
    assert proof["confirmation"] == {"ip": "127.0.0.1", "user_agent": "ConfirmingBrowser/2.0"}
    assert proof["confirmed_at"] >= proof["requested_at"]
    status = (await http.get(f"/v1/opt-ins/{opt_in['id']}")).json()
    assert status["status"] == "confirmed"


async def test_an_expired_link_is_refused_and_the_request_expires(
    consent: ConsentUnderTest, http: httpx.AsyncClient, mailbox: Mailbox
) -> None:
    profile_id = "p-" + secrets.token_hex(6)
    address = f"late.{secrets.token_hex(3)}@example.com"
    opt_in = await request_opt_in(http, profile_id, address)
    link = await link_sent_to(mailbox, address)
    conn = await asyncpg.connect(consent.database_url)
    try:
        # 48 hours pass.
        await conn.execute(
            "UPDATE consent.opt_ins SET expires_at = now() - interval '1 second' WHERE id = $1", opt_in["id"]
        )
    finally:
        await conn.close()

    async def expired() -> bool:
        status: str = (await http.get(f"/v1/opt-ins/{opt_in['id']}")).json()["status"]
        return status == "expired"

    await wait_for(expired, what="the scheduler to expire the request")
    async with httpx.AsyncClient(timeout=10) as public:
        refused = await public.post(link)
    assert refused.status_code == 410
    assert refused.json()["error"]["code"] == "token_expired"
    state = (await http.get(f"/v1/consents/{profile_id}")).json()
    assert state["consents"] == []
    assert state["pending_opt_ins"] == []


async def test_bad_opt_in_requests_are_refused_without_sending_mail(
    consent: ConsentUnderTest, http: httpx.AsyncClient, mailbox: Mailbox
) -> None:
    sent_before = len(mailbox.handler.messages)
    for body in (
        {"profile_id": "p", "email": "not-an-address"},
        {"profile_id": "p", "email": "a@example.com", "purpose": "mind_reading"},
        {"profile_id": "p", "email": "a@example.com", "evidence": {"ip": "300.1.1.1"}},
        {"profile_id": "", "email": "a@example.com"},
    ):
        response = await http.post("/v1/opt-ins", json=body)
        assert response.status_code == 422, body
    assert (await http.get("/v1/opt-ins/no-such-id")).status_code == 404
    async with httpx.AsyncClient(timeout=10) as public:
        response = await public.post(f"{consent.url}/v1/opt-ins/confirm")
        assert response.status_code == 422, "a confirmation without a token"
        response = await public.post(f"{consent.url}/v1/opt-ins/confirm", params={"token": "x" * 201})
        assert response.status_code == 422
    assert len(mailbox.handler.messages) == sent_before
