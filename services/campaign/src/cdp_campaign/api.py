"""HTTP routes of the campaign service: campaigns, journeys, reports, tracking links, privacy."""

from __future__ import annotations

import base64
from typing import Annotated, Any

from cdp_common.auth import Principal, require_scope
from cdp_common.deps import SessionDep
from cdp_common.privacy import access_router
from cdp_common.web import ApiError, Page, PageParams, cursor_position, next_cursor, page_params
from fastapi import APIRouter, Depends, Header, Path, Request
from fastapi.responses import HTMLResponse, RedirectResponse, Response
from pydantic import BaseModel, ConfigDict, Field

from cdp_campaign import delivery, handlers, reports, store
from cdp_campaign.context import SERVICE, CampaignContext, new_id
from cdp_campaign.domain.campaigns import CampaignError, CampaignPatch, CampaignSpec, Status, apply_patch
from cdp_campaign.domain.journeys import JourneySpec
from cdp_campaign.domain.tokens import InvalidToken, read_token
from cdp_campaign.gateways import ConsentUnavailable
from cdp_campaign.metrics import TRACKING

Reader = Annotated[Principal, Depends(require_scope("campaigns:read"))]
Writer = Annotated[Principal, Depends(require_scope("campaigns:write"))]
PageDep = Annotated[PageParams, Depends(page_params)]
Id = Annotated[str, Path(min_length=1, max_length=100)]

campaigns_router = APIRouter(prefix="/v1/campaigns", tags=["campaigns"])
journeys_router = APIRouter(prefix="/v1/journeys", tags=["journeys"])
tracking_router = APIRouter(prefix="/v1/t", tags=["tracking"], include_in_schema=False)

_STATUS_OF_CODE = {
    "not_found": 404,
    "invalid_transition": 409,
    "suppressed": 409,
    "consent_unavailable": 503,
    "composing_unavailable": 503,
    # The mail server is a dependency: when it cannot take a test e-mail, the caller retries.
    "smtp_failed": 503,
}


def _context(request: Request) -> CampaignContext:
    ctx: CampaignContext = request.app.state.campaign
    return ctx


ContextDep = Annotated[CampaignContext, Depends(_context)]


def _api_error(exc: CampaignError) -> ApiError:
    status = _STATUS_OF_CODE.get(exc.code, 422)
    return ApiError(
        status=status,
        code=exc.code,
        message=str(exc),
        details=exc.details,
        headers={"Retry-After": "5"} if status == 503 else None,
    )


# --- campaigns ----------------------------------------------------------------------------------


@campaigns_router.post("", status_code=201)
async def create_campaign(
    body: CampaignSpec, session: SessionDep, _: Writer, ctx: ContextDep
) -> dict[str, Any]:
    """Create a campaign as a draft; its templates are tried out first (422 invalid_template)."""
    try:
        return handlers.campaign_view(await handlers.create_campaign(session=session, ctx=ctx, spec=body))
    except CampaignError as exc:
        raise _api_error(exc) from exc


@campaigns_router.get("")
async def list_campaigns(session: SessionDep, _: Reader, page: PageDep) -> Page[dict[str, Any]]:
    """List campaigns."""
    rows = await store.list_definitions(
        session=session, table=store.campaigns, after=cursor_position(page, str), limit=page.limit
    )
    return Page[dict[str, Any]](
        items=[handlers.campaign_view(r) for r in rows], next=next_cursor(rows, limit=page.limit, key="id")
    )


@campaigns_router.get("/{campaign_id}")
async def get_campaign(campaign_id: Id, session: SessionDep, _: Reader) -> dict[str, Any]:
    """Return one campaign."""
    try:
        return handlers.campaign_view(await handlers.load_campaign(session=session, campaign_id=campaign_id))
    except CampaignError as exc:
        raise _api_error(exc) from exc


@campaigns_router.patch("/{campaign_id}")
async def patch_campaign(
    campaign_id: Id, body: CampaignPatch, session: SessionDep, _: Writer, ctx: ContextDep
) -> dict[str, Any]:
    """Change a draft, scheduled or paused campaign; its templates are tried out first."""
    try:
        row = await handlers.load_campaign(session=session, campaign_id=campaign_id)
        spec = apply_patch(spec=CampaignSpec.model_validate(row["spec"]), patch=body)
        return handlers.campaign_view(
            await handlers.update_campaign(session=session, ctx=ctx, campaign_id=campaign_id, spec=spec)
        )
    except CampaignError as exc:
        raise _api_error(exc) from exc
    except ValueError as exc:
        raise ApiError(status=422, code="invalid_campaign", message=str(exc)) from exc


@campaigns_router.delete("/{campaign_id}", status_code=204)
async def delete_campaign(campaign_id: Id, session: SessionDep, _: Writer) -> None:
    """Delete a draft."""
    try:
        await handlers.delete_campaign(session=session, campaign_id=campaign_id)
    except CampaignError as exc:
        raise _api_error(exc) from exc


@campaigns_router.post("/{campaign_id}/schedule")
async def schedule_campaign(
    campaign_id: Id, session: SessionDep, _: Writer, ctx: ContextDep
) -> dict[str, Any]:
    """Schedule a draft: now, at its time, or recurring."""
    try:
        return handlers.campaign_view(
            await handlers.schedule_campaign(session=session, ctx=ctx, campaign_id=campaign_id)
        )
    except CampaignError as exc:
        raise _api_error(exc) from exc


async def _set_status(
    session: SessionDep, ctx: CampaignContext, campaign_id: str, target: Status
) -> dict[str, Any]:
    try:
        row = await handlers.set_campaign_status(
            session=session, ctx=ctx, campaign_id=campaign_id, target=target
        )
        return handlers.campaign_view(row)
    except CampaignError as exc:
        raise _api_error(exc) from exc


@campaigns_router.post("/{campaign_id}/pause")
async def pause_campaign(campaign_id: Id, session: SessionDep, _: Writer, ctx: ContextDep) -> dict[str, Any]:
    """Pause a campaign: queued sends wait, triggers stop."""
    return await _set_status(session, ctx, campaign_id, Status.PAUSED)


@campaigns_router.post("/{campaign_id}/resume")
async def resume_campaign(campaign_id: Id, session: SessionDep, _: Writer, ctx: ContextDep) -> dict[str, Any]:
    """Resume a paused campaign."""
    return await _set_status(session, ctx, campaign_id, Status.RUNNING)


@campaigns_router.post("/{campaign_id}/complete")
async def complete_campaign(
    campaign_id: Id, session: SessionDep, _: Writer, ctx: ContextDep
) -> dict[str, Any]:
    """End a campaign for good."""
    return await _set_status(session, ctx, campaign_id, Status.COMPLETED)


class TestSendRequest(BaseModel):
    """Where to send a test e-mail, and whose data to render it with."""

    model_config = ConfigDict(extra="forbid")

    address: str = Field(min_length=3, max_length=320)
    variant: str | None = Field(default=None, max_length=50)
    profile_id: str | None = Field(default=None, max_length=200)


@campaigns_router.post("/{campaign_id}/test-send")
async def send_test_email(
    campaign_id: Id, body: TestSendRequest, session: SessionDep, _: Writer, ctx: ContextDep
) -> dict[str, Any]:
    """E-mail one rendering of a variant to an address; not tracked, not counted."""
    try:
        return await delivery.send_test_email(
            session=session,
            ctx=ctx,
            campaign_id=campaign_id,
            address=body.address,
            variant_key=body.variant,
            profile_id=body.profile_id,
        )
    except CampaignError as exc:
        raise _api_error(exc) from exc


@campaigns_router.get("/{campaign_id}/report")
async def campaign_report(campaign_id: Id, session: SessionDep, _: Reader) -> dict[str, Any]:
    """Return the KPIs per variant and holdout, uplift with its confidence interval, ROI."""
    try:
        return await reports.campaign_report(session=session, campaign_id=campaign_id)
    except CampaignError as exc:
        raise _api_error(exc) from exc


@campaigns_router.get("/{campaign_id}/recipients/{profile_id}")
async def campaign_timeline(
    campaign_id: Id, profile_id: Id, session: SessionDep, _: Reader
) -> dict[str, Any]:
    """Return what happened to one recipient: sent, or skipped and why, and their engagement."""
    try:
        await handlers.load_campaign(session=session, campaign_id=campaign_id)
    except CampaignError as exc:
        raise _api_error(exc) from exc
    items = await store.timeline(
        session=session, source="campaign", source_id=campaign_id, profile_id=profile_id
    )
    return {"campaign_id": campaign_id, "profile_id": profile_id, "sends": items}


# --- journeys -------------------------------------------------------------------------------------


def _journey_view(row: dict[str, Any]) -> dict[str, Any]:
    return {
        "id": row["id"],
        "status": row["status"],
        **row["spec"],
        "created_at": row["created_at"],
        "updated_at": row["updated_at"],
    }


async def _journey(session: SessionDep, journey_id: str, for_update: bool = False) -> dict[str, Any]:
    row = await store.get_definition(
        session=session, table=store.journeys, id=journey_id, for_update=for_update
    )
    if row is None:
        raise ApiError(status=404, code="not_found", message=f"no journey {journey_id!r}")
    return row


async def _check_journey_templates(ctx: CampaignContext, spec: JourneySpec) -> None:
    try:
        await handlers.check_templates(
            composer=ctx.composer, name=spec.name, contents=handlers.journey_contents(spec)
        )
    except CampaignError as exc:
        raise _api_error(exc) from exc


@journeys_router.post("", status_code=201)
async def create_journey(
    body: JourneySpec, session: SessionDep, _: Writer, ctx: ContextDep
) -> dict[str, Any]:
    """Create a journey as a draft; its templates are tried out first (422 invalid_template)."""
    await _check_journey_templates(ctx, body)
    row = await store.insert_definition(
        session=session,
        table=store.journeys,
        id=new_id("jny"),
        name=body.name,
        status="draft",
        spec=body.model_dump(mode="json"),
    )
    return _journey_view(row)


@journeys_router.get("")
async def list_journeys(session: SessionDep, _: Reader, page: PageDep) -> Page[dict[str, Any]]:
    """List journeys."""
    rows = await store.list_definitions(
        session=session, table=store.journeys, after=cursor_position(page, str), limit=page.limit
    )
    return Page[dict[str, Any]](
        items=[_journey_view(r) for r in rows], next=next_cursor(rows, limit=page.limit, key="id")
    )


@journeys_router.get("/{journey_id}")
async def get_journey(journey_id: Id, session: SessionDep, _: Reader) -> dict[str, Any]:
    """Return one journey."""
    return _journey_view(await _journey(session, journey_id))


@journeys_router.put("/{journey_id}")
async def replace_journey(
    journey_id: Id, body: JourneySpec, session: SessionDep, _: Writer, ctx: ContextDep
) -> dict[str, Any]:
    """Replace a draft or paused journey's definition; its templates are tried out first."""
    row = await _journey(session, journey_id, for_update=True)
    if row["status"] == "active":
        raise ApiError(status=409, code="invalid_transition", message="pause the journey before changing it")
    await _check_journey_templates(ctx, body)
    await store.update_definition(
        session=session,
        table=store.journeys,
        id=journey_id,
        name=body.name,
        spec=body.model_dump(mode="json"),
    )
    return _journey_view(await _journey(session, journey_id))


@journeys_router.delete("/{journey_id}", status_code=204)
async def delete_journey(journey_id: Id, session: SessionDep, _: Writer) -> None:
    """Delete a draft journey."""
    row = await _journey(session, journey_id, for_update=True)
    if row["status"] != "draft":
        raise ApiError(status=409, code="invalid_transition", message="only a draft journey can be deleted")
    await store.delete_definition(session=session, table=store.journeys, id=journey_id)


_JOURNEY_TRANSITIONS = {
    "activate": ({"draft", "paused"}, "active"),
    "pause": ({"active"}, "paused"),
    "archive": ({"draft", "active", "paused"}, "archived"),
}


@journeys_router.post("/{journey_id}/{action}")
async def change_journey(
    journey_id: Id,
    action: Annotated[str, Path(pattern=r"^(activate|pause|archive)$")],
    session: SessionDep,
    _: Writer,
) -> dict[str, Any]:
    """Activate, pause or archive a journey."""
    row = await _journey(session, journey_id, for_update=True)
    allowed, target = _JOURNEY_TRANSITIONS[action]
    if row["status"] not in allowed:
        raise ApiError(
            status=409, code="invalid_transition", message=f"a {row['status']} journey cannot {action}"
        )
    await store.update_definition(session=session, table=store.journeys, id=journey_id, status=target)
    return _journey_view(await _journey(session, journey_id))


@journeys_router.get("/{journey_id}/positions/{profile_id}")
async def journey_position(journey_id: Id, profile_id: Id, session: SessionDep, _: Reader) -> dict[str, Any]:
    """Return where a person is in a journey and the messages it sent them."""
    await _journey(session, journey_id)
    position = await store.get_position(session=session, journey_id=journey_id, profile_id=profile_id)
    if position is None:
        raise ApiError(status=404, code="not_found", message="the person is not in this journey")
    sends = await store.timeline(
        session=session, source="journey", source_id=journey_id, profile_id=profile_id
    )
    return {**position, "sends": sends}


# --- tracking links (public: the signed token is the credential) ---------------------------------

_PIXEL = base64.b64decode("R0lGODlhAQABAIAAAAAAAP///yH5BAEAAAAALAAAAAABAAEAAAIBRAA7")


def _claims(ctx: CampaignContext, token: str, kind: str) -> dict[str, Any]:
    try:
        claims = read_token(key=ctx.hash_key, token=token)
    except InvalidToken as exc:
        raise ApiError(status=404, code="not_found", message="unknown link") from exc
    if claims.get("k") != kind or not isinstance(claims.get("s"), str):
        raise ApiError(status=404, code="not_found", message="unknown link")
    return claims


Token = Annotated[str, Path(min_length=10, max_length=4000)]


@tracking_router.get("/open/{token}")
async def track_open(
    token: Token, ctx: ContextDep, user_agent: Annotated[str | None, Header(max_length=1000)] = None
) -> Response:
    """Record an open and answer a transparent pixel."""
    claims = _claims(ctx, token, "o")
    await delivery.record_tracking(ctx=ctx, send_id=claims["s"], kind="opened", user_agent=user_agent)
    TRACKING.labels("open").inc()
    return Response(_PIXEL, media_type="image/gif", headers={"Cache-Control": "no-store"})


@tracking_router.get("/click/{token}")
async def track_click(token: Token, ctx: ContextDep) -> RedirectResponse:
    """Record a click and redirect to the link's signed target."""
    claims = _claims(ctx, token, "c")
    url = claims.get("u")
    if not isinstance(url, str) or not url.startswith(("http://", "https://")):
        raise ApiError(status=404, code="not_found", message="unknown link")
    await delivery.record_tracking(ctx=ctx, send_id=claims["s"], kind="clicked", url=url)
    TRACKING.labels("click").inc()
    return RedirectResponse(url, status_code=302)


@tracking_router.get("/unsubscribe/{token}")
async def unsubscribe_page(token: Token, ctx: ContextDep) -> HTMLResponse:
    """Show a page with one button that unsubscribes (a GET never unsubscribes: link scanners fetch it)."""
    _claims(ctx, token, "u")
    return HTMLResponse(
        "<!doctype html><title>Unsubscribe</title><form method=post>"
        "<p>Stop receiving these messages?</p><button type=submit>Unsubscribe</button></form>"
    )


@tracking_router.post("/unsubscribe/{token}")
async def unsubscribe(token: Token, ctx: ContextDep) -> HTMLResponse:
    """Unsubscribe in one click (RFC 8058): withdraw the consent and record it."""
    claims = _claims(ctx, token, "u")
    try:
        await delivery.record_tracking(ctx=ctx, send_id=claims["s"], kind="unsubscribed")
    except ConsentUnavailable as exc:
        raise ApiError(
            status=503,
            code="unavailable",
            message="please try again in a moment",
            headers={"Retry-After": "5"},
        ) from exc
    TRACKING.labels("unsubscribe").inc()
    return HTMLResponse("<!doctype html><title>Unsubscribed</title><p>You are unsubscribed.</p>")


routers = [
    campaigns_router,
    journeys_router,
    tracking_router,
    access_router(service=SERVICE, export=store.export_profile),
]
