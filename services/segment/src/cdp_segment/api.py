"""HTTP routes of the segment service: definitions, preview, members, explanations, history, models."""

from __future__ import annotations

from typing import Annotated, Any

from cdp_common.auth import Principal, require_scope
from cdp_common.deps import SessionDep
from cdp_common.jobs import get_job, jobs_router, latest_jobs
from cdp_common.privacy import access_router
from cdp_common.web import ApiError, PageParams, decode_cursor, encode_cursor, page_params
from fastapi import APIRouter, Depends, Path, Query, Request
from pydantic import BaseModel, ConfigDict, Field

from cdp_segment import handlers, store
from cdp_segment.consumer import SERVICE
from cdp_segment.handlers import SegmentContext
from cdp_segment.models import MODEL_JOB, MODEL_NAMES, submit_model_run
from cdp_segment.store import models as runs

MAX_BODY_BYTES = 256 * 1024

Reader = Annotated[Principal, Depends(require_scope("segments:read"))]
Writer = Annotated[Principal, Depends(require_scope("segments:write"))]
Ref = Annotated[str, Path(min_length=1, max_length=100)]
ProfileId = Annotated[str, Path(min_length=1, max_length=200)]
Page = Annotated[PageParams, Depends(page_params)]


def get_context(request: Request) -> SegmentContext:
    """Return the service's segment context."""
    context: SegmentContext = request.app.state.segment_context
    return context


def limit_body(request: Request) -> None:
    """Refuse bodies larger than a definition can reasonably be."""
    length = request.headers.get("content-length")
    if length is not None and length.isdigit() and int(length) > MAX_BODY_BYTES:
        raise ApiError(
            status=413, code="payload_too_large", message=f"the body exceeds {MAX_BODY_BYTES} bytes"
        )


ContextDep = Annotated[SegmentContext, Depends(get_context)]


class SegmentIn(BaseModel):
    """A new segment."""

    model_config = ConfigDict(extra="forbid")

    key: str = Field(min_length=1, max_length=64)
    name: str = Field(min_length=1, max_length=200)
    description: str = Field(default="", max_length=2000)
    rule: dict[str, Any]


class SegmentChange(BaseModel):
    """A new version of a segment."""

    model_config = ConfigDict(extra="forbid")

    name: str = Field(min_length=1, max_length=200)
    description: str = Field(default="", max_length=2000)
    rule: dict[str, Any]


class PreviewIn(BaseModel):
    """A rule to try before saving it."""

    model_config = ConfigDict(extra="forbid")

    rule: dict[str, Any]


def segment_body(segment: store.SegmentRow, job: dict[str, Any] | None = None) -> dict[str, Any]:
    """Render a segment: `status` is `building` until the job that builds it has made its members right."""
    return {
        "id": segment.id,
        "key": segment.key,
        "name": segment.name,
        "description": segment.description,
        "rule": segment.rule,
        "version": segment.version,
        "builtin": segment.builtin,
        "uses_clock": segment.uses_clock,
        "dependencies": list(segment.dependencies),
        "created_at": segment.created_at.isoformat(),
        "updated_at": segment.updated_at.isoformat(),
        "status": segment.status,
        "job": job,
    }


async def _job_of(session: Any, segment: store.SegmentRow) -> dict[str, Any] | None:
    return None if segment.job_id is None else await get_job(session=session, job_id=segment.job_id)


def _invalid(exc: handlers.InvalidSegment) -> ApiError:
    return ApiError(status=422, code="invalid_segment", message=exc.message, details={"where": exc.where})


def _not_found(ref: str) -> ApiError:
    return ApiError(status=404, code="not_found", message=f"no segment has the id or key {ref!r}")


async def _segment(session: Any, ref: str) -> store.SegmentRow:
    segment = await store.get_segment(session=session, ref=ref)
    if segment is None:
        raise _not_found(ref)
    return segment


def _cursor_value(cursor: str | None, field: str) -> Any:
    if cursor is None:
        return None
    value = decode_cursor(cursor).get(field)
    if value is None:
        raise ApiError(status=400, code="invalid_cursor", message="the cursor is not valid")
    return value


router = APIRouter(tags=["segments"], dependencies=[Depends(limit_body)])


@router.post("/v1/segments", status_code=201)
async def create_segment(
    body: SegmentIn, session: SessionDep, context: ContextDep, _: Writer
) -> dict[str, Any]:
    """Create a segment: answered at once, `building` with the job that computes its members."""
    try:
        segment, job = await handlers.create_segment(
            session=session,
            context=context,
            key=body.key,
            name=body.name,
            description=body.description,
            rule=body.rule,
        )
    except handlers.InvalidSegment as exc:
        raise _invalid(exc) from exc
    except handlers.SegmentConflict as exc:
        raise ApiError(status=409, code="conflict", message=str(exc)) from exc
    return segment_body(segment, job)


@router.get("/v1/segments")
async def list_segments(session: SessionDep, page: Page, _: Reader) -> dict[str, Any]:
    """List live segments by key."""
    rows = await store.page_segments(
        session=session, after_key=_cursor_value(page.cursor, "key"), limit=page.limit + 1
    )
    more = len(rows) > page.limit
    rows = rows[: page.limit]
    jobs = await latest_jobs(session=session, job_ids=[r.job_id for r in rows if r.job_id is not None])
    return {
        "items": [segment_body(r, jobs.get(r.job_id or "")) for r in rows],
        "next": encode_cursor({"key": rows[-1].key}) if more else None,
    }


@router.post("/v1/segments/preview")
async def preview_segment(
    body: PreviewIn, session: SessionDep, context: ContextDep, request: Request, _: Reader
) -> dict[str, Any]:
    """Return the size of a rule's audience and a sample, without saving it (an estimate past a few seconds)."""
    try:
        return await handlers.preview_segment(
            session=session,
            context=context,
            rule=body.rule,
            sample_size=request.app.state.preview_sample_size,
            timeout_s=request.app.state.preview_timeout_s,
        )
    except handlers.InvalidSegment as exc:
        raise _invalid(exc) from exc


@router.get("/v1/segments/{ref}")
async def get_segment(ref: Ref, session: SessionDep, _: Reader) -> dict[str, Any]:
    """Return one segment by id or key, with its status and the job that builds (or built) it."""
    segment = await _segment(session, ref)
    return segment_body(segment, await _job_of(session, segment))


@router.get("/v1/segments/{ref}/versions")
async def segment_versions(ref: Ref, session: SessionDep, _: Reader) -> dict[str, Any]:
    """Return every version of a segment's rule."""
    segment = await _segment(session, ref)
    return {"items": await store.list_versions(session=session, segment_id=segment.id), "next": None}


@router.put("/v1/segments/{ref}")
async def update_segment(
    ref: Ref, body: SegmentChange, session: SessionDep, context: ContextDep, _: Writer
) -> dict[str, Any]:
    """Store a new version of a segment: `building` with the job that brings its members in line."""
    try:
        segment, job = await handlers.update_segment(
            session=session,
            context=context,
            ref=ref,
            name=body.name,
            description=body.description,
            rule=body.rule,
        )
    except handlers.SegmentNotFound as exc:
        raise _not_found(ref) from exc
    except handlers.InvalidSegment as exc:
        raise _invalid(exc) from exc
    except handlers.SegmentConflict as exc:
        raise ApiError(status=409, code="conflict", message=str(exc)) from exc
    return segment_body(segment, job)


@router.delete("/v1/segments/{ref}", status_code=202)
async def delete_segment(ref: Ref, session: SessionDep, _: Writer) -> dict[str, Any]:
    """Delete a segment at once (its key stays taken); its members leave it through the job answered."""
    try:
        job = await handlers.delete_segment(session=session, ref=ref)
    except handlers.SegmentNotFound as exc:
        raise _not_found(ref) from exc
    except handlers.SegmentConflict as exc:
        raise ApiError(status=409, code="conflict", message=str(exc)) from exc
    return {"job": job}


@router.post("/v1/segments/{ref}/recompute", status_code=202)
async def recompute_segment(ref: Ref, session: SessionDep, _: Writer) -> dict[str, Any]:
    """Queue a job that recomputes a segment over every profile (who entered and left is its result)."""
    try:
        segment, job = await handlers.rebuild_segment(session=session, ref=ref)
    except handlers.SegmentNotFound as exc:
        raise _not_found(ref) from exc
    return {"job": job, "segment": segment_body(segment, job)}


@router.get("/v1/segments/{ref}/members")
async def segment_members(ref: Ref, session: SessionDep, page: Page, _: Reader) -> dict[str, Any]:
    """List a segment's members by profile id."""
    segment = await _segment(session, ref)
    rows = await store.page_members(
        session=session,
        segment_id=segment.id,
        after=_cursor_value(page.cursor, "after"),
        limit=page.limit + 1,
    )
    more = len(rows) > page.limit
    rows = rows[: page.limit]
    return {"items": rows, "next": encode_cursor({"after": rows[-1]["profile_id"]}) if more else None}


async def _history_page(
    session: Any, page: PageParams, segment_id: str | None, profile_id: str | None
) -> dict[str, Any]:
    before = _cursor_value(page.cursor, "before")
    if before is not None and not isinstance(before, int):
        raise ApiError(status=400, code="invalid_cursor", message="the cursor is not valid")
    rows = await store.page_history(
        session=session, segment_id=segment_id, profile_id=profile_id, before_id=before, limit=page.limit + 1
    )
    more = len(rows) > page.limit
    rows = rows[: page.limit]
    return {"items": rows, "next": encode_cursor({"before": rows[-1]["id"]}) if more else None}


@router.get("/v1/segments/{ref}/history")
async def segment_history(
    ref: Ref,
    session: SessionDep,
    page: Page,
    _: Reader,
    profile_id: Annotated[str | None, Query(max_length=200)] = None,
) -> dict[str, Any]:
    """List a segment's entries and exits, newest first, optionally for one profile."""
    segment = await _segment(session, ref)
    return await _history_page(session, page, segment.id, profile_id)


@router.get("/v1/segments/{ref}/explain/{profile_id}")
async def explain_membership(
    ref: Ref, profile_id: ProfileId, session: SessionDep, context: ContextDep, _: Reader
) -> dict[str, Any]:
    """Explain why a profile is in or out of a segment."""
    try:
        explanation = await handlers.explain_membership(
            session=session, context=context, ref=ref, profile_id=profile_id
        )
    except handlers.SegmentNotFound as exc:
        raise _not_found(ref) from exc
    if explanation is None:
        raise ApiError(status=404, code="not_found", message="segment has not heard of this profile")
    return explanation


@router.get("/v1/profiles/{profile_id}/segments")
async def profile_segments(profile_id: ProfileId, session: SessionDep, _: Reader) -> dict[str, Any]:
    """List the segments a profile is in."""
    return {"items": await store.profile_memberships(session=session, profile_id=profile_id), "next": None}


@router.get("/v1/profiles/{profile_id}/segments/history")
async def profile_history(
    profile_id: ProfileId, session: SessionDep, page: Page, _: Reader
) -> dict[str, Any]:
    """List a profile's entries and exits across segments, newest first."""
    return await _history_page(session, page, None, profile_id)


@router.get("/v1/profiles/{profile_id}/models")
async def profile_models(profile_id: ProfileId, session: SessionDep, _: Reader) -> dict[str, Any]:
    """Return the models' results for one profile (RFM, lifecycle, cluster, CLV and churn)."""
    row = await store.load_profile(session=session, profile_id=profile_id)
    if row is None:
        raise ApiError(status=404, code="not_found", message="segment has not heard of this profile")
    return {"profile_id": profile_id, "models": row.model}


async def _model_body(session: Any, name: str) -> dict[str, Any]:
    run = await store.get_model_run(session=session, model=name)
    job = await runs.latest_model_job(session=session, kind=MODEL_JOB, model=name)
    return {**(run or {"model": name, "ran_at": None}), "job": job}


@router.get("/v1/models")
async def list_models(session: SessionDep, _: Reader) -> dict[str, Any]:
    """Return the latest run of every model, with its parameters, summary and newest job."""
    return {"items": [await _model_body(session, name) for name in MODEL_NAMES], "next": None}


def _known_model(name: str) -> None:
    if name not in MODEL_NAMES:
        raise ApiError(status=404, code="not_found", message=f"models are {list(MODEL_NAMES)}")


@router.get("/v1/models/{name}")
async def get_model(
    name: Annotated[str, Path(max_length=30)], session: SessionDep, _: Reader
) -> dict[str, Any]:
    """Return the latest run of one model and its newest job (running, queued or finished)."""
    _known_model(name)
    body = await _model_body(session, name)
    if body["ran_at"] is None and body["job"] is None:
        raise ApiError(status=404, code="not_found", message=f"the {name} model has not run yet")
    return body


@router.post("/v1/models/{name}/run", status_code=202)
async def run_model(
    name: Annotated[str, Path(max_length=30)], session: SessionDep, context: ContextDep, _: Writer
) -> dict[str, Any]:
    """Queue a run of a model (the one queued or running, if there is one); answer its job."""
    _known_model(name)
    job, _new = await submit_model_run(session=session, name=name, at=context.clock())
    return {"job": job}


@router.get("/v1/computed-traits")
async def computed_traits(session: SessionDep, _: Reader) -> dict[str, Any]:
    """List the computed traits segment asked profile to maintain, with their state."""
    return {"items": await store.list_computed_traits(session=session), "next": None}


routers = [
    router,
    jobs_router(read_scope="segments:read", write_scope="segments:write"),
    access_router(service=SERVICE, export=store.export_profile),
]
