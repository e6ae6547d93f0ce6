"""HTTP routes of the consent service: consents and their history, the check API, suppressions,
double opt-in, and privacy requests."""

from __future__ import annotations

import html
import json
from datetime import UTC, datetime, timedelta
from ipaddress import IPv4Address, IPv6Address
from typing import Annotated, Any, Literal
from urllib.parse import quote

from cdp_common.auth import Principal, require_scope
from cdp_common.deps import SessionDep
from cdp_common.identifiers import InvalidIdentifier, normalise_identifier
from cdp_common.privacy import access_router
from cdp_common.purposes import GATES
from cdp_common.topics import TopicName
from cdp_common.web import ApiError, Page, PageParams, cursor_position, next_cursor, page_params
from fastapi import APIRouter, Depends, Path, Query, Request
from fastapi.responses import HTMLResponse, Response
from pydantic import BaseModel, ConfigDict, Field, field_validator

from cdp_consent import handlers, store
from cdp_consent.domain.consents import ConsentStatus, LegalBasis, UnknownPurpose
from cdp_consent.domain.opt_in import ConfirmationRefused
from cdp_consent.domain.privacy import RequestStatus, awaiting
from cdp_consent.mailer import MailNotSent
from cdp_consent.metrics import CONSENT_CHECKS

consents = APIRouter(prefix="/v1", tags=["consents"])

Reader = Annotated[Principal, Depends(require_scope("consents:read"))]
Writer = Annotated[Principal, Depends(require_scope("consents:write"))]
PrivacyAdmin = Annotated[Principal, Depends(require_scope("privacy:admin"))]
PageDep = Annotated[PageParams, Depends(page_params)]
ProfileId = Annotated[str, Path(min_length=1, max_length=200)]
# Name of a purpose, channel or source: short, printable, no spaces.
Name = Annotated[str, Field(min_length=1, max_length=100, pattern=r"^[A-Za-z0-9_.:\-]+$")]
MAX_CLOCK_SKEW = timedelta(minutes=5)


def consent_context(request: Request) -> handlers.ConsentContext:
    """Return the service's consent context."""
    context: handlers.ConsentContext = request.app.state.consent_context
    return context


ContextDep = Annotated[handlers.ConsentContext, Depends(consent_context)]


class StrictModel(BaseModel):
    """A request body: unknown fields are refused so typos do not pass silently."""

    model_config = ConfigDict(extra="forbid")


class Evidence(StrictModel):
    """What proves the decision: where it came from and how it was confirmed."""

    ip: IPv4Address | IPv6Address | None = None
    user_agent: str | None = Field(default=None, max_length=1000)
    form: str | None = Field(default=None, max_length=500)
    confirmation: str | None = Field(default=None, max_length=500)


class DecisionRequest(StrictModel):
    """A decision a person made about one purpose on one channel."""

    profile_id: str = Field(min_length=1, max_length=200)
    purpose: Name
    channel: Name
    status: ConsentStatus
    at: datetime | None = None
    source: Name
    legal_basis: LegalBasis = LegalBasis.CONSENT
    wording: str | None = Field(default=None, max_length=10_000)
    wording_version: str | None = Field(default=None, max_length=100)
    evidence: Evidence = Field(default_factory=Evidence)

    @field_validator("at")
    @classmethod
    def _not_in_the_future(cls, value: datetime | None) -> datetime | None:
        if value is None:
            return None
        if value.tzinfo is None:
            value = value.replace(tzinfo=UTC)
        if value > datetime.now(UTC) + MAX_CLOCK_SKEW:
            raise ValueError("a decision cannot lie in the future")
        return value


def _unknown(exc: UnknownPurpose) -> ApiError:
    return ApiError(status=422, code="unknown_purpose_or_channel", message=str(exc))


@consents.get("/consents/catalogue")
async def catalogue(_: Reader, context: ContextDep) -> dict[str, Any]:
    """List the configured purposes, channels, the mapping of Segment categories, and what each gated
    purpose gates and rests on."""
    return {
        "purposes": list(context.catalogue.purposes),
        "channels": list(context.catalogue.channels),
        "category_purposes": context.category_purposes,
        "gated_purposes": {
            purpose: {"gates": gates, "basis": context.purposes.basis(purpose).value}
            for purpose, gates in GATES.items()
        },
    }


@consents.post("/consents", status_code=201)
async def record_consent(
    body: DecisionRequest, session: SessionDep, _: Writer, context: ContextDep
) -> dict[str, Any]:
    """Append a decision to the profile's ledger; withdrawal takes effect at once."""
    try:
        entry = await handlers.record_decision(
            session=session,
            context=context,
            profile_id=body.profile_id,
            purpose=body.purpose,
            channel=body.channel,
            status=body.status,
            at=body.at or datetime.now(UTC),
            source=body.source,
            legal_basis=body.legal_basis.value,
            wording=body.wording,
            wording_version=body.wording_version,
            evidence=body.evidence.model_dump(mode="json", exclude_none=True),
        )
    except UnknownPurpose as exc:
        raise _unknown(exc) from exc
    return {**entry.row, "in_force": entry.in_force}


@consents.get("/consents/{profile_id}")
async def current_consents(profile_id: ProfileId, session: SessionDep, _: Reader) -> dict[str, Any]:
    """Return the decisions in force for a profile (a merged-away id answers for its survivor)."""
    survivor = await store.survivor_of(session=session, profile_id=profile_id)
    return {
        "profile_id": survivor,
        "requested_profile_id": profile_id,
        "consents": await store.state_view(session=session, profile_id=survivor),
        "pending_opt_ins": await store.pending_opt_ins(session=session, profile_id=survivor),
    }


@consents.get("/consents/{profile_id}/history")
async def consent_history(
    profile_id: ProfileId, session: SessionDep, _: Reader, page: PageDep
) -> Page[dict[str, Any]]:
    """Return every ledger entry of a profile, oldest first."""
    after = cursor_position(page, int)
    items = await store.ledger_page(session=session, profile_id=profile_id, after_id=after, limit=page.limit)
    return Page[dict[str, Any]](items=items, next=next_cursor(items, limit=page.limit, key="id"))


class CheckRequest(StrictModel):
    """Which of these profiles may be contacted for a purpose on a channel?"""

    purpose: Name
    channel: Name
    profile_ids: list[Annotated[str, Field(min_length=1, max_length=200)]] = Field(min_length=1)


def _within_check_limit(request: Request, profile_ids: list[str]) -> None:
    """Refuse a question about more profiles than `CDP_MAX_CHECK_IDS` at once."""
    limit: int = request.app.state.runtime.settings.max_check_ids
    if len(profile_ids) > limit:
        raise ApiError(
            status=413,
            code="too_many_profile_ids",
            message=f"ask about at most {limit} profile ids at once",
            details={"limit": limit, "given": len(profile_ids)},
        )


@consents.post("/consents/check")
async def check_consents(
    body: CheckRequest, request: Request, session: SessionDep, _: Reader, context: ContextDep
) -> Response:
    """Answer which profiles may be contacted; no record, or any doubt, means no."""
    _within_check_limit(request, body.profile_ids)
    try:
        context.catalogue.require(purpose=body.purpose, channel=body.channel)
    except UnknownPurpose as exc:
        raise _unknown(exc) from exc
    verdicts = await store.check_contactable(
        session=session, profile_ids=body.profile_ids, purpose=body.purpose, channel=body.channel
    )
    allowed = [pid for pid in dict.fromkeys(body.profile_ids) if verdicts.get(pid, "no_record") is None]
    refused = {pid: str(reason) for pid, reason in verdicts.items() if reason is not None}
    CONSENT_CHECKS.labels("allowed").inc(len(allowed))
    CONSENT_CHECKS.labels("refused").inc(len(refused))
    answer = {"purpose": body.purpose, "channel": body.channel, "allowed": allowed, "refused": refused}
    # Plain strings only: serialised directly, without FastAPI's per-item encoder (hot path).
    return Response(json.dumps(answer, separators=(",", ":")), media_type="application/json")


class ExclusionRequest(StrictModel):
    """Which of these profiles are excluded from a gated purpose?"""

    purpose: Name
    profile_ids: list[Annotated[str, Field(min_length=1, max_length=200)]] = Field(min_length=1)


@consents.post("/consents/exclusions")
async def purpose_exclusions(
    body: ExclusionRequest, request: Request, session: SessionDep, _: Reader, context: ContextDep
) -> dict[str, Any]:
    """Answer which profiles are excluded from a gated purpose (profiling, personalisation, analytics)."""
    _within_check_limit(request, body.profile_ids)
    if body.purpose not in GATES:
        raise ApiError(
            status=422,
            code="unknown_purpose_or_channel",
            message=f"{body.purpose!r} is not a gated purpose; they are {sorted(GATES)}",
        )
    decisions = await store.purpose_decisions(
        session=session, profile_ids=body.profile_ids, purpose=body.purpose
    )
    excluded = [
        pid
        for pid in dict.fromkeys(body.profile_ids)
        if context.purposes.excluded(body.purpose, decisions.get(pid, {}))
    ]
    return {
        "purpose": body.purpose,
        "basis": context.purposes.basis(body.purpose).value,
        "excluded": excluded,
    }


class Address(StrictModel):
    """An e-mail address or phone number, in clear only for this request."""

    type: Literal["email", "phone"]
    value: str = Field(min_length=1, max_length=320)


class SuppressionRequest(Address):
    """An address that must never be contacted again."""

    reason: Name = "requested"


def address_hash(context: handlers.ConsentContext, address: Address) -> str:
    """Return the keyed hash of a normalised address, or a 422 when it is no address."""
    return context.contact_hash(address.type, address_hash_input(address))


def address_hash_input(address: Address) -> str:
    """Return the normalised address, or a 422 when it is no address."""
    try:
        value = normalise_identifier(address.type, address.value)
    except InvalidIdentifier as exc:
        raise ApiError(
            status=422, code="invalid_address", message=str(exc), details={"type": address.type}
        ) from exc
    if address.type == "email" and ("@" not in value or value.startswith("@") or value.endswith("@")):
        raise ApiError(
            status=422, code="invalid_address", message="not an e-mail address", details={"type": "email"}
        )
    return value


def _suppression_view(row: dict[str, Any]) -> dict[str, Any]:
    return {
        "hash": row["hash"],
        "type": row["kind"],
        "reason": row["reason"],
        "created_at": row["created_at"],
    }


@consents.post("/suppressions", status_code=201)
async def suppress(
    body: SuppressionRequest, session: SessionDep, _: Writer, context: ContextDep
) -> dict[str, Any]:
    """Put an address on the suppression list; only its keyed hash is kept."""
    row = await store.add_suppression(
        session=session, hash_value=address_hash(context, body), kind=body.type, reason=body.reason
    )
    return _suppression_view(row)


@consents.post("/suppressions/lookup")
async def lookup_suppression(
    body: Address, session: SessionDep, _: Reader, context: ContextDep
) -> dict[str, Any]:
    """Say whether an address is on the suppression list."""
    row = await store.get_suppression(session=session, hash_value=address_hash(context, body))
    return {"suppressed": row is not None, "entry": None if row is None else _suppression_view(row)}


@consents.get("/suppressions")
async def list_suppressions(session: SessionDep, _: Reader, page: PageDep) -> Page[dict[str, Any]]:
    """List the suppression list (hashes only)."""
    rows = await store.suppression_page(session=session, after=cursor_position(page, str), limit=page.limit)
    items = [_suppression_view(r) for r in rows]
    return Page[dict[str, Any]](items=items, next=next_cursor(items, limit=page.limit, key="hash"))


@consents.delete("/suppressions/{hash_value}", status_code=204)
async def unsuppress(
    hash_value: Annotated[str, Path(pattern=r"^[0-9a-f]{64}$")], session: SessionDep, _: PrivacyAdmin
) -> None:
    """Take an address off the suppression list (the person asked to be contacted again)."""
    if not await store.delete_suppression(session=session, hash_value=hash_value):
        raise ApiError(status=404, code="not_found", message="the hash is not on the suppression list")


opt_ins = APIRouter(prefix="/v1/opt-ins", tags=["double opt-in"])
public = APIRouter(prefix="/v1/opt-ins", tags=["double opt-in (public)"])
Token = Annotated[str, Query(min_length=1, max_length=200)]


class OptInRequest(StrictModel):
    """Ask a person to confirm their e-mail address before they receive anything."""

    profile_id: str = Field(min_length=1, max_length=200)
    email: str = Field(min_length=3, max_length=320)
    purpose: Name = "email_marketing"
    legal_basis: LegalBasis = LegalBasis.CONSENT
    wording: str | None = Field(default=None, max_length=10_000)
    wording_version: str | None = Field(default=None, max_length=100)
    evidence: Evidence = Field(default_factory=Evidence)


def _opt_in_view(row: dict[str, Any]) -> dict[str, Any]:
    return {
        key: row[key]
        for key in (
            "id",
            "profile_id",
            "purpose",
            "channel",
            "status",
            "requested_at",
            "expires_at",
            "confirmed_at",
        )
        if key in row
    }


@opt_ins.post("", status_code=202)
async def request_opt_in(
    body: OptInRequest, request: Request, session: SessionDep, _: Writer, context: ContextDep
) -> dict[str, Any]:
    """Create a pending e-mail consent and send the confirmation mail."""
    address = address_hash_input(Address(type="email", value=body.email))
    try:
        opt_in = await handlers.request_opt_in(
            session=session,
            context=context,
            settings=request.app.state.runtime.settings,
            profile_id=body.profile_id,
            address=address,
            purpose=body.purpose,
            legal_basis=body.legal_basis.value,
            wording=body.wording,
            wording_version=body.wording_version,
            evidence=body.evidence.model_dump(mode="json", exclude_none=True),
        )
    except UnknownPurpose as exc:
        raise _unknown(exc) from exc
    except MailNotSent as exc:
        raise ApiError(
            status=503,
            code="mail_unavailable",
            message="the confirmation mail could not be sent; nothing was stored, retry later",
            headers={"Retry-After": "30"},
        ) from exc
    return _opt_in_view(opt_in)


@opt_ins.get("/{opt_in_id}")
async def get_opt_in(
    opt_in_id: Annotated[str, Path(min_length=1, max_length=100)], session: SessionDep, _: Reader
) -> dict[str, Any]:
    """Return where an opt-in request stands."""
    row = await store.get_opt_in(session=session, opt_in_id=opt_in_id)
    if row is None:
        raise ApiError(status=404, code="not_found", message="no such opt-in request")
    return _opt_in_view(row)


CONFIRM_PAGE = """<!doctype html>
<html lang="en"><head><meta charset="utf-8"><title>Confirm your e-mail address</title>
<meta name="robots" content="noindex"></head>
<body><h1>Confirm your e-mail address</h1>
<form method="post" action="confirm?token={token}"><button type="submit">Yes, I confirm</button></form>
</body></html>"""


@public.get("/confirm", response_class=HTMLResponse)
async def confirmation_page(token: Token) -> HTMLResponse:
    """Show the confirm button; opening the link alone (or a mail scanner) confirms nothing."""
    return HTMLResponse(CONFIRM_PAGE.format(token=html.escape(quote(token, safe=""), quote=True)))


@public.post("/confirm")
async def confirm_opt_in(
    token: Token, request: Request, session: SessionDep, context: ContextDep
) -> dict[str, Any]:
    """Confirm a pending e-mail consent; the answer says nothing about whose it was."""
    evidence = {
        "ip": request.client.host if request.client else None,
        "user_agent": request.headers.get("user-agent"),
    }
    try:
        await handlers.confirm_opt_in(session=session, context=context, token=token, evidence=evidence)
    except ConfirmationRefused as exc:
        status = 404 if exc.code == "token_unknown" else 410
        raise ApiError(status=status, code=exc.code, message=exc.message) from exc
    return {"status": "confirmed", "message": "Thank you, your e-mail address is confirmed."}


privacy = APIRouter(prefix="/v1/privacy/requests", tags=["privacy requests"])


class Subject(StrictModel):
    """Whom a privacy request is about: one identifier, in clear only for this request."""

    type: str = Field(min_length=1, max_length=64, pattern=r"^[a-z][a-z0-9_]*$")
    value: str = Field(min_length=1, max_length=1000)


class PrivacyRequestBody(StrictModel):
    """A GDPR request: access (Art. 15, 20) or erasure (Art. 17)."""

    type: Literal["access", "erasure"]
    subject: Subject


def _request_view(request: dict[str, Any], receipts: dict[str, dict[str, Any]]) -> dict[str, Any]:
    open_ = request["status"] in (RequestStatus.PENDING, RequestStatus.IN_PROGRESS)
    return {
        "id": request["id"],
        "type": request["type"],
        "status": request["status"],
        "subject_type": request["subject_type"],
        "opened_at": request["opened_at"],
        "deadline": request["deadline"],
        "overdue": open_ and request["deadline"] < datetime.now(UTC),
        "completed_at": request["completed_at"],
        "profile_ids": request["profile_ids"],
        "note": request["note"],
        "receipts": receipts,
        "awaiting": awaiting(receipts, request["status"]),
        "bundle_available": request["bundle"] is not None,
        "last_error": request["last_error"],
    }


@privacy.post("", status_code=202)
async def open_privacy_request(
    body: PrivacyRequestBody, request: Request, session: SessionDep, _: PrivacyAdmin, context: ContextDep
) -> dict[str, Any]:
    """Open a privacy request; the subject is kept and published only as a keyed hash."""
    settings = request.app.state.runtime.settings
    try:
        opened = await handlers.open_privacy_request(
            session=session,
            context=context,
            privacy_topic=settings.topic(TopicName.PRIVACY),
            request_type=body.type,
            subject_type=body.subject.type,
            subject_value=body.subject.value,
            deadline_days=settings.privacy_deadline_days,
        )
    except InvalidIdentifier as exc:
        raise ApiError(
            status=422, code="invalid_subject", message=str(exc), details={"type": body.subject.type}
        ) from exc
    return _request_view(opened, {})


RequestId = Annotated[str, Path(min_length=1, max_length=100)]


@privacy.get("/{request_id}")
async def get_privacy_request(request_id: RequestId, session: SessionDep, _: PrivacyAdmin) -> dict[str, Any]:
    """Return where a privacy request stands, with every service's receipt."""
    found = await store.get_privacy_request(session=session, request_id=request_id)
    if found is None:
        raise ApiError(status=404, code="not_found", message="no such privacy request")
    return _request_view(found, await store.receipts_of(session=session, request_id=request_id))


@privacy.get("/{request_id}/bundle")
async def get_access_bundle(request_id: RequestId, session: SessionDep, _: PrivacyAdmin) -> dict[str, Any]:
    """Serve the machine-readable bundle of a completed access request."""
    found = await store.get_privacy_request(session=session, request_id=request_id)
    if found is None:
        raise ApiError(status=404, code="not_found", message="no such privacy request")
    if found["type"] != "access":
        raise ApiError(status=409, code="not_an_access_request", message="only access requests have a bundle")
    if found["bundle_erased_at"] is not None:
        raise ApiError(status=410, code="bundle_erased", message="the person has since been erased")
    if found["bundle"] is None:
        raise ApiError(
            status=409,
            code="bundle_not_ready",
            message="the bundle is not assembled yet",
            details={"status": found["status"]},
        )
    bundle: dict[str, Any] = found["bundle"]
    return bundle


routers = [
    consents,
    public,
    opt_ins,
    privacy,
    access_router(service=handlers.SERVICE, export=store.export_profile),
]
