"""Composing and delivery: the checks and hand-over of each send, test sends and engagement.

A send passes consent, address, cap and quiet-hour rules, is rendered and handed to the mail,
SMS or webhook gateway; opens, clicks and unsubscribes come back to the send they belong to. A
person the consent service says is excluded from personalisation is sent the same message with
nothing personal in it: their templates see no traits, segments or recommendations.
"""

from __future__ import annotations

import asyncio
import logging
import secrets
from collections.abc import Sequence
from dataclasses import dataclass
from datetime import datetime, timedelta
from typing import Any

from cdp_common.db import transaction
from cdp_common.identifiers import InvalidIdentifier, normalise_identifier
from cdp_common.purposes import PERSONALISATION
from sqlalchemy.ext.asyncio import AsyncSession

from cdp_campaign import store
from cdp_campaign.context import CampaignContext, new_id, parsed_campaign, parsed_journey
from cdp_campaign.domain.addresses import AddressNotAllowed
from cdp_campaign.domain.assignment import HOLDOUT
from cdp_campaign.domain.campaigns import (
    CampaignError,
    Status,
    Variant,
    consent_pair,
)
from cdp_campaign.domain.compose import Draft, Refused, Tracking
from cdp_campaign.domain.journeys import SendStep
from cdp_campaign.domain.messages import OutgoingMail
from cdp_campaign.domain.recommendations import Purchase, recommend
from cdp_campaign.domain.rules import SkipReason, over_cap
from cdp_campaign.domain.templates import reads_the_person, uses_name, without_the_person
from cdp_campaign.domain.tokens import is_privacy_proxy_open
from cdp_campaign.gateways import (
    ComposerUnavailable,
    ConsentUnavailable,
    HandOverUnknown,
    Rejected,
    TemporaryFailure,
)
from cdp_campaign.handlers import load_campaign
from cdp_campaign.metrics import SENDS

logger = logging.getLogger(__name__)

# --- the worker: check and hand over -----------------------------------------------------------


@dataclass
class Outgoing:
    """A send that passed every rule, with what it will carry."""

    send: dict[str, Any]
    address: str
    subject: str | None
    body: str
    text: str | None
    webhook_url: str | None
    mail: OutgoingMail | None = None


@dataclass
class Definition:
    """What a send's campaign or journey says about it."""

    status: str
    running: bool
    channel: str
    purpose: str
    consent_channel: str
    content: Variant | None
    webhook_url: str | None
    sender: str | None
    name: str


def _definition(row: dict[str, Any], source: str, send: dict[str, Any]) -> Definition:
    if source == "campaign":
        spec = parsed_campaign(row["spec"])
        purpose, channel = consent_pair(
            channel=spec.channel, purpose=spec.consent_purpose, consent_channel=spec.consent_channel
        )
        content = None if send["variant"] == HOLDOUT else spec.variant(send["variant"])
        return Definition(
            row["status"],
            row["status"] == Status.RUNNING,
            spec.channel,
            purpose,
            channel,
            content,
            spec.webhook_url,
            spec.from_address,
            spec.name,
        )
    journey = parsed_journey(row["spec"])
    step = journey.steps[send["step"]]
    assert isinstance(step, SendStep)
    purpose, channel = consent_pair(
        channel=step.channel, purpose=journey.consent_purpose, consent_channel=journey.consent_channel
    )
    return Definition(
        row["status"],
        row["status"] == "active",
        step.channel,
        purpose,
        channel,
        step.content,
        None,
        None,
        journey.name,
    )


async def render_values(
    *,
    session: AsyncSession,
    profile_id: str | None,
    contact: dict[str, Any] | None,
    segments: list[str],
    sources: Sequence[str],
    name: str,
    personal: bool,
) -> dict[str, Any]:
    """Return what a template sees about a person (nothing personal when `personal` is false)."""
    accounts = [{"group_id": a["group_id"], **a["traits"]} for a in (contact or {}).get("accounts") or []]
    values: dict[str, Any] = {
        "profile": dict(contact["traits"]) if contact else {},
        "computed": dict(contact["computed"]) if contact else {},
        # The account (company) the person was last linked to, and all of them.
        "account": accounts[0] if accounts else {},
        "accounts": accounts,
        "segments": segments,
        "locale": (contact or {}).get("locale") or "en",
        "campaign": {"name": name},
    }
    if not personal:
        return without_the_person({**values, "recommendations": []})
    if profile_id is not None and any(uses_name(s, "recommendations") for s in sources):
        history = [
            Purchase(r["order_id"], r["product_id"], r["name"], r["category"], r["price"], r["quantity"])
            for r in await store.purchase_history(session=session, profile_id=profile_id)
        ]
        sales = [
            Purchase(r["order_id"], r["product_id"], r["name"], r["category"], r["price"], r["quantity"])
            for r in await store.catalogue_sales(session=session)
        ]
        values["recommendations"] = [vars(p) for p in recommend(history=history, catalogue_sales=sales)]
    else:
        values["recommendations"] = []
    return values


async def excluded_from_personalisation(*, ctx: CampaignContext, profile_ids: Sequence[str]) -> set[str]:
    """Return who of these people may get nothing personal: those excluded from personalisation, or
    all of them when the consent service cannot say."""
    try:
        return await ctx.consent.excluded(profile_ids=sorted(set(profile_ids)), purpose=PERSONALISATION)
    except ConsentUnavailable as exc:
        logger.warning("personalisation check failed (%s); content without personal data", exc)
        return set(profile_ids)


async def _within_caps(
    *,
    session: AsyncSession,
    ctx: CampaignContext,
    outgoing: list[Outgoing],
    since: datetime,
    skipped: dict[str, str],
) -> list[Outgoing]:
    """Apply the frequency cap where the sends are claimed: counted under a lock per person and
    channel held until the claim commits, so two jobs (on one replica or two) for the same person
    cannot both pass it."""
    cap = ctx.settings.campaign_frequency_cap
    capped = [o for o in outgoing if cap > 0 and o.send["channel"] != "webhook"]
    if not capped:
        return outgoing
    pairs = sorted({(o.send["profile_id"], o.send["channel"]) for o in capped})
    await store.lock_contact_windows(session=session, pairs=pairs)
    counts: dict[tuple[str, str], int] = {}
    for channel in {c for _, c in pairs}:
        per = await store.handed_counts(
            session=session, profile_ids=[p for p, c in pairs if c == channel], channel=channel, since=since
        )
        counts.update({(pid, channel): n for pid, n in per.items()})
    checked = {id(o) for o in capped}
    kept: list[Outgoing] = []
    for o in outgoing:
        if id(o) in checked:
            key = (o.send["profile_id"], o.send["channel"])
            if over_cap(sent_in_window=counts.get(key, 0), cap=cap):
                skipped[o.send["id"]] = SkipReason.FREQUENCY_CAP
                continue
            counts[key] = counts.get(key, 0) + 1
        kept.append(o)
    return kept


@dataclass
class PreparedSends:
    """A job's sends checked against the rules and composed, not yet claimed."""

    now: datetime
    since: datetime
    outgoing: list[Outgoing]
    skipped: dict[str, str]
    deferred: dict[str, datetime]


async def deliver_sends(*, ctx: CampaignContext, send_ids: Sequence[str]) -> dict[str, int]:
    """Check each queued send against the rules, record it as handed over, then hand it over.

    A send found half-way (recorded as handing over by a worker that died) is reported as
    unknown and never sent again: at most once.
    """
    return await hand_over_sends(ctx=ctx, prepared=await prepare_sends(ctx=ctx, send_ids=send_ids))


async def prepare_sends(*, ctx: CampaignContext, send_ids: Sequence[str]) -> PreparedSends:
    """Read a job's queued sends, apply consent, address and quiet-hour rules, and compose them.

    Nothing is claimed yet, so preparing ahead of the hand-over risks nothing.
    """
    now = ctx.clock.now()
    factory = ctx.session_factory
    skipped: dict[str, str] = {}
    deferred: dict[str, datetime] = {}
    outgoing: list[Outgoing] = []
    drafts: list[Draft] = []
    drafted: list[tuple[dict[str, Any], str, Definition]] = []
    tracking = Tracking(key=ctx.hash_key, base_url=ctx.settings.public_url)
    async with transaction(factory) as session:
        rows = await store.sends_by_id(session=session, send_ids=send_ids)
        stale = [r["id"] for r in rows if r["status"] == "handing_over"]
        await store.set_send_status(
            session=session,
            send_ids=stale,
            status="unknown",
            from_statuses=["handing_over"],
            reason="hand_over_interrupted",
            error="the worker stopped during the hand-over; not repeated",
        )
        queued = [r for r in rows if r["status"] == "queued" and r["profile_id"] is not None]
        definitions: dict[tuple[str, str, int | None], Definition | None] = {}
        for send in queued:
            key = (send["source"], send["source_id"], send["step"])
            if key not in definitions:
                table = store.campaigns if send["source"] == "campaign" else store.journeys
                row = await store.get_definition(session=session, table=table, id=send["source_id"])
                definitions[key] = None if row is None else _definition(row, send["source"], send)
        profile_ids = [s["profile_id"] for s in queued]
        contacts = await store.contacts_of(session=session, profile_ids=profile_ids)
        segments = await store.segments_of(session=session, profile_ids=profile_ids)
        since = now - timedelta(hours=ctx.settings.campaign_frequency_window_hours)

        waiting: list[tuple[dict[str, Any], Definition]] = []
        passed: list[tuple[dict[str, Any], Definition, dict[str, Any] | None, str, Any, list[str]]] = []
        for send in queued:
            definition = definitions[(send["source"], send["source_id"], send["step"])]
            if definition is None or definition.status in (Status.COMPLETED, "archived"):
                skipped[send["id"]] = SkipReason.CAMPAIGN_NOT_RUNNING
            elif definition.running:
                waiting.append((send, definition))
            # a paused campaign's sends stay queued until it resumes

        groups: dict[tuple[str, str], list[str]] = {}
        for send, definition in waiting:
            groups.setdefault((definition.purpose, definition.consent_channel), []).append(send["profile_id"])
        allowed: dict[tuple[str, str], set[str]] = {}
        refusals: dict[tuple[str, str], dict[str, str]] = {}
        unavailable: set[tuple[str, str]] = set()
        for pair, ids in groups.items():
            try:
                verdicts = await ctx.consent.check(
                    profile_ids=sorted(set(ids)), purpose=pair[0], channel=pair[1]
                )
                allowed[pair], refusals[pair] = verdicts.allowed, verdicts.refused
            except ConsentUnavailable as exc:
                logger.warning("consent check failed (%s); nobody contacted", exc, extra={"error": str(exc)})
                unavailable.add(pair)

        for send, definition in waiting:
            pid = send["profile_id"]
            pair = (definition.purpose, definition.consent_channel)
            contact = contacts.get(pid)
            address = _address_of(contact, definition)
            if pair in unavailable:
                skipped[send["id"]] = SkipReason.CONSENT_UNAVAILABLE
                continue
            if pid not in allowed[pair]:
                reason = refusals[pair].get(pid, "no_record")
                skipped[send["id"]] = (
                    SkipReason.SUPPRESSED if reason == "suppressed" else f"{SkipReason.NO_CONSENT}:{reason}"
                )
                continue
            if address is None:
                skipped[send["id"]] = SkipReason.NO_ADDRESS
                continue
            if definition.channel != "webhook":
                resume = ctx.quiet_hours.next_allowed(now=now, timezone=(contact or {}).get("timezone"))
                if resume is not None:
                    deferred[send["id"]] = resume
                    continue
            assert definition.content is not None
            content = definition.content.for_locale((contact or {}).get("locale"))
            sources = [s for s in (content.subject, content.body, content.text) if s is not None]
            passed.append((send, definition, contact, address, content, sources))

        # One question for the job: who of those whose templates read the person is excluded.
        readers = [send["profile_id"] for send, *_, sources in passed if any(map(reads_the_person, sources))]
        impersonal = await excluded_from_personalisation(ctx=ctx, profile_ids=readers) if readers else set()
        for send, definition, contact, address, content, sources in passed:
            pid = send["profile_id"]
            values = await render_values(
                session=session,
                profile_id=pid,
                contact=contact,
                segments=segments.get(pid, []),
                sources=sources,
                name=definition.name,
                personal=pid not in impersonal,
            )
            drafts.append(
                Draft(
                    channel=definition.channel,
                    subject=content.subject,
                    body=content.body,
                    text=content.text,
                    values=values,
                    reference=send["id"],
                    sender=ctx.settings.campaign_mail_from,
                    to=address,
                    tracking=tracking,
                )
            )
            drafted.append((send, address, definition))

    for (send, address, definition), result in zip(
        drafted, await ctx.composer.compose_many(drafts), strict=True
    ):
        if isinstance(result, Refused):
            logger.warning("template failed", extra={"send_id": send["id"], "error": result.reason})
            skipped[send["id"]] = SkipReason.RENDER_FAILED
            continue
        outgoing.append(
            Outgoing(
                send, address, result.subject, result.body, result.text, definition.webhook_url, result.mail
            )
        )

    return PreparedSends(now=now, since=since, outgoing=outgoing, skipped=skipped, deferred=deferred)


async def hand_over_sends(*, ctx: CampaignContext, prepared: PreparedSends) -> dict[str, int]:
    """Record the skipped and deferred, claim the rest within the frequency caps, hand them over,
    and record how each hand-over went."""
    factory = ctx.session_factory
    now, skipped, deferred = prepared.now, dict(prepared.skipped), prepared.deferred
    async with transaction(factory) as session:
        outgoing = await _within_caps(
            session=session, ctx=ctx, outgoing=prepared.outgoing, since=prepared.since, skipped=skipped
        )
        for reason in set(skipped.values()):
            ids = [i for i, r in skipped.items() if r == reason]
            await store.set_send_status(
                session=session, send_ids=ids, status="skipped", from_statuses=["queued"], reason=reason
            )
        for send_id, resume in deferred.items():
            await store.set_send_status(
                session=session,
                send_ids=[send_id],
                status="deferred",
                from_statuses=["queued"],
                reason="quiet_hours",
                not_before=resume,
            )
        claimed = set(
            await store.claim_sends(
                session=session, addresses={o.send["id"]: o.address for o in outgoing}, at=now
            )
        )
    # The claim is committed before anything leaves: a crash from here on is reported, not repeated.
    results = await _hand_over_all(ctx, [o for o in outgoing if o.send["id"] in claimed])
    async with transaction(factory) as session:
        for status in ("sent", "bounced", "failed", "unknown"):
            ids = [send_id for send_id, s, _ in results if s == status]
            errors = {send_id: e for send_id, s, e in results if s == status}
            if status == "sent":
                await store.set_send_status(
                    session=session, send_ids=ids, status="sent", from_statuses=["handing_over", "unknown"]
                )
            else:
                for send_id in ids:
                    await store.set_send_status(
                        session=session,
                        send_ids=[send_id],
                        status=status,
                        from_statuses=["handing_over"],
                        reason=status,
                        error=errors[send_id],
                    )
    summary: dict[str, int] = {"skipped": len(skipped), "deferred": len(deferred)}
    for _, status, _ in results:
        summary[status] = summary.get(status, 0) + 1
    for status, n in summary.items():
        SENDS.labels(status).inc(n)
    return summary


def _address_of(contact: dict[str, Any] | None, definition: Definition) -> str | None:
    if definition.channel == "webhook":
        return definition.webhook_url
    if contact is None:
        return None
    return contact.get("email") if definition.channel == "email" else contact.get("phone")


async def _hand_over_all(ctx: CampaignContext, outgoing: list[Outgoing]) -> list[tuple[str, str, str | None]]:
    """Hand sends over, e-mails by as many workers as there are SMTP connections, the rest at once."""
    emails = [o for o in outgoing if o.send["channel"] == "email"]
    others = [o for o in outgoing if o.send["channel"] != "email"]
    results = list(await asyncio.gather(*(_hand_over(ctx, o) for o in others)))
    pending = iter(emails)

    async def worker() -> None:
        # A few workers pulling from one iterator, rather than a task per e-mail queueing for a connection.
        for item in pending:
            results.append(await _hand_over(ctx, item))

    await asyncio.gather(*(worker() for _ in range(min(len(emails), ctx.settings.campaign_smtp_connections))))
    return results


async def _hand_over(ctx: CampaignContext, outgoing: Outgoing) -> tuple[str, str, str | None]:
    send = outgoing.send
    attempts = ctx.settings.campaign_send_attempts
    for attempt in range(1, attempts + 1):
        try:
            await _transmit(ctx, outgoing)
            return send["id"], "sent", None
        except Rejected as exc:
            return send["id"], "bounced", str(exc)[:500]
        except AddressNotAllowed as exc:
            return send["id"], "failed", f"{SkipReason.ADDRESS_NOT_ALLOWED}: {exc}"[:500]
        except HandOverUnknown as exc:
            return send["id"], "unknown", str(exc)[:500]
        except TemporaryFailure as exc:
            if attempt == attempts:
                return send["id"], "failed", str(exc)[:500]
            await asyncio.sleep(ctx.settings.campaign_retry_backoff_s * 2 ** (attempt - 1))
    return send["id"], "failed", "no attempt left"


async def _transmit(ctx: CampaignContext, outgoing: Outgoing) -> None:
    send = outgoing.send
    if send["channel"] == "email":
        assert outgoing.mail is not None, "an e-mail is built when it is composed"
        await ctx.mailer.send(outgoing.mail)
    elif send["channel"] == "sms":
        await ctx.sms.send_sms(to=outgoing.address, body=outgoing.text or outgoing.body, reference=send["id"])
    else:
        await ctx.webhooks.post(
            url=outgoing.address,
            payload={
                "send_id": send["id"],
                "profile_id": send["profile_id"],
                "source": send["source"],
                "source_id": send["source_id"],
                "variant": send["variant"],
                "subject": outgoing.subject,
                "body": outgoing.body,
            },
            reference=send["id"],
        )


# --- test sends ---------------------------------------------------------------------------------


async def send_test_email(
    *,
    session: AsyncSession,
    ctx: CampaignContext,
    campaign_id: str,
    address: str,
    variant_key: str | None,
    profile_id: str | None,
) -> dict[str, Any]:
    """Render a variant for a profile (or with no data) and e-mail it to an address, untracked."""
    row = await load_campaign(session=session, campaign_id=campaign_id)
    spec = parsed_campaign(row["spec"])
    if spec.channel != "email":
        raise CampaignError("test sends are for e-mail campaigns", code="unsupported_channel")
    variant = spec.variant(variant_key) if variant_key else spec.variants[0]
    try:
        to = normalise_identifier("email", address)
    except InvalidIdentifier as exc:
        raise CampaignError(str(exc), code="invalid_address") from exc
    if "@" not in to:
        raise CampaignError("not an e-mail address", code="invalid_address")
    try:
        if await ctx.consent.is_suppressed(kind="email", value=to):
            raise CampaignError("the address is on the suppression list", code="suppressed")
    except ConsentUnavailable as exc:
        raise CampaignError(
            "the consent service cannot say whether the address is suppressed", code="consent_unavailable"
        ) from exc
    contact = (
        (await store.contacts_of(session=session, profile_ids=[profile_id])).get(profile_id)
        if profile_id
        else None
    )
    segments = (
        (await store.segments_of(session=session, profile_ids=[profile_id]))[profile_id] if profile_id else []
    )
    content = variant.for_locale((contact or {}).get("locale"))
    sources = [s for s in (content.subject, content.body, content.text) if s is not None]
    impersonal = (
        await excluded_from_personalisation(ctx=ctx, profile_ids=[profile_id])
        if profile_id and any(map(reads_the_person, sources))
        else set()
    )
    values = await render_values(
        session=session,
        profile_id=profile_id,
        contact=contact,
        segments=segments,
        sources=sources,
        name=spec.name,
        personal=profile_id not in impersonal,
    )
    reference = new_id("test")
    draft = Draft(
        channel="email",
        subject=content.subject or "",
        body=content.body,
        text=content.text,
        values=values,
        reference=reference,
        sender=ctx.settings.campaign_mail_from,
        to=to,
        subject_prefix="[TEST] ",
    )
    try:
        (composed,) = await ctx.composer.compose_many([draft])
    except ComposerUnavailable as exc:
        raise CampaignError(str(exc), code="composing_unavailable") from exc
    if isinstance(composed, Refused):
        raise CampaignError(
            composed.reason,
            code="invalid_template",
            details={"variant": variant.key, "field": composed.field, "line": composed.line},
        )
    assert composed.mail is not None
    subject = composed.subject
    try:
        await ctx.mailer.send(composed.mail)
    except Rejected as exc:
        raise CampaignError(
            f"the mail server refused the test e-mail: {exc}", code="address_rejected"
        ) from exc
    except (TemporaryFailure, HandOverUnknown) as exc:
        raise CampaignError(f"the test e-mail was not accepted: {exc}", code="smtp_failed") from exc
    return {"sent": True, "reference": reference, "variant": variant.key, "subject": subject}


# --- engagement --------------------------------------------------------------------------------

ENGAGEMENT_EVENTS = {
    "opened": "Email Opened",
    "clicked": "Email Link Clicked",
    "unsubscribed": "Unsubscribed",
}


async def record_tracking(
    *, ctx: CampaignContext, send_id: str, kind: str, user_agent: str | None = None, url: str | None = None
) -> bool:
    """Record an open, click or unsubscribe of a send and send it back through ingest; False if unknown."""
    now = ctx.clock.now()
    async with transaction(ctx.session_factory) as session:
        send = await store.get_send(session=session, send_id=send_id)
        if send is None:
            return False
        definition: Definition | None = None
        table = store.campaigns if send["source"] == "campaign" else store.journeys
        row = await store.get_definition(session=session, table=table, id=send["source_id"])
        if row is not None and send["variant"] != HOLDOUT:
            definition = _definition(row, send["source"], send)
    profile_id = send["profile_id"]
    if kind == "unsubscribed" and definition is not None and profile_id is not None:
        # Withdraw before recording, so a failed withdrawal leaves nothing behind and a retry does it all.
        try:
            await ctx.consent.withdraw(
                profile_id=profile_id, purpose=definition.purpose, channel=definition.consent_channel, at=now
            )
        except ConsentUnavailable:
            logger.exception("could not withdraw consent after an unsubscribe", extra={"send_id": send_id})
            raise
    stored_kind = "opened_privacy_proxy" if kind == "opened" and is_privacy_proxy_open(user_agent) else kind
    dedupe = "once" if kind == "unsubscribed" else None
    async with transaction(ctx.session_factory) as session:
        fresh = await store.record_engagement(
            session=session, send_id=send_id, kind=stored_kind, at=now, url=url, dedupe_key=dedupe
        )
    if profile_id is None:
        return True
    if not fresh:
        return True
    properties: dict[str, Any] = {
        "send_id": send_id,
        "campaign_id" if send["source"] == "campaign" else "journey_id": send["source_id"],
        "variant": send["variant"],
        "channel": send["channel"],
    }
    if url is not None:
        properties["url"] = url
    if stored_kind == "opened_privacy_proxy":
        properties["privacy_proxy"] = True
    try:
        await ctx.tracker.track(
            profile_id=profile_id,
            event=ENGAGEMENT_EVENTS[kind],
            properties=properties,
            message_id=f"{send_id}:{stored_kind}:{secrets.token_hex(4) if dedupe is None else dedupe}",
            at=now,
        )
    except Exception:
        logger.exception("could not send engagement back through ingest", extra={"send_id": send_id})
    return True
