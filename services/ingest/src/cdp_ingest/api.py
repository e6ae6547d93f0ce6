"""HTTP routes of the ingest service: the tracking API, transactions, and the admin API
(sources, tracking plans, tokens). The tracking routes read the request (`intake`), hand the
calls to the pipeline (`pipeline`) and answer with what it accepted and refused."""

from __future__ import annotations

import time
from collections.abc import AsyncIterator, Awaitable, Callable
from contextlib import asynccontextmanager
from datetime import UTC, datetime, timedelta
from typing import Annotated, Any
from urllib.parse import urlsplit

import orjson
from cdp_common.auth import SCOPES, Principal, authenticate, guards_scope, require_scope
from cdp_common.db import transaction
from cdp_common.deps import SessionDep
from cdp_common.privacy import access_router
from cdp_common.topics import TopicName
from cdp_common.web import (
    ApiError,
    Page,
    PageParams,
    cursor_position,
    decode_cursor,
    encode_cursor,
    next_cursor,
    page_params,
)
from fastapi import APIRouter, Depends, Path, Request
from fastapi.responses import JSONResponse, Response
from pydantic import BaseModel, Field, field_validator
from sqlalchemy.ext.asyncio import AsyncSession

from cdp_ingest import handlers, pipeline, store
from cdp_ingest.domain.plans import MODES, InvalidPlan, new_plan
from cdp_ingest.intake import (
    client_ip,
    parse_object,
    read_body,
    refuse,
    thorough_check_needed,
    write_key_of,
)
from cdp_ingest.metrics import payload_size, request_duration
from cdp_ingest.pipeline import Intake, Screened

tracking = APIRouter(prefix="/v1", tags=["tracking"])
admin = APIRouter(prefix="/v1", tags=["admin"])

PageDep = Annotated[PageParams, Depends(page_params)]
ACCEPTED = b'{"success":true}'
ACCEPTED_HEADERS = Response(ACCEPTED, media_type="application/json").raw_headers
SHORT_PATHS = {"identify": "i", "track": "t", "page": "p", "screen": "s", "group": "g", "alias": "a"}
NDJSON_TYPES = ("application/x-ndjson", "application/jsonl", "application/json-seq", "application/ndjson")


class AcceptedResponse(Response):
    """The answer to an accepted call, with the headers rendered once for every answer."""

    def __init__(self) -> None:
        self.status_code = 200
        self.body = ACCEPTED
        self.background = None
        # A list of its own: a middleware may append to an answer's headers.
        self.raw_headers = list(ACCEPTED_HEADERS)


def _intake(request: Request) -> Intake:
    intake: Intake = request.app.state.intake
    return intake


async def _measured(
    request: Request, endpoint: str, work: Callable[[Request, Intake], Awaitable[Response]]
) -> Response:
    started = time.perf_counter()
    status = "500"
    try:
        response = await work(request, _intake(request))
        status = str(response.status_code)
        return response
    except handlers.KafkaUnavailable as exc:
        status = "503"
        raise ApiError(
            status=503,
            code="unavailable",
            message="events cannot be stored right now; retry later",
            headers={"Retry-After": "5"},
        ) from exc
    except ApiError as exc:
        status = str(exc.status)
        raise
    finally:
        request_duration(endpoint, status).observe(time.perf_counter() - started)


async def _accept_call(request: Request, intake: Intake, call_type: str) -> Response:
    received_at = datetime.now(UTC)
    body_bytes = await read_body(request, limit=intake.limits.max_event_bytes, call_type=call_type)
    payload_size(call_type).observe(len(body_bytes))
    body = parse_object(body_bytes, call_type=call_type, max_depth=intake.limits.max_depth)
    refusal = await pipeline.accept_call(
        intake=intake,
        body=body,
        call_type=call_type,
        write_key=write_key_of(request, body),
        received_at=received_at,
        ip=client_ip(request, intake.proxies),
        # JSON carries a NUL only as an escape; without one in the body, no string needs searching.
        thorough=thorough_check_needed(body_bytes),
    )
    if refusal is not None:
        raise ApiError(
            status=refusal.status,
            code=refusal.code,
            message=refusal.message,
            details={"field": refusal.field},
        )
    return AcceptedResponse()


def _batch_answer(screened: Screened) -> Response:
    if not screened.events:
        raise ApiError(
            status=400,
            code="no_valid_event",
            message="no item of the batch is valid",
            details={"rejected": screened.rejected},
        )
    return Response(
        orjson.dumps({"success": True, "accepted": len(screened.events), "rejected": screened.rejected}),
        media_type="application/json",
    )


async def _accept_batch(request: Request, intake: Intake) -> Response:
    received_at = datetime.now(UTC)
    body_bytes = await read_body(request, limit=intake.settings.max_batch_bytes, call_type="batch")
    payload_size("batch").observe(len(body_bytes))
    body = parse_object(body_bytes, call_type="batch", max_depth=intake.limits.max_depth)
    screened = await pipeline.accept_batch(
        intake=intake,
        body=body,
        write_key=write_key_of(request, body),
        received_at=received_at,
        ip=client_ip(request, intake.proxies),
        # JSON carries a NUL only as an escape; without one in the body, no string needs searching.
        thorough=thorough_check_needed(body_bytes),
    )
    return _batch_answer(screened)


async def _accept_transactions(request: Request, intake: Intake) -> Response:
    received_at = datetime.now(UTC)
    settings = intake.settings
    media_type = request.headers.get("content-type", "").split(";", 1)[0].strip().lower()
    bulk = media_type in NDJSON_TYPES
    limit = settings.max_batch_bytes if bulk else intake.limits.max_event_bytes
    body_bytes = await read_body(request, limit=limit, call_type="transaction")
    payload_size("transactions").observe(len(body_bytes))
    if bulk:
        lines = body_bytes.split(b"\n")
        documents = [(index, line) for index, line in enumerate(lines) if line.strip()]
        if len(documents) > settings.max_batch_events:
            raise refuse(
                413,
                "too_many_events",
                f"a bulk request holds at most {settings.max_batch_events} transactions",
                {"limit_events": settings.max_batch_events, "events": len(documents)},
                call_type="transaction",
            )
    else:
        documents = [(0, body_bytes)]
    screened = await pipeline.accept_transactions(
        intake=intake,
        documents=documents,
        bulk=bulk,
        write_key=write_key_of(request, {}),
        received_at=received_at,
        ip=client_ip(request, intake.proxies),
    )
    if not bulk:
        if screened.rejected:
            error = screened.rejected[0]["error"]
            raise ApiError(status=400, code=error["code"], message=error["message"], details=error["details"])
        return Response(ACCEPTED, media_type="application/json")
    return _batch_answer(screened)


def _call_route(call_type: str) -> Callable[[Request], Awaitable[Response]]:
    async def accept(request: Request) -> Response:
        return await _measured(request, call_type, lambda r, i: _accept_call(r, i, call_type))

    accept.__doc__ = f"Accept one Segment `{call_type}` call."
    return accept


for _call_type, _short in SHORT_PATHS.items():
    tracking.add_api_route(f"/{_call_type}", _call_route(_call_type), methods=["POST"], name=_call_type)
    tracking.add_api_route(
        f"/{_short}",
        _call_route(_call_type),
        methods=["POST"],
        name=f"{_call_type}_short",
        include_in_schema=False,
    )


@tracking.post("/batch")
async def batch(request: Request) -> Response:
    """Accept a batch of calls; answer which items were refused and why."""
    return await _measured(request, "batch", _accept_batch)


@tracking.post("/b", include_in_schema=False)
async def batch_short(request: Request) -> Response:
    """Accept a batch (analytics.js's short path)."""
    return await _measured(request, "batch", _accept_batch)


@tracking.post("/import")
async def import_batch(request: Request) -> Response:
    """Accept historical calls, as a batch."""
    return await _measured(request, "import", _accept_batch)


@tracking.post("/transactions")
async def transactions(request: Request) -> Response:
    """Accept one transaction (JSON) or many (NDJSON), idempotent on (source, order id)."""
    return await _measured(request, "transactions", _accept_transactions)


@tracking.get("/projects/{write_key}/settings")
async def project_settings(
    request: Request, write_key: Annotated[str, Path(min_length=1, max_length=200)]
) -> JSONResponse:
    """Serve the settings document analytics.js loads first; it points the browser back at this service."""
    intake = _intake(request)
    if await intake.write_keys.source_of(write_key) is None:
        raise ApiError(status=404, code="source_not_found", message="no enabled source has this write key")
    public = intake.settings.ingest_public_url.rstrip("/")
    if public:
        parts = urlsplit(public)
        protocol, host = parts.scheme or "https", parts.netloc + parts.path
    else:
        protocol, host = request.url.scheme, request.url.netloc
    return JSONResponse(
        {
            "integrations": {
                "Segment.io": {
                    "apiKey": write_key,
                    "apiHost": f"{host}/v1",
                    "protocol": protocol,
                    "unbundledIntegrations": [],
                    "addBundledMetadata": True,
                    "maybeBundledConfigIds": {},
                }
            },
            "plan": {
                "track": {"__default": {"enabled": True, "integrations": {}}},
                "identify": {"__default": {"enabled": True}},
                "group": {"__default": {"enabled": True}},
            },
            "edgeFunction": {},
            "analyticsNextEnabled": True,
            "middlewareSettings": {},
            "enabledMiddleware": {},
            "metrics": {"sampleRate": 0},
            "legacyVideoPluginsEnabled": False,
            "remotePlugins": [],
        },
        headers={"Cache-Control": "public, max-age=60"},
    )


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


@guards_scope("sources:write")
async def _source_writer(request: Request) -> Principal:
    """Admit principals holding `sources:write` (or the older `sources:admin`)."""
    runtime = request.app.state.runtime
    principal = await authenticate(
        session_factory=runtime.session_factory,
        admin_token=runtime.settings.admin_token.get_secret_value(),
        authorization=request.headers.get("authorization"),
    )
    if not (principal.allows("sources:write") or principal.allows("sources:admin")):
        raise ApiError(
            status=403,
            code="forbidden",
            message="the token lacks the scope 'sources:write'",
            details={"required_scope": "sources:write"},
        )
    return principal


SourceAdmin = Annotated[Principal, Depends(_source_writer)]


@asynccontextmanager
async def _changing_sources(request: Request) -> AsyncIterator[AsyncSession]:
    """Open a transaction that changes sources; forget the cached write keys once it committed.

    Forgetting before the commit would let a call in between cache the old state again.
    """
    async with transaction(request.app.state.runtime.session_factory) as session:
        yield session
    _intake(request).write_keys.forget()


SourceId = Annotated[str, Path(min_length=1, max_length=100)]


class SourceChange(BaseModel):
    """Changes to a source: its name and its rate limit (null: the service default)."""

    model_config = {"extra": "forbid"}

    name: str | None = Field(default=None, min_length=1, max_length=200)
    rate_limit_per_s: float | None = Field(default=None, gt=0, le=1_000_000)
    rate_limit_burst: int | None = Field(default=None, ge=1, le=10_000_000)


class TrackingPlanRequest(BaseModel):
    """A tracking plan: a mode, a JSON Schema of `properties` per event name, and one of identify traits."""

    model_config = {"extra": "forbid"}

    mode: str = Field(description="allow, flag, omit or block")
    events: dict[str, dict[str, Any]] = Field(default_factory=dict, max_length=2000)
    identify: dict[str, Any] | None = None

    @field_validator("mode")
    @classmethod
    def _known_mode(cls, value: str) -> str:
        if value not in MODES:
            raise ValueError(f"mode must be one of {list(MODES)}")
        return value


TokenAdmin = Annotated[Principal, Depends(require_scope("tokens:admin"))]


def _page(items: list[dict[str, Any]], limit: int, key: str) -> Page[dict[str, Any]]:
    return Page[dict[str, Any]](items=items, next=next_cursor(items, limit=limit, key=key))


@admin.post("/sources", status_code=201)
async def create_source(request: Request, payload: SourceRequest, _: SourceAdmin) -> dict[str, Any]:
    """Create a source; the answer holds its write key, shown only this once."""
    async with _changing_sources(request) as session:
        return await handlers.create_source(session=session, name=payload.name)


@admin.get("/sources")
async def list_sources(session: SessionDep, params: PageDep, _: SourceAdmin) -> Page[dict[str, Any]]:
    """List sources."""
    items = await store.list_sources(session=session, after=cursor_position(params, str), limit=params.limit)
    return _page(items, params.limit, "id")


def _found(source: dict[str, Any] | None) -> dict[str, Any]:
    if source is None:
        raise ApiError(status=404, code="source_not_found", message="no source has this id")
    return source


@admin.get("/sources/{source_id}")
async def get_source(source_id: SourceId, session: SessionDep, _: SourceAdmin) -> dict[str, Any]:
    """Return one source (never its write key)."""
    return _found(await store.get_source(session=session, source_id=source_id))


@admin.patch("/sources/{source_id}")
async def change_source(
    request: Request, source_id: SourceId, payload: SourceChange, _: SourceAdmin
) -> dict[str, Any]:
    """Rename a source or change its rate limit."""
    values = payload.model_dump(exclude_unset=True)
    if values.get("name", "") is None:
        raise ApiError(status=422, code="invalid_request", message="name cannot be null")
    async with _changing_sources(request) as session:
        return _found(
            await store.update_source(session=session, source_id=source_id, values=values)
            if values
            else await store.get_source(session=session, source_id=source_id)
        )


@admin.post("/sources/{source_id}/rotate")
async def rotate_source_key(request: Request, source_id: SourceId, _: SourceAdmin) -> dict[str, Any]:
    """Replace a source's write key; the answer holds the new key, shown only this once."""
    async with _changing_sources(request) as session:
        return _found(await handlers.rotate_write_key(session=session, source_id=source_id))


@admin.post("/sources/{source_id}/disable")
async def disable_source(request: Request, source_id: SourceId, _: SourceAdmin) -> dict[str, Any]:
    """Disable a source: its write key gets 401 from now on."""
    async with _changing_sources(request) as session:
        return _found(await handlers.set_source_enabled(session=session, source_id=source_id, enabled=False))


@admin.post("/sources/{source_id}/enable")
async def enable_source(request: Request, source_id: SourceId, _: SourceAdmin) -> dict[str, Any]:
    """Enable a disabled source again."""
    async with _changing_sources(request) as session:
        return _found(await handlers.set_source_enabled(session=session, source_id=source_id, enabled=True))


@admin.put("/sources/{source_id}/tracking-plan")
async def put_tracking_plan(
    request: Request, source_id: SourceId, payload: TrackingPlanRequest, _: SourceAdmin
) -> dict[str, Any]:
    """Set (or replace) a source's tracking plan."""
    document = payload.model_dump()
    try:
        new_plan(document)
    except InvalidPlan as exc:
        raise ApiError(status=422, code="invalid_tracking_plan", message=str(exc)) from exc
    async with _changing_sources(request) as session:
        _found(await store.get_source(session=session, source_id=source_id))
        await store.put_tracking_plan(session=session, source_id=source_id, document=document)
        plan = await store.get_tracking_plan(session=session, source_id=source_id)
    assert plan is not None
    return plan


@admin.get("/sources/{source_id}/tracking-plan")
async def get_tracking_plan(source_id: SourceId, session: SessionDep, _: SourceAdmin) -> dict[str, Any]:
    """Return a source's tracking plan."""
    _found(await store.get_source(session=session, source_id=source_id))
    plan = await store.get_tracking_plan(session=session, source_id=source_id)
    if plan is None:
        raise ApiError(status=404, code="tracking_plan_not_found", message="the source has no tracking plan")
    return plan


@admin.get("/sources/{source_id}/violations")
async def list_violations(
    source_id: SourceId, session: SessionDep, params: PageDep, _: SourceAdmin
) -> Page[dict[str, Any]]:
    """List the tracking-plan violations of a source, newest first."""
    _found(await store.get_source(session=session, source_id=source_id))
    before = None
    if params.cursor is not None:
        before = decode_cursor(params.cursor).get("before")
        if not isinstance(before, int):
            raise ApiError(status=400, code="invalid_cursor", message="the cursor is not valid")
    items = await store.list_violations(
        session=session, source_id=source_id, before=before, limit=params.limit
    )
    next_cursor = encode_cursor({"before": items[-1]["id"]}) if len(items) == params.limit else None
    return Page[dict[str, Any]](items=items, next=next_cursor)


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
    items = await store.list_tokens(session=session, after=cursor_position(params, str), limit=params.limit)
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
