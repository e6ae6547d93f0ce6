"""HTTP routes of the ingest service: the tracking API, transactions, and the admin API
(sources, tracking plans, tokens)."""

from __future__ import annotations

import logging
import time
from collections.abc import AsyncIterator, Awaitable, Callable
from contextlib import asynccontextmanager
from datetime import UTC, datetime, timedelta
from typing import Annotated, Any
from urllib.parse import urlsplit

import orjson
from aiokafka import AIOKafkaProducer
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
from sqlalchemy import exc as sa_exc
from sqlalchemy.ext.asyncio import AsyncSession

from cdp_ingest import handlers, store
from cdp_ingest.batching import EventBatcher
from cdp_ingest.domain.calls import CALL_TYPES, Limits, build_event, check_shape, merge_batch_defaults
from cdp_ingest.domain.errors import CallError
from cdp_ingest.domain.plans import MODES, InvalidPlan, Violation, new_plan
from cdp_ingest.domain.ratelimit import RateLimiter, retry_after_header
from cdp_ingest.domain.transactions import parse_transaction, transaction_call
from cdp_ingest.intake import (
    client_ip,
    parse_json,
    parse_object,
    read_body,
    refuse,
    thorough_check_needed,
    write_key_of,
)
from cdp_ingest.metrics import EVENTS_REFUSED, RATE_LIMITED, payload_size, request_duration
from cdp_ingest.settings import Settings

logger = logging.getLogger(__name__)

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


class Intake:
    """The long-lived state of the tracking path: settings, limits, write keys, rate limits, producer."""

    def __init__(
        self, *, settings: Settings, write_keys: handlers.WriteKeys, producer: AIOKafkaProducer
    ) -> None:
        self.settings = settings
        self.producer = producer
        self.batcher = EventBatcher(
            producer=producer, topic=settings.topic(TopicName.EVENTS), timeout_s=settings.produce_timeout_s
        )
        self.limits = settings.limits()
        self.proxies = settings.proxy_networks()
        self.write_keys = write_keys
        self.rate_limiter = RateLimiter()


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
    except ApiError as exc:
        status = str(exc.status)
        raise
    finally:
        request_duration(endpoint, status).observe(time.perf_counter() - started)


async def _source_for(
    request: Request, intake: Intake, body: dict[str, Any], call_type: str
) -> handlers.SourceConfig:
    source = await intake.write_keys.source_of(write_key_of(request, body))
    if source is None:
        raise refuse(401, "invalid_write_key", "the write key is unknown or disabled", call_type=call_type)
    rate = source.rate_limit_per_s or intake.settings.rate_limit_per_s
    burst = source.rate_limit_burst or intake.settings.rate_limit_burst
    wait = intake.rate_limiter.wait_time(key=source.id, rate_per_s=rate, burst=burst, now=time.monotonic())
    if wait > 0:
        RATE_LIMITED.labels(source.id).inc()
        raise refuse(
            429,
            "rate_limited",
            f"the write key exceeds {rate:g} requests per second; retry later",
            {"retry_after_s": retry_after_header(wait)},
            source=source.id,
            call_type=call_type,
            headers={"Retry-After": retry_after_header(wait)},
        )
    return source


class _Screened:
    """Events that passed validation and the plan, and what was refused or flagged on the way."""

    def __init__(self) -> None:
        self.events: list[dict[str, Any]] = []
        self.rejected: list[dict[str, Any]] = []
        self.violations: list[tuple[str, Violation, bool]] = []


def _encoded_size(call: dict[str, Any], limits: Limits) -> int:
    try:
        return len(orjson.dumps(call))
    except orjson.JSONEncodeError:
        check_shape(call, limits)  # says which value cannot be encoded (an integer beyond 64 bits)
        raise CallError("invalid_item", "the item cannot be encoded as JSON", None) from None


def _screen(
    *,
    screened: _Screened,
    index: int,
    call: Any,
    call_type: str | None,
    source: handlers.SourceConfig,
    intake: Intake,
    received_at: datetime,
    ip: str | None,
    check_size: bool,
    thorough: bool = True,
) -> CallError | None:
    """Validate one call into `screened`; return why it was refused, if it was."""
    try:
        if not isinstance(call, dict):
            raise CallError("invalid_item", "each item must be a JSON object", None)
        kind = call_type or call.get("type")
        if not isinstance(kind, str) or kind not in CALL_TYPES:
            raise CallError("invalid_type", f"type must be one of {sorted(CALL_TYPES)}", "type")
        if check_size and _encoded_size(call, intake.limits) > intake.limits.max_event_bytes:
            raise CallError(
                "event_too_large", f"the event exceeds {intake.limits.max_event_bytes} bytes", None
            )
        event = build_event(
            call=call,
            call_type=kind,
            source_id=source.id,
            received_at=received_at,
            limits=intake.limits,
            client_ip=ip,
            thorough=thorough,
        )
        if source.plan is not None:
            verdict = source.plan.evaluate(event)
            refused = verdict.event is None
            screened.violations.extend((event["messageId"], v, refused) for v in verdict.violations)
            if verdict.refusal is not None:
                raise verdict.refusal
            assert verdict.event is not None
            event = verdict.event
    except CallError as exc:
        EVENTS_REFUSED.labels(
            source.id, call_type or str(call.get("type") if isinstance(call, dict) else None), exc.code
        ).inc()
        screened.rejected.append({"index": index, "error": exc.as_body()})
        return exc
    screened.events.append(event)
    return None


async def _publish_and_record(request: Request, intake: Intake, screened: _Screened, source_id: str) -> None:
    if screened.events:
        try:
            await handlers.publish_events(batcher=intake.batcher, events=screened.events)
        except handlers.KafkaUnavailable as exc:
            raise ApiError(
                status=503,
                code="unavailable",
                message="events cannot be stored right now; retry later",
                headers={"Retry-After": "5"},
            ) from exc
    if not screened.violations:
        return
    try:
        await handlers.record_violations(
            session_factory=request.app.state.runtime.session_factory,
            source_id=source_id,
            found=screened.violations,
        )
    except (sa_exc.SQLAlchemyError, OSError):
        # The events are in Kafka already; a lost violation record must not turn that into an error.
        logger.exception("tracking-plan violations could not be recorded", extra={"source": source_id})


async def _accept_call(request: Request, intake: Intake, call_type: str) -> Response:
    received_at = datetime.now(UTC)
    body_bytes = await read_body(request, limit=intake.limits.max_event_bytes, call_type=call_type)
    payload_size(call_type).observe(len(body_bytes))
    body = parse_object(body_bytes, call_type=call_type, max_depth=intake.limits.max_depth)
    source = await _source_for(request, intake, body, call_type)
    screened = _Screened()
    refusal = _screen(
        screened=screened,
        index=0,
        call=body,
        call_type=call_type,
        source=source,
        intake=intake,
        received_at=received_at,
        ip=client_ip(request, intake.proxies),
        check_size=False,
        # JSON carries a NUL only as an escape; without one in the body, no string needs searching.
        thorough=thorough_check_needed(body_bytes),
    )
    await _publish_and_record(request, intake, screened, source.id)
    if refusal is not None:
        raise ApiError(
            status=refusal.status,
            code=refusal.code,
            message=refusal.message,
            details={"field": refusal.field},
        )
    return AcceptedResponse()


def _batch_answer(screened: _Screened) -> Response:
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
    settings = intake.settings
    body_bytes = await read_body(request, limit=settings.max_batch_bytes, call_type="batch")
    payload_size("batch").observe(len(body_bytes))
    body = parse_object(body_bytes, call_type="batch", max_depth=intake.limits.max_depth)
    source = await _source_for(request, intake, body, "batch")
    items = body.get("batch")
    if not isinstance(items, list):
        raise refuse(
            400,
            "invalid_batch",
            "batch must be an array of calls",
            {"field": "batch"},
            source=source.id,
            call_type="batch",
        )
    if len(items) > settings.max_batch_events:
        raise refuse(
            413,
            "too_many_events",
            f"a batch holds at most {settings.max_batch_events} events",
            {"limit_events": settings.max_batch_events, "events": len(items)},
            source=source.id,
            call_type="batch",
        )
    screened = _Screened()
    ip = client_ip(request, intake.proxies)
    # JSON carries a NUL only as an escape; without one in the body, no string needs searching.
    thorough = thorough_check_needed(body_bytes)
    # Most batches carry no shared context, integrations or sentAt: then nothing is merged.
    shared = bool(body.get("context") or body.get("integrations")) or body.get("sentAt") is not None
    for index, item in enumerate(items):
        call = merge_batch_defaults(item, body) if shared and isinstance(item, dict) else item
        _screen(
            screened=screened,
            index=index,
            call=call,
            call_type=None,
            source=source,
            intake=intake,
            received_at=received_at,
            ip=ip,
            check_size=True,
            thorough=thorough,
        )
    await _publish_and_record(request, intake, screened, source.id)
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
    source = await _source_for(request, intake, {}, "transaction")
    screened = _Screened()
    ip = client_ip(request, intake.proxies)
    for index, line in documents:
        try:
            document = parse_json(line, call_type="transaction", max_depth=intake.limits.max_depth)
        except ApiError as exc:
            screened.rejected.append(
                {"index": index, "error": {"code": exc.code, "message": exc.message, "details": exc.details}}
            )
            continue
        try:
            call = transaction_call(parse_transaction(document))
        except CallError as exc:
            EVENTS_REFUSED.labels(source.id, "transaction", exc.code).inc()
            screened.rejected.append({"index": index, "error": exc.as_body()})
            continue
        _screen(
            screened=screened,
            index=index,
            call=call,
            call_type="track",
            source=source,
            intake=intake,
            received_at=received_at,
            ip=ip,
            check_size=bulk,
        )
    await _publish_and_record(request, intake, screened, source.id)
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
