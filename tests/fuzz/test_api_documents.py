"""Each service's OpenAPI document is one a client generator can trust: security schemes and
each operation's security, every error response in the contract's error body, and paths that
answer OPTIONS and wrong methods with their whole `Allow`. A client generated from each document
(openapi-python-client) is imported and calls the running service."""

from __future__ import annotations

import base64
import importlib
import secrets
import subprocess
import sys
from pathlib import Path
from typing import Any

import httpx
import pytest
from cdp_common.testing import SERVICES, Stack

pytestmark = pytest.mark.e2e

GENERATOR = Path(sys.executable).parent / "openapi-python-client"


def operations(document: dict[str, Any]) -> list[tuple[str, str, dict[str, Any]]]:
    return [
        (method.upper(), path, operation)
        for path, item in document["paths"].items()
        for method, operation in item.items()
    ]


@pytest.mark.parametrize("service", SERVICES)
def test_every_operation_declares_its_security_and_its_errors(
    documents: dict[str, dict[str, Any]], service: str
) -> None:
    document = documents[service]
    schemes = document["components"]["securitySchemes"]
    assert schemes["bearerAuth"] == {**schemes["bearerAuth"], "type": "http", "scheme": "bearer"}
    assert schemes["writeKey"] == {**schemes["writeKey"], "type": "http", "scheme": "basic"}
    error_ref = {"$ref": "#/components/schemas/ErrorBody"}
    assert document["components"]["schemas"]["ErrorBody"]["required"] == ["error"]
    for method, path, operation in operations(document):
        where = f"{service} {method} {path}"
        assert "security" in operation, where
        responses = operation["responses"]
        errors = {status: r for status, r in responses.items() if status[0] in "45"}
        for status, response in errors.items():
            assert response["content"]["application/json"]["schema"] == error_ref, (where, status)
        if operation["security"] == [{"bearerAuth": []}]:
            assert {"401", "403"} <= errors.keys(), where
            assert operation["x-required-scope"], where
        if "{" in path:
            assert "404" in errors, where
        if "requestBody" in operation or operation.get("parameters"):
            assert {"400", "422"} <= errors.keys(), where
    tracking = {path for _, path, op in operations(document) if op["security"] == [{"writeKey": []}, {}]}
    assert tracking == ({f"/v1/{p}" for p in ("identify", "track", "page", "screen", "group", "alias")}
                        | {"/v1/batch", "/v1/import", "/v1/transactions"} if service == "ingest" else set())  # fmt: skip


async def test_paths_answer_with_every_method_they_allow(stack: Stack, http: httpx.AsyncClient) -> None:
    options = await http.options(f"{stack.url('ingest')}/v1/sources", headers=stack.admin())
    assert options.status_code == 204
    assert options.headers["allow"] == "GET, OPTIONS, POST"
    wrong = await http.put(f"{stack.url('ingest')}/v1/sources", headers=stack.admin())
    assert wrong.status_code == 405
    assert wrong.headers["allow"] == "GET, OPTIONS, POST"
    assert wrong.json()["error"]["code"] == "method_not_allowed"
    lookup = await http.delete(f"{stack.url('consent')}/v1/suppressions/lookup", headers=stack.admin())
    assert lookup.status_code == 405, lookup.text
    assert lookup.headers["allow"] == "OPTIONS, POST"
    unknown = await http.options(f"{stack.url('consent')}/v1/nothing-here", headers=stack.admin())
    assert unknown.status_code == 404
    first_page = await http.get(f"{stack.url('ingest')}/v1/tokens?cursor=", headers=stack.admin())
    assert first_page.status_code == 200, first_page.text
    assert first_page.json()["items"] == [] or first_page.json()["items"][0]["id"]


def generate(document_url: str, directory: Path, package: str) -> None:
    """Generate a client package from a served document into a directory, as its users would."""
    config = directory / "config.yaml"
    config.write_text(f"package_name_override: {package}\nproject_name_override: {package}\npost_hooks: []\n")
    spec = directory / f"{package}.json"
    spec.write_bytes(httpx.get(document_url, timeout=30).content)
    subprocess.run(
        [str(GENERATOR), "generate", "--path", str(spec), "--config", str(config), "--meta", "none",
         "--output-path", str(directory / package), "--fail-on-warning"],
        check=True,
        capture_output=True,
        timeout=300,
    )  # fmt: skip


@pytest.fixture(scope="module")
def clients(stack: Stack, tmp_path_factory: pytest.TempPathFactory) -> dict[str, Any]:
    """A generated client package per service, imported."""
    directory = tmp_path_factory.mktemp("clients")
    sys.path.insert(0, str(directory))
    packages = {}
    for name in SERVICES:
        package = f"cdp_{name}_client_{secrets.token_hex(3)}"
        generate(f"{stack.url(name)}/openapi.json", directory, package)
        packages[name] = importlib.import_module(package)
    return packages


def module(clients: dict[str, Any], service: str, path: str) -> Any:
    return importlib.import_module(f"{clients[service].__name__}.{path}")


async def test_clients_generated_from_the_documents_call_every_service(
    stack: Stack, clients: dict[str, Any]
) -> None:
    def authenticated(service: str) -> Any:
        return clients[service].AuthenticatedClient(base_url=stack.url(service), token=stack.admin_token)

    # ingest: an event with the source's write key (HTTP Basic), then the tokens with the admin token
    basic = base64.b64encode(f"{stack.write_key}:".encode()).decode()
    tracking = clients["ingest"].AuthenticatedClient(
        base_url=stack.url("ingest"), token=basic, prefix="Basic"
    )
    track = module(clients, "ingest", "api.tracking.track")
    body = module(clients, "ingest", "models").TrackCall.from_dict(
        {"userId": "client-1", "event": "Generated"}
    )
    sent = await track.asyncio_detailed(client=tracking, body=body)
    assert sent.status_code == 200, sent.content
    request = module(clients, "ingest", "models").TokenRequest(name="generated", scopes=["profiles:read"])
    token = await module(clients, "ingest", "api.admin.create_token").asyncio(
        client=authenticated("ingest"), body=request
    )
    tokens = await module(clients, "ingest", "api.admin.list_tokens").asyncio(
        client=authenticated("ingest"), limit=1000
    )
    assert token["id"] in {item.to_dict()["id"] for item in tokens.items}

    # profile: an unknown person is a typed error body
    missing = await module(clients, "profile", "api.profiles.get_profile").asyncio(
        client=authenticated("profile"), ref="user_id:nobody-" + secrets.token_hex(3)
    )
    assert isinstance(missing, module(clients, "profile", "models").ErrorBody)
    assert missing.error.code == "profile_not_found"

    # segment: the built-in segments
    segments = await module(clients, "segment", "api.segments.list_segments").asyncio(
        client=authenticated("segment"), limit=1000
    )
    assert "rfm_champions" in {item["key"] for item in segments.to_dict()["items"]}

    # campaign: a campaign created from the generated models
    spec = module(clients, "campaign", "models").CampaignSpec.from_dict(
        {
            "name": "From a generated client",
            "audience": {"type": "segment", "segment_key": "rfm_champions"},
            "variants": [{"key": "a", "subject": "Hi", "body": "<p>Hi {{ profile.first_name }}</p>"}],
        }
    )
    created = await module(clients, "campaign", "api.campaigns.create_campaign").asyncio_detailed(
        client=authenticated("campaign"), body=spec
    )
    assert created.status_code == 201, created.content

    # consent: the catalogue of purposes and channels; without a token, a typed 401
    catalogue = await module(clients, "consent", "api.consents.catalogue").asyncio_detailed(
        client=authenticated("consent")
    )
    assert catalogue.status_code == 200, catalogue.content
    anonymous = clients["consent"].Client(base_url=stack.url("consent"))
    refused = await module(clients, "consent", "api.consents.catalogue").asyncio(client=anonymous)
    assert refused.error.code == "unauthorized"
