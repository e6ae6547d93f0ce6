"""What no service can store is refused at the edge: a NUL in a path or a query for every route,
anything unstorable in a declared body; a route that reads its own body is left to judge it."""

from __future__ import annotations

import json
from typing import Any

import httpx
from cdp_common.screening import UnstorableInputMiddleware, body_screening
from cdp_common.web import install_error_handlers
from fastapi import APIRouter, FastAPI, Request
from pydantic import BaseModel


class Named(BaseModel):
    name: str
    extra: Any = None


def app_with_routes() -> FastAPI:
    admin = APIRouter()

    @admin.post("/v1/things")
    async def create(body: Named) -> dict[str, Any]:
        return {"name": body.name}

    @admin.get("/v1/things/{thing_id}")
    async def read(thing_id: str) -> dict[str, str]:
        return {"id": thing_id}

    tracking = APIRouter()

    @tracking.post("/v1/track")
    async def track(request: Request) -> dict[str, int]:
        return {"bytes": len(await request.body())}

    app = FastAPI()
    install_error_handlers(app)
    app.add_middleware(UnstorableInputMiddleware)
    for router in (admin, tracking):
        app.include_router(router, dependencies=body_screening(router))
    return app


async def post(client: httpx.AsyncClient, path: str, text: str) -> httpx.Response:
    return await client.post(path, content=text, headers={"Content-Type": "application/json"})


async def test_refusals_say_what_and_where_and_valid_input_passes() -> None:
    transport = httpx.ASGITransport(app=app_with_routes())
    async with httpx.AsyncClient(transport=transport, base_url="http://screening") as client:
        cases = [
            (
                await post(client, "/v1/things", json.dumps({"name": "a\u0000"})),
                "nul_character",
                {"field": "name"},
            ),
            (
                await post(client, "/v1/things", json.dumps({"name": "\udc00"})),
                "invalid_encoding",
                {"field": "name"},
            ),
            (
                await post(client, "/v1/things", '{"name": "a", "extra": ' + "[" * 65 + "]" * 65 + "}"),
                "too_deep",
                None,
            ),
            (
                await post(client, "/v1/things", '{"name": "a", "extra": {"n": 18446744073709551616}}'),
                "number_out_of_range",
                {"field": "extra.n"},
            ),
            # Past what the parser reads at all: said as precisely.
            (await post(client, "/v1/things", "[" * 100_000 + "]" * 100_000), "too_deep", None),
            (await post(client, "/v1/things", '{"name": ' + "9" * 5000 + "}"), "number_out_of_range", None),
            (
                await client.post(
                    "/v1/things",
                    content=b'{"name": "\xed\xa0\x80"}',
                    headers={"Content-Type": "application/json"},
                ),
                "invalid_encoding",
                {"field": "name"},
            ),
            (
                await client.post(
                    "/v1/things", content=b'{"name": "\xff"}', headers={"Content-Type": "application/json"}
                ),
                "invalid_encoding",
                None,
            ),
            (await client.get("/v1/things/a%00b"), "nul_character", {"location": "path"}),
            (
                await client.get("/v1/things/a?cursor=x%00"),
                "nul_character",
                {"location": "query", "parameter": "cursor"},
            ),
        ]
        for response, code, details in cases:
            assert response.status_code == 400, response.text
            error = response.json()["error"]
            assert error["code"] == code
            if details is not None:
                assert error["details"] == details
        fine = await post(
            client, "/v1/things", json.dumps({"name": "Café 😀 \\u0000", "extra": [[1.5e300, 2**64 - 1]]})
        )
        assert fine.status_code == 200, fine.text
        assert fine.json() == {"name": "Café 😀 \\u0000"}
        # A route that reads its own body judges it itself (ingest refuses per event in a batch).
        own = await post(client, "/v1/track", json.dumps({"name": "a\u0000"}))
        assert own.status_code == 200
