"""The real webhook sender, HTTP SMS provider and consent gate against a server on loopback
(allowlisted): signed bodies, no redirects followed, failures told apart, questions to the
consent service asked again when it is briefly unavailable, and fail closed when it stays so."""

from __future__ import annotations

import asyncio
import contextlib
import hashlib
import hmac
from collections.abc import AsyncIterator
from datetime import UTC, datetime
from typing import Any

import httpx
import pytest
import uvicorn
from cdp_campaign.domain.addresses import AddressNotAllowed, parse_allowlist
from cdp_campaign.gateways import (
    ConsentUnavailable,
    HttpConsentGate,
    HttpSmsProvider,
    Rejected,
    SafeWebhookSender,
    TemporaryFailure,
)
from cdp_common.testing import free_port, wait_for
from fastapi import FastAPI, Request
from fastapi.responses import JSONResponse, RedirectResponse

pytestmark = pytest.mark.integration

received: list[tuple[str, dict[str, str], bytes]] = []
consent_calls: list[str] = []


@pytest.fixture(scope="module")
async def receiver() -> AsyncIterator[str]:
    app = FastAPI()

    @app.post("/hook")
    async def hook(request: Request) -> dict[str, bool]:
        received.append(("hook", dict(request.headers), await request.body()))
        return {"ok": True}

    @app.post("/moved")
    async def moved() -> RedirectResponse:
        return RedirectResponse("http://169.254.169.254/latest/meta-data/", status_code=302)

    @app.post("/sms")
    async def sms(request: Request) -> JSONResponse:
        body: dict[str, Any] = await request.json()
        if request.headers.get("authorization") != "Bearer sms-key":
            return JSONResponse({"error": "unauthorised"}, status_code=401)
        if body["to"].endswith("0000"):
            return JSONResponse({"error": "unknown number"}, status_code=400)
        if body["to"].endswith("5030"):
            return JSONResponse({"error": "busy"}, status_code=503)
        received.append(("sms", {}, body["body"].encode()))
        return JSONResponse({"id": "m1"})

    @app.post("/v1/consents/check")
    async def check(request: Request) -> JSONResponse:
        consent_calls.append("check")
        body: dict[str, Any] = await request.json()
        if consent_calls.count("check") == 1:
            return JSONResponse({"error": "starting"}, status_code=503)
        return JSONResponse(
            {"allowed": body["profile_ids"][:1], "refused": {body["profile_ids"][1]: "withdrawn"}}
        )

    @app.post("/v1/suppressions/lookup")
    async def lookup() -> JSONResponse:
        consent_calls.append("lookup")
        return JSONResponse({"error": "down"}, status_code=503)

    @app.post("/v1/consents")
    async def record() -> JSONResponse:
        consent_calls.append("record")
        return JSONResponse({"error": "down"}, status_code=503)

    port = free_port()
    server = uvicorn.Server(uvicorn.Config(app, host="127.0.0.1", port=port, log_config=None))
    serving = asyncio.create_task(server.serve())

    async def up() -> bool:
        try:
            async with httpx.AsyncClient() as client:
                return (await client.get(f"http://127.0.0.1:{port}/docs")).status_code == 200
        except httpx.HTTPError:
            return False

    await wait_for(up, what="the receiver")
    yield f"http://127.0.0.1:{port}"
    server.should_exit = True
    with contextlib.suppress(BaseException):
        await asyncio.wait_for(serving, timeout=10)


async def test_webhooks_are_signed_and_redirects_are_not_followed(receiver: str) -> None:
    sender = SafeWebhookSender(key="secret", allowlist=parse_allowlist(["127.0.0.1/32"]), timeout_s=2)
    await sender.post(url=f"{receiver}/hook", payload={"send_id": "snd_1", "body": "hi"}, reference="snd_1")
    _, headers, body = received[-1]
    timestamp, signature = (part.split("=", 1)[1] for part in headers["x-cdp-signature"].split(","))
    expected = hmac.new(b"secret", timestamp.encode() + b"." + body, hashlib.sha256).hexdigest()
    assert hmac.compare_digest(signature, expected)
    assert headers["x-cdp-delivery"] == "snd_1"
    with pytest.raises(Rejected, match="redirect"):
        await sender.post(url=f"{receiver}/moved", payload={}, reference="snd_2")
    strict = SafeWebhookSender(key="secret", allowlist=[], timeout_s=2)
    with pytest.raises(AddressNotAllowed):
        await strict.post(url=f"{receiver}/hook", payload={}, reference="snd_3")


async def test_the_http_sms_provider_tells_refusals_from_temporary_failures(receiver: str) -> None:
    async with httpx.AsyncClient(timeout=5) as client:
        provider = HttpSmsProvider(client=client, url=f"{receiver}/sms", token="sms-key")
        await provider.send_sms(to="+4915112345678", body="Hi Ada", reference="snd_1")
        assert received[-1] == ("sms", {}, b"Hi Ada")
        with pytest.raises(Rejected):
            await provider.send_sms(to="+4915110000000", body="x", reference="snd_2")
        with pytest.raises(TemporaryFailure):
            await provider.send_sms(to="+4915111115030", body="x", reference="snd_3")
        unconfigured = HttpSmsProvider(client=client, url="", token="")
        with pytest.raises(Rejected):
            await unconfigured.send_sms(to="+4915112345678", body="x", reference="snd_4")


async def test_the_consent_gate_asks_again_and_fails_closed(receiver: str) -> None:
    async with httpx.AsyncClient(timeout=5) as client:
        gate = HttpConsentGate(client=client, base_url=receiver, token="t")
        verdicts = await gate.check(profile_ids=["p1", "p2"], purpose="email_marketing", channel="email")
        assert verdicts.allowed == {"p1"}
        assert verdicts.refused == {"p2": "withdrawn"}
        assert consent_calls.count("check") == 2, "a 503 is asked again"
        with pytest.raises(ConsentUnavailable, match="503"):
            await gate.is_suppressed(kind="email", value="a@example.com")
        assert consent_calls.count("lookup") == 1 + len(HttpConsentGate.RETRY_DELAYS_S)
        with pytest.raises(ConsentUnavailable, match="503"):
            await gate.withdraw(
                profile_id="p1", purpose="email_marketing", channel="email", at=datetime.now(UTC)
            )
        assert consent_calls.count("record") == 1, "a withdrawal is not repeated by the gate"
        nowhere = HttpConsentGate(client=client, base_url=f"http://127.0.0.1:{free_port()}", token="t")
        with pytest.raises(ConsentUnavailable, match="unreachable"):
            await nowhere.check(profile_ids=["p1"], purpose="email_marketing", channel="email")
