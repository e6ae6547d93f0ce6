"""Commands and event handlers of the consent service: recording decisions, consent signals on
resolved events, merges, and publishing every change in force on cdp.consents.v1."""

from __future__ import annotations

import logging
import uuid
from collections.abc import Sequence
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from typing import Any
from urllib.parse import urlencode

from cdp_common.envelope import Envelope
from cdp_common.events import (
    ConsentChanged,
    ConsentDenied,
    ConsentGranted,
    ConsentWithdrawn,
    PrivacyReceipt,
    PrivacyRequestCompleted,
    PrivacyRequestOpened,
    ProfileChanged,
    ProfileMerged,
    make_envelope,
)
from cdp_common.hashing import subject_hash
from cdp_common.identifiers import InvalidIdentifier, normalise_identifier
from cdp_common.outbox import add_to_outbox
from cdp_common.purposes import PurposePolicy
from cdp_common.replica import apply_profile_version, apply_profile_versions
from sqlalchemy.ext.asyncio import AsyncSession

from cdp_consent import store
from cdp_consent.domain.consents import (
    Catalogue,
    ConsentStatus,
    decisions_from_preferences,
    merge_states,
    preferences_of,
    status_for_refusal,
)
from cdp_consent.domain.opt_in import (
    ConfirmationRefused,
    OptInStatus,
    confirmation_mail,
    new_token,
    token_hash,
)
from cdp_consent.domain.privacy import RequestStatus, assemble_bundle, erasure_outcome
from cdp_consent.mailer import MailNotSent, send_mail
from cdp_consent.metrics import (
    CONSENT_CHANGES,
    MERGE_CONFLICTS,
    OPT_IN_MAILS,
    PRIVACY_REQUESTS_COMPLETED,
    PRIVACY_REQUESTS_OPENED,
)
from cdp_consent.settings import Settings

logger = logging.getLogger(__name__)

SERVICE = "consent"
CONTACT_KINDS = ("email", "phone")

_PAYLOADS: dict[ConsentStatus, type[ConsentChanged]] = {
    ConsentStatus.GRANTED: ConsentGranted,
    ConsentStatus.DENIED: ConsentDenied,
    ConsentStatus.WITHDRAWN: ConsentWithdrawn,
}


@dataclass(frozen=True)
class ConsentContext:
    """What the handlers need from the settings: the catalogue, the rules, the topics, the key, and
    the basis of the gated purposes."""

    catalogue: Catalogue
    category_purposes: dict[str, list[str]]
    opt_in_only: frozenset[tuple[str, str]]
    consents_topic: str
    hash_key: str
    purposes: PurposePolicy = field(default_factory=PurposePolicy)

    @classmethod
    def from_settings(cls, settings: Settings, *, consents_topic: str) -> ConsentContext:
        """Build the context from the service's settings."""
        catalogue = Catalogue(purposes=tuple(settings.purposes), channels=tuple(settings.channels))
        return cls(
            catalogue=catalogue,
            category_purposes={k: list(v) for k, v in settings.category_purposes.items()},
            opt_in_only=frozenset(p for pair in settings.opt_in_only_grants for p in catalogue.expand(pair)),
            consents_topic=consents_topic,
            hash_key=settings.hash_key.get_secret_value(),
            purposes=PurposePolicy.of(settings),
        )

    def contact_hash(self, kind: str, value: str) -> str:
        """Return the keyed hash of a normalised e-mail address or phone number."""
        return subject_hash(key=self.hash_key, subject_type=kind, value=value)


def origin_of(source: str) -> str:
    """Return the bounded kind of a free-text source, for metric labels."""
    if source.startswith("event:"):
        return "event"
    return source if source in ("merge", "double_opt_in") else "api"


async def record_decision(
    *,
    session: AsyncSession,
    context: ConsentContext,
    profile_id: str,
    purpose: str,
    channel: str,
    status: ConsentStatus,
    at: datetime,
    source: str,
    legal_basis: str | None = None,
    wording: str | None = None,
    wording_version: str | None = None,
    evidence: dict[str, Any] | None = None,
    event_id: str | None = None,
) -> store.LedgerEntry:
    """Append a decision to the ledger and publish it when it changes what is in force."""
    context.catalogue.require(purpose=purpose, channel=channel)
    entry = await store.append_entry(
        session=session,
        profile_id=profile_id,
        purpose=purpose,
        channel=channel,
        status=status,
        at=at,
        source=source,
        legal_basis=legal_basis,
        wording=wording,
        wording_version=wording_version,
        evidence=evidence,
        event_id=event_id,
    )
    if entry.changes_status:
        payload = _PAYLOADS[status](
            profile_id=profile_id,
            purpose=purpose,
            channel=channel,
            at=entry.row["at"],
            source=source,
            legal_basis=legal_basis,
            wording_version=wording_version,
        )
        await add_to_outbox(
            session=session,
            topic=context.consents_topic,
            envelope=make_envelope(
                payload=payload, source=SERVICE, subject=profile_id, id=f"consent-ledger:{entry.row['id']}"
            ),
        )
        CONSENT_CHANGES.labels(status.value, origin_of(source)).inc()
    return entry


async def apply_profile_changed(
    *, session: AsyncSession, envelope: Envelope[Any], context: ConsentContext
) -> None:
    """Keep the profile's version and contact hashes, and apply the event's consent signal."""
    await apply_profiles_changed(session=session, envelopes=[envelope], context=context)


async def apply_profiles_changed(
    *, session: AsyncSession, envelopes: Sequence[Envelope[Any]], context: ConsentContext
) -> None:
    """Apply profile changes as apply_profile_changed one at a time: versions and contacts in bulk, signals in order."""
    changes: list[ProfileChanged] = [envelope.data for envelope in envelopes]
    await apply_profile_versions(
        session=session,
        table=store.known_profiles,
        versions=[(d.profile_id, d.version, None) for d in changes],
    )
    contacts: list[tuple[str, str, str]] = []
    for data in changes:
        for identifier in data.identifiers:
            if identifier.type in CONTACT_KINDS:
                try:
                    value = normalise_identifier(identifier.type, identifier.value)
                except InvalidIdentifier:
                    continue
                contacts.append(
                    (data.profile_id, identifier.type, context.contact_hash(identifier.type, value))
                )
    await store.record_contacts(session=session, contacts=contacts)
    for envelope, data in zip(envelopes, changes, strict=True):
        if data.event is not None:
            await apply_consent_signal(
                session=session,
                context=context,
                profile_id=data.profile_id,
                event_context=data.event.context,
                at=data.event.timestamp,
                event_id=data.event_id or envelope.id,
                source_id=data.event.sourceId,
            )


async def apply_consent_signal(
    *,
    session: AsyncSession,
    context: ConsentContext,
    profile_id: str,
    event_context: dict[str, Any],
    at: datetime,
    event_id: str,
    source_id: str,
) -> int:
    """Record what `context.consent.categoryPreferences` says; return how many entries it added."""
    preferences = preferences_of(event_context)
    if preferences is None:
        return 0
    decisions = decisions_from_preferences(
        preferences=preferences, category_purposes=context.category_purposes, catalogue=context.catalogue
    )
    added = 0
    for (purpose, channel), agreed in sorted(decisions.items()):
        if agreed and (purpose, channel) in context.opt_in_only:
            continue
        current = await store.current_entry(
            session=session, profile_id=profile_id, purpose=purpose, channel=channel
        )
        status = ConsentStatus.GRANTED if agreed else status_for_refusal(current.status if current else None)
        if current is not None and (
            current.status is status or (not agreed and current.status is not ConsentStatus.GRANTED)
        ):
            continue
        await record_decision(
            session=session,
            context=context,
            profile_id=profile_id,
            purpose=purpose,
            channel=channel,
            status=status,
            at=at,
            source=f"event:{source_id}",
            legal_basis="consent",
            evidence={"category_preferences": preferences},
            event_id=event_id,
        )
        added += 1
    return added


async def apply_profile_merged(
    *, session: AsyncSession, envelope: Envelope[Any], context: ConsentContext
) -> None:
    """Give the survivor the most restrictive state of both profiles and record any conflict."""
    data: ProfileMerged = envelope.data
    await apply_profile_version(
        session=session, table=store.known_profiles, profile_id=data.profile_id, version=data.version
    )
    await apply_profile_version(
        session=session,
        table=store.known_profiles,
        profile_id=data.absorbed_profile_id,
        version=data.version,
        merged_into=data.profile_id,
    )
    await store.redirect_merged(
        session=session, absorbed_profile_id=data.absorbed_profile_id, survivor_id=data.profile_id
    )
    survivor = await store.states_of(session=session, profile_id=data.profile_id)
    absorbed = await store.states_of(session=session, profile_id=data.absorbed_profile_id)
    decisions = merge_states(survivor=survivor, absorbed=absorbed)
    conflicts = sum(1 for d in decisions if d.conflict)
    if not await store.record_merge(
        session=session,
        merge_id=data.merge_id,
        profile_id=data.profile_id,
        absorbed_profile_id=data.absorbed_profile_id,
        conflicts=conflicts,
    ):
        return
    await store.move_contacts(
        session=session, from_profile_id=data.absorbed_profile_id, to_profile_id=data.profile_id
    )
    for decision in decisions:
        if not decision.changes_survivor and not decision.conflict:
            continue
        await record_decision(
            session=session,
            context=context,
            profile_id=data.profile_id,
            purpose=decision.purpose,
            channel=decision.channel,
            status=decision.status,
            at=decision.at,
            source="merge",
            evidence={
                "merge_id": data.merge_id,
                "absorbed_profile_id": data.absorbed_profile_id,
                "survivor_status": decision.survivor,
                "absorbed_status": decision.absorbed,
                "conflict": decision.conflict,
                "rule": "most_restrictive",
            },
            event_id=envelope.id,
        )
    if conflicts:
        MERGE_CONFLICTS.inc(conflicts)
        logger.info(
            "merge conflicts resolved",
            extra={"profile_id": data.profile_id, "merge_id": data.merge_id, "conflicts": conflicts},
        )


async def request_opt_in(
    *,
    session: AsyncSession,
    context: ConsentContext,
    settings: Settings,
    profile_id: str,
    address: str,
    purpose: str,
    legal_basis: str,
    wording: str | None,
    wording_version: str | None,
    evidence: dict[str, Any],
) -> dict[str, Any]:
    """Store a pending e-mail consent and send the confirmation mail; raise MailNotSent if it fails."""
    context.catalogue.require(purpose=purpose, channel="email")
    token, hashed = new_token()
    now = datetime.now(UTC)
    opt_in = await store.create_opt_in(
        session=session,
        values={
            "id": str(uuid.uuid4()),
            "profile_id": profile_id,
            "purpose": purpose,
            "channel": "email",
            "address_hash": context.contact_hash("email", address),
            "token_hash": hashed,
            "status": OptInStatus.PENDING.value,
            "requested_at": now,
            "expires_at": now + timedelta(seconds=settings.opt_in_ttl_s),
            "request_evidence": evidence,
            "legal_basis": legal_basis,
            "wording": wording,
            "wording_version": wording_version,
        },
    )
    link = f"{settings.confirmation_base()}/v1/opt-ins/confirm?{urlencode({'token': token})}"
    message = confirmation_mail(
        sender=settings.mail_from,
        recipient=address,
        link=link,
        purpose=purpose,
        wording=wording,
        wording_version=wording_version,
        expires_at=opt_in["expires_at"],
    )
    try:
        await send_mail(smtp_url=settings.smtp_url, message=message, timeout_s=settings.smtp_timeout_s)
    except MailNotSent:
        OPT_IN_MAILS.labels("failed").inc()
        raise
    OPT_IN_MAILS.labels("sent").inc()
    await store.record_contacts(session=session, contacts=[(profile_id, "email", opt_in["address_hash"])])
    return opt_in


async def confirm_opt_in(
    *, session: AsyncSession, context: ConsentContext, token: str, evidence: dict[str, Any]
) -> None:
    """Grant the pending consent a token belongs to, once, before it expires."""
    opt_in = await store.opt_in_by_token(session=session, token_hash=token_hash(token))
    if opt_in is None:
        raise ConfirmationRefused("token_unknown", "this confirmation link is not valid")
    if opt_in["status"] == OptInStatus.CONFIRMED:
        raise ConfirmationRefused("token_used", "this confirmation link has already been used")
    now = datetime.now(UTC)
    if opt_in["status"] == OptInStatus.EXPIRED or opt_in["expires_at"] <= now:
        await store.update_opt_in(session=session, opt_in_id=opt_in["id"], values={"status": "expired"})
        raise ConfirmationRefused("token_expired", "this confirmation link has expired; please sign up again")
    proof = {
        "double_opt_in": {
            "opt_in_id": opt_in["id"],
            "address_hash": opt_in["address_hash"],
            "requested_at": opt_in["requested_at"].isoformat(),
            "request": opt_in["request_evidence"],
            "confirmed_at": now.isoformat(),
            "confirmation": evidence,
        }
    }
    entry = await record_decision(
        session=session,
        context=context,
        profile_id=opt_in["profile_id"],
        purpose=opt_in["purpose"],
        channel=opt_in["channel"],
        status=ConsentStatus.GRANTED,
        at=now,
        source="double_opt_in",
        legal_basis=opt_in["legal_basis"],
        wording=opt_in["wording"],
        wording_version=opt_in["wording_version"],
        evidence={**evidence, **proof},
    )
    await store.update_opt_in(
        session=session,
        opt_in_id=opt_in["id"],
        values={
            "status": "confirmed",
            "confirmed_at": now,
            "confirm_evidence": evidence,
            "ledger_id": entry.row["id"],
        },
    )


async def open_privacy_request(
    *,
    session: AsyncSession,
    context: ConsentContext,
    privacy_topic: str,
    request_type: str,
    subject_type: str,
    subject_value: str,
    deadline_days: int,
) -> dict[str, Any]:
    """Store a privacy request with its subject only as a keyed hash and publish it; raise InvalidIdentifier."""
    value = normalise_identifier(subject_type, subject_value)
    hashed = subject_hash(key=context.hash_key, subject_type=subject_type, value=value)
    now = datetime.now(UTC)
    request = await store.create_privacy_request(
        session=session,
        values={
            "id": str(uuid.uuid4()),
            "type": request_type,
            "subject_type": subject_type,
            "subject_hash": hashed,
            "status": RequestStatus.PENDING.value,
            "opened_at": now,
            "deadline": now + timedelta(days=deadline_days),
        },
    )
    opened = PrivacyRequestOpened(
        request_id=request["id"],
        request_type=request["type"],
        subject_type=subject_type,
        subject_hash=hashed,
        deadline=request["deadline"],
    )
    await add_to_outbox(
        session=session,
        topic=privacy_topic,
        envelope=make_envelope(
            payload=opened, source=SERVICE, subject=request["id"], id=f"{request['id']}:opened"
        ),
    )
    PRIVACY_REQUESTS_OPENED.labels(request_type).inc()
    return request


async def apply_privacy_receipt(
    *, session: AsyncSession, envelope: Envelope[Any], privacy_topic: str
) -> None:
    """Record a service's receipt and close the request when everyone who must answer has."""
    data: PrivacyReceipt = envelope.data
    request = await store.get_privacy_request(session=session, request_id=data.request_id, for_update=True)
    if request is None:
        logger.info("receipt for a request opened elsewhere", extra={"event_id": envelope.id})
        return
    if request["status"] in (RequestStatus.COMPLETED, RequestStatus.FAILED):
        return
    if not await store.record_receipt(
        session=session,
        request_id=data.request_id,
        service=data.service,
        status=data.status,
        profile_ids=list(data.profile_ids),
        details=dict(data.details),
    ):
        return
    changes: dict[str, Any] = {"status": RequestStatus.IN_PROGRESS.value}
    profile_ids = request["profile_ids"]
    if data.service == "profile":
        profile_ids = list(data.profile_ids)
        changes["profile_ids"] = profile_ids
        if not profile_ids:
            changes["note"] = "profile found nobody with this identifier; no other service holds anything"
        elif request["type"] == "access":
            changes["assembly_due_at"] = datetime.now(UTC)
    await store.update_privacy_request(session=session, request_id=request["id"], values=changes)
    receipts = await store.receipts_of(session=session, request_id=request["id"])
    statuses = {service: receipt["status"] for service, receipt in receipts.items()}
    outcome: RequestStatus | None
    if request["type"] == "erasure":
        outcome = erasure_outcome(statuses, profile_ids=profile_ids)
    elif data.service == "profile" and not profile_ids:
        outcome = RequestStatus.COMPLETED if data.status == "done" else RequestStatus.FAILED
    else:
        outcome = None
    if outcome is not None:
        empty_bundle = request["type"] == "access" and outcome is RequestStatus.COMPLETED
        await complete_privacy_request(
            session=session,
            request_id=request["id"],
            status=outcome,
            privacy_topic=privacy_topic,
            values={"bundle": _empty_bundle(request)} if empty_bundle else None,
        )


def _empty_bundle(request: dict[str, Any]) -> dict[str, Any]:
    """Return the bundle of an access request about nobody: every service holds nothing."""
    return assemble_bundle(
        request_id=request["id"],
        subject_type=request["subject_type"],
        profile_ids=[],
        parts={},
        generated_at=datetime.now(UTC),
    )


async def complete_privacy_request(
    *,
    session: AsyncSession,
    request_id: str,
    status: RequestStatus,
    privacy_topic: str,
    values: dict[str, Any] | None = None,
) -> None:
    """Close a request and publish that it is done."""
    await store.update_privacy_request(
        session=session,
        request_id=request_id,
        values={
            **(values or {}),
            "status": status.value,
            "completed_at": datetime.now(UTC),
            "assembly_due_at": None,
        },
    )
    completed = PrivacyRequestCompleted(
        request_id=request_id, status="completed" if status is RequestStatus.COMPLETED else "failed"
    )
    await add_to_outbox(
        session=session,
        topic=privacy_topic,
        envelope=make_envelope(
            payload=completed, source=SERVICE, subject=request_id, id=f"{request_id}:completed"
        ),
    )
    PRIVACY_REQUESTS_COMPLETED.labels(status.value).inc()


async def store_access_bundle(
    *,
    session: AsyncSession,
    request_id: str,
    parts: dict[str, dict[str, Any]],
    privacy_topic: str,
) -> bool:
    """Record a receipt per service that served its part, keep the bundle, and close the request."""
    request = await store.get_privacy_request(session=session, request_id=request_id, for_update=True)
    if request is None or request["status"] != RequestStatus.IN_PROGRESS:
        return False
    profile_ids: list[str] = request["profile_ids"] or []
    for service, by_profile in parts.items():
        await store.record_receipt(
            session=session,
            request_id=request_id,
            service=service,
            status="done",
            profile_ids=profile_ids,
            details={"profiles_with_data": len(by_profile)},
        )
    bundle = assemble_bundle(
        request_id=request_id,
        subject_type=request["subject_type"],
        profile_ids=profile_ids,
        parts=parts,
        generated_at=datetime.now(UTC),
    )
    await complete_privacy_request(
        session=session,
        request_id=request_id,
        status=RequestStatus.COMPLETED,
        privacy_topic=privacy_topic,
        values={"bundle": bundle},
    )
    return True


async def postpone_assembly(
    *,
    session: AsyncSession,
    request_id: str,
    error: str,
    max_attempts: int,
    retry_s: float,
    privacy_topic: str,
) -> None:
    """Try assembling later with a growing pause, or fail the request after the last attempt."""
    request = await store.get_privacy_request(session=session, request_id=request_id, for_update=True)
    if request is None or request["status"] != RequestStatus.IN_PROGRESS:
        return
    attempts = request["assembly_attempts"] + 1
    if attempts >= max_attempts:
        await complete_privacy_request(
            session=session,
            request_id=request_id,
            status=RequestStatus.FAILED,
            privacy_topic=privacy_topic,
            values={"assembly_attempts": attempts, "last_error": error},
        )
        return
    await store.update_privacy_request(
        session=session,
        request_id=request_id,
        values={
            "assembly_attempts": attempts,
            "last_error": error,
            "assembly_due_at": datetime.now(UTC) + timedelta(seconds=retry_s * 2 ** (attempts - 1)),
        },
    )
