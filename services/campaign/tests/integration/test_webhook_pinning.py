"""Webhooks connect to the address that was checked, for http and https alike: a name that answers
a different (private) address when called is never reached, and https keeps SNI and certificate
verification for the name. Two receivers on loopback stand in for the two answers: 127.0.0.2
(allowlisted, the "public" one) and 127.0.0.1 (not allowed, the "private" one)."""

from __future__ import annotations

import asyncio
import contextlib
import ssl
import subprocess
from collections.abc import AsyncIterator, Sequence
from dataclasses import dataclass, field
from pathlib import Path

import pytest
import uvicorn
from cdp_campaign.domain.addresses import AddressNotAllowed, parse_allowlist
from cdp_campaign.gateways import Rejected, SafeWebhookSender
from cdp_common.testing import free_port, port_open, wait_for
from fastapi import FastAPI, Request

pytestmark = pytest.mark.integration

PUBLIC = "127.0.0.2"
PRIVATE = "127.0.0.1"


@dataclass
class Rebinding:
    """A DNS resolver that answers one address, then another for every later question."""

    first: str
    then: str
    questions: list[str] = field(default_factory=list)

    def __call__(self, host: str, port: int) -> Sequence[str]:
        self.questions.append(host)
        return [self.first if len(self.questions) == 1 else self.then]


@dataclass
class Receivers:
    port: int
    certificate: Path
    hits: dict[str, list[str]]

    def trusting(self) -> ssl.SSLContext:
        """A TLS context that trusts the receivers' self-signed certificate (for hooks.example)."""
        return ssl.create_default_context(cafile=str(self.certificate))


def self_signed(directory: Path, name: str) -> tuple[Path, Path]:
    key, cert = directory / f"{name}.key", directory / f"{name}.pem"
    subprocess.run(
        [
            "openssl", "req", "-x509", "-newkey", "ec", "-pkeyopt", "ec_paramgen_curve:prime256v1",
            "-nodes", "-days", "2", "-subj", f"/CN={name}", "-addext", f"subjectAltName=DNS:{name}",
            "-keyout", str(key), "-out", str(cert),
        ],
        check=True,
        capture_output=True,
    )  # fmt: skip
    return key, cert


@pytest.fixture(scope="module", params=["https", "http"])
async def receivers(
    request: pytest.FixtureRequest, tmp_path_factory: pytest.TempPathFactory
) -> AsyncIterator[Receivers]:
    """The same receiver on both addresses and one port, over TLS (hooks.example) or plain http."""
    key, cert = self_signed(tmp_path_factory.mktemp("tls"), "hooks.example")
    hits: dict[str, list[str]] = {PUBLIC: [], PRIVATE: []}
    port = free_port()
    tls = {"ssl_keyfile": str(key), "ssl_certfile": str(cert)} if request.param == "https" else {}
    servers = []
    for address in (PUBLIC, PRIVATE):
        app = FastAPI()

        @app.post("/hook")
        async def hook(request: Request, address: str = address) -> dict[str, bool]:
            hits[address].append(request.headers["host"])
            return {"ok": True}

        server = uvicorn.Server(uvicorn.Config(app, host=address, port=port, log_config=None, **tls))  # type: ignore[arg-type]
        servers.append((server, asyncio.create_task(server.serve())))

    async def listening() -> bool:
        return port_open(port, PUBLIC) and port_open(port, PRIVATE)

    await wait_for(listening, what="the receivers")
    yield Receivers(port=port, certificate=cert, hits=hits)
    for server, serving in servers:
        server.should_exit = True
        with contextlib.suppress(BaseException):
            await asyncio.wait_for(serving, timeout=10)


async def test_a_name_that_answers_a_private_address_at_call_time_is_never_reached(
    receivers: Receivers, request: pytest.FixtureRequest
) -> None:
    url_scheme = request.node.callspec.params["receivers"]
    resolver = Rebinding(first=PUBLIC, then=PRIVATE)
    sender = SafeWebhookSender(
        key="secret",
        allowlist=parse_allowlist([f"{PUBLIC}/32"]),
        timeout_s=5,
        resolve=resolver,
        verify=receivers.trusting(),
    )
    url = f"{url_scheme}://hooks.example:{receivers.port}/hook"
    await sender.post(url=url, payload={"send_id": "snd_1"}, reference="snd_1")
    assert receivers.hits[PUBLIC][-1] == f"hooks.example:{receivers.port}"
    assert receivers.hits[PRIVATE] == []
    assert resolver.questions == ["hooks.example"], "the name is resolved once, when it is checked"
    # Asked again, the name now answers the private address: refused before any connection.
    with pytest.raises(AddressNotAllowed, match="not public"):
        await sender.post(url=url, payload={"send_id": "snd_2"}, reference="snd_2")
    assert receivers.hits[PRIVATE] == []


@pytest.mark.parametrize("receivers", ["https"], indirect=True)
async def test_https_to_a_pinned_address_still_verifies_the_certificate_for_the_name(
    receivers: Receivers,
) -> None:
    allowlist = parse_allowlist([f"{PUBLIC}/32"])
    before = len(receivers.hits[PUBLIC])
    other_name = SafeWebhookSender(
        key="secret",
        allowlist=allowlist,
        timeout_s=5,
        resolve=lambda *_: [PUBLIC],
        verify=receivers.trusting(),
    )
    with pytest.raises(Rejected, match=r"certificate is not valid for other\.example"):
        await other_name.post(
            url=f"https://other.example:{receivers.port}/hook", payload={}, reference="snd_3"
        )
    untrusted = SafeWebhookSender(key="secret", allowlist=allowlist, timeout_s=5, resolve=lambda *_: [PUBLIC])
    with pytest.raises(Rejected, match="certificate"):
        await untrusted.post(
            url=f"https://hooks.example:{receivers.port}/hook", payload={}, reference="snd_4"
        )
    assert len(receivers.hits[PUBLIC]) == before, "nothing was posted over an unverified connection"
