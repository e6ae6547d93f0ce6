"""What an app built on cdp_common says about itself: security and error answers on every
operation of its OpenAPI document, and the methods a path allows in `Allow`, 405 and OPTIONS."""

from __future__ import annotations

from typing import Annotated, Any

import httpx
from cdp_common.auth import Principal, require_scope
from cdp_common.openapi import ApiDescription, MethodsAllowed, build_openapi
from cdp_common.web import Page, PageParams, install_error_handlers, page_params
from fastapi import APIRouter, Depends, FastAPI, Path
from pydantic import BaseModel

Reader = Annotated[Principal, Depends(require_scope("profiles:read"))]


class Thing(BaseModel):
    name: str


def thing_app() -> FastAPI:
    router = APIRouter(prefix="/v1/things")

    @router.get("")
    async def list_things(_: Reader, page: Annotated[PageParams, Depends(page_params)]) -> Page[Thing]:
        return Page[Thing](items=[], next=page.cursor)

    @router.post("", status_code=201)
    async def create_thing(body: Thing, _: Reader) -> Thing:
        return body

    @router.post("/lookup")
    async def lookup_thing(body: Thing, _: Reader) -> Thing:
        return body

    @router.delete("/{thing_id}", status_code=204)
    async def delete_thing(thing_id: Annotated[str, Path(pattern=r"^[0-9a-f]{8}$")], _: Reader) -> None:
        return None

    @router.get("/public/{thing_id}")
    async def public_thing(thing_id: str) -> dict[str, Any]:
        return {"id": thing_id}

    app = FastAPI()
    install_error_handlers(app)
    app.include_router(router)
    app.add_middleware(MethodsAllowed, routes=lambda: app.router.routes)
    return app


def test_every_operation_declares_its_security_and_its_error_answers() -> None:
    document = build_openapi(thing_app(), ApiDescription(error_codes={409: ["thing_taken"]}))
    assert document["components"]["securitySchemes"]["bearerAuth"]["scheme"] == "bearer"
    assert "HTTPValidationError" not in document["components"]["schemas"]
    listing = document["paths"]["/v1/things"]["get"]
    assert listing["operationId"] == "list_things"
    assert listing["security"] == [{"bearerAuth": []}]
    assert listing["x-required-scope"] == "profiles:read"
    assert sorted(listing["responses"]) == ["200", "400", "401", "403", "422", "503"]
    assert "`invalid_cursor`" in listing["responses"]["400"]["description"]
    assert listing["responses"]["403"]["content"]["application/json"]["schema"] == {
        "$ref": "#/components/schemas/ErrorBody"
    }
    creating = document["paths"]["/v1/things"]["post"]
    assert sorted(creating["responses"]) == ["201", "400", "401", "403", "409", "413", "422", "503"]
    assert "`thing_taken`" in creating["responses"]["409"]["description"]
    deleting = document["paths"]["/v1/things/{thing_id}"]["delete"]
    assert "404" in deleting["responses"]
    public = document["paths"]["/v1/things/public/{thing_id}"]["get"]
    assert public["security"] == []
    assert "401" not in public["responses"]


async def test_a_path_answers_with_every_method_it_allows() -> None:
    transport = httpx.ASGITransport(app=thing_app())
    async with httpx.AsyncClient(transport=transport, base_url="http://things") as client:
        options = await client.options("/v1/things")
        assert options.status_code == 204
        assert options.headers["allow"] == "GET, OPTIONS, POST"
        wrong = await client.put("/v1/things")
        assert wrong.status_code == 405
        assert wrong.headers["allow"] == "GET, OPTIONS, POST"
        assert wrong.json()["error"]["code"] == "method_not_allowed"
        # The literal path wins over the parameter that would take "lookup" as an id.
        lookup = await client.delete("/v1/things/lookup")
        assert lookup.status_code == 405
        assert lookup.headers["allow"] == "OPTIONS, POST"
        assert (await client.delete("/v1/things/nothing/here")).status_code == 404
        assert (await client.get("/v1/things/public/abc")).json() == {"id": "abc"}
