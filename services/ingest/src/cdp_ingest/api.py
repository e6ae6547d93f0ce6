"""HTTP routes of the ingest service: the tracking API and the admin API (sources, tokens)."""

from __future__ import annotations

import base64
import binascii
import json
from datetime import UTC, datetime, timedelta
from typing import Annotated, Any

from cdp_common.auth import SCOPES, Principal, require_scope
from cdp_common.deps import SessionDep
from cdp_common.privacy import access_router
from cdp_common.topics import TopicName
from cdp_common.web import ApiError, Page, PageParams, decode_cursor, encode_cursor, page_params
from fastapi import APIRouter, Depends, Path, Request
from pydantic import BaseModel, Field, field_validator

from cdp_ingest import handlers, store
from cdp_ingest.domain.calls import CallError, build_event
from cdp_ingest.metrics import EVENTS_REFUSED

tracking = APIRouter(prefix="/v1", tags=["tracking"])
admin = APIRouter(prefix="/v1", tags=["admin"])

PageDep = Annotated[PageParams, Depends(page_params)]


def _refuse(status: int, code: str, message: str, details: Any = None) -> ApiError:
    EVENTS_REFUSED.labels(code).inc()
    return ApiError(status=status, code=code, message=message, details=details)


async def read_json_body(request: Request, *, limit: int) -> dict[str, Any]:
    """Read a JSON object body of at most `limit` bytes (JSON sent as text/plain too)."""
    declared = request.headers.get("content-length")
    if declared is not None and declared.isdigit() and int(declared) > limit:
        raise _refuse(413, "payload_too_large", f"the body exceeds {limit} bytes")
    body = bytearray()
    async for chunk in request.stream():
        body.extend(chunk)
        if len(body) > limit:
            raise _refuse(413, "payload_too_large", f"the body exceeds {limit} bytes")
    try:
        document = json.loads(bytes(body).decode("utf-8"))
    except UnicodeDecodeError as exc:
        raise _refuse(400, "invalid_encoding", "the body is not valid UTF-8") from exc
    except json.JSONDecodeError as exc:
        raise _refuse(
            400, "invalid_json", f"the body is not valid JSON: {exc.msg}", {"position": exc.pos}
        ) from exc
    if not isinstance(document, dict):
        raise _refuse(400, "invalid_json", "the body must be a JSON object")
    return document


def write_key_of(request: Request, body: dict[str, Any]) -> str:
    """Return the write key from HTTP Basic (`writeKey:`) or the body's `writeKey`."""
    header = request.headers.get("authorization", "")
    scheme, _, credentials = header.partition(" ")
    if scheme.lower() == "basic" and credentials:
        try:
            user, _, _ = base64.b64decode(credentials.strip(), validate=True).decode().partition(":")
        except (binascii.Error, UnicodeDecodeError) as exc:
            raise _refuse(401, "invalid_write_key", "the Basic credentials are not valid base64") from exc
        if user:
            return user
    key = body.get("writeKey")
    if isinstance(key, str) and key:
        return key
    raise ApiError(
        status=401,
        code="missing_write_key",
        message="send the write key as HTTP Basic user name or as writeKey in the body",
        headers={"WWW-Authenticate": 'Basic realm="tracking"'},
    )


async def _accept(request: Request, call_type: str) -> dict[str, Any]:
    runtime = request.app.state.runtime
    settings = runtime.settings
    received_at = datetime.now(UTC)
    body = await read_json_body(request, limit=settings.max_event_bytes)
    source_id = await request.app.state.write_keys.source_of(write_key_of(request, body))
    if source_id is None:
        raise ApiError(status=401, code="invalid_write_key", message="the write key is unknown or disabled")
    try:
        event = build_event(call=body, call_type=call_type, source_id=source_id, received_at=received_at)
    except CallError as exc:
        raise _refuse(400, exc.code, exc.message, {"field": exc.field}) from exc
    try:
        await handlers.publish_events(
            publisher=runtime.publisher,
            topic=settings.topic(TopicName.EVENTS),
            events=[event],
            timeout_s=settings.produce_timeout_s,
        )
    except handlers.KafkaUnavailable as exc:
        raise ApiError(
            status=503,
            code="unavailable",
            message="events cannot be stored right now; retry later",
            headers={"Retry-After": "5"},
        ) from exc
    return {"success": True}


@tracking.post("/track")
async def track(request: Request) -> dict[str, Any]:
    """Record an action a user performed (Segment `track`)."""
    return await _accept(request, "track")


class SourceRequest(BaseModel):
    """A new source."""

    name: str = Field(min_length=1, max_length=200)


class TokenRequest(BaseModel):
    """A new API token."""

    name: str = Field(min_length=1, max_length=200)
    scopes: list[str] = Field(min_length=1, max_length=len(SCOPES))
    expires_in_days: int | None = Field(default=None, ge=1, le=3650)

    @field_validator("scopes")
    @classmethod
    def _known_scopes(cls, value: list[str]) -> list[str]:
        unknown = sorted(set(value) - SCOPES)
        if unknown:
            raise ValueError(f"unknown scopes {unknown}; known: {sorted(SCOPES)}")
        return value


SourceAdmin = Annotated[Principal, Depends(require_scope("sources:admin"))]
TokenAdmin = Annotated[Principal, Depends(require_scope("tokens:admin"))]


def _page(items: list[dict[str, Any]], limit: int, key: str) -> Page[dict[str, Any]]:
    next_cursor = encode_cursor({"after": items[-1][key]}) if len(items) == limit else None
    return Page[dict[str, Any]](items=items, next=next_cursor)


def _after(params: PageParams) -> str | None:
    if params.cursor is None:
        return None
    after = decode_cursor(params.cursor).get("after")
    if not isinstance(after, str):
        raise ApiError(status=400, code="invalid_cursor", message="the cursor is not valid")
    return after


@admin.post("/sources", status_code=201)
async def create_source(payload: SourceRequest, session: SessionDep, _: SourceAdmin) -> dict[str, Any]:
    """Create a source; the answer holds its write key, shown only this once."""
    return await handlers.create_source(session=session, name=payload.name)


@admin.get("/sources")
async def list_sources(session: SessionDep, params: PageDep, _: SourceAdmin) -> Page[dict[str, Any]]:
    """List sources."""
    items = await store.list_sources(session=session, after=_after(params), limit=params.limit)
    return _page(items, params.limit, "id")


@admin.post("/tokens", status_code=201)
async def create_token(
    request: Request, payload: TokenRequest, session: SessionDep, _: TokenAdmin
) -> dict[str, Any]:
    """Issue an API token; the answer holds the token, shown only this once."""
    expires_at = (
        datetime.now(UTC) + timedelta(days=payload.expires_in_days) if payload.expires_in_days else None
    )
    return await handlers.create_token(
        session=session,
        name=payload.name,
        scopes=payload.scopes,
        expires_at=expires_at,
        tokens_topic=request.app.state.runtime.settings.topic(TopicName.TOKENS),
    )


@admin.get("/tokens")
async def list_tokens(session: SessionDep, params: PageDep, _: TokenAdmin) -> Page[dict[str, Any]]:
    """List issued tokens (never their secrets)."""
    items = await store.list_tokens(session=session, after=_after(params), limit=params.limit)
    return _page(items, params.limit, "id")


@admin.delete("/tokens/{token_id}")
async def revoke_token(
    request: Request,
    token_id: Annotated[str, Path(min_length=1, max_length=100)],
    session: SessionDep,
    _: TokenAdmin,
) -> dict[str, Any]:
    """Revoke a token on every service."""
    token = await handlers.revoke_token(
        session=session,
        token_id=token_id,
        tokens_topic=request.app.state.runtime.settings.topic(TopicName.TOKENS),
    )
    if token is None:
        raise ApiError(status=404, code="token_not_found", message="no token with this id was issued")
    return token


async def _nothing_held(**_: Any) -> dict[str, Any] | None:
    """Ingest keeps no data per person: events live in Kafka and the profile service."""
    return None


routers = [tracking, admin, access_router(service=handlers.SERVICE, export=_nothing_held)]
