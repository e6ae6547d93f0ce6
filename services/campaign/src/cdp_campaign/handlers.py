"""One async function per command or event of the campaign service.

Commands: create and change campaigns and journeys, launch, test-send, record engagement.
Events: profile changes (contact points, traits, goal events, purchases, triggers),
segment entries and exits, and send jobs (the worker that checks and hands over).
"""

from __future__ import annotations

import asyncio
import ipaddress
import logging
import secrets
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from typing import Any

import orjson
import sqlalchemy as sa
from cdp_common.db import transaction
from cdp_common.envelope import Envelope
from cdp_common.events import (
    CampaignSendsRequested,
    ProfileChanged,
    SegmentEntered,
    TrackingEventReceived,
    make_envelope,
)
from cdp_common.identifiers import InvalidIdentifier, normalise_identifier
from cdp_common.outbox import add_to_outbox
from cdp_common.replica import apply_profile_versions
from cdp_common.topics import ServiceTopic
from sqlalchemy.ext.asyncio import AsyncSession, async_sessionmaker

from cdp_campaign import store
from cdp_campaign.domain.addresses import AddressNotAllowed, check_address, check_url_shape
from cdp_campaign.domain.assignment import HOLDOUT, assign_group
from cdp_campaign.domain.campaigns import (
    CampaignError,
    CampaignSpec,
    DateTraitTrigger,
    EventTrigger,
    SegmentAudience,
    SegmentEnteredTrigger,
    Status,
    Variant,
    check_transition,
    consent_pair,
)
from cdp_campaign.domain.compose import Draft, Refused, Tracking, trial_draft
from cdp_campaign.domain.journeys import Facts, JourneySpec, Position, SendStep, WaitStep, advance
from cdp_campaign.domain.messages import OutgoingMail
from cdp_campaign.domain.recommendations import Purchase, recommend
from cdp_campaign.domain.rules import QuietHours, SkipReason, over_cap
from cdp_campaign.domain.stats import GroupOutcome, uplift
from cdp_campaign.domain.templates import uses_name
from cdp_campaign.domain.tokens import is_privacy_proxy_open
from cdp_campaign.gateways import (
    Clock,
    Composer,
    ComposerUnavailable,
    ConsentGate,
    ConsentUnavailable,
    EngagementTracker,
    HandOverUnknown,
    InlineComposer,
    MailSender,
    Rejected,
    SmsProvider,
    TemporaryFailure,
    WebhookSender,
)
from cdp_campaign.metrics import SENDS
from cdp_campaign.settings import Settings

logger = logging.getLogger(__name__)

SERVICE = "campaign"
# Send jobs spread over the service's replicas; no other service reads or writes it.
SENDS_TOPIC = ServiceTopic("cdp.campaign-sends.v1")
ORDER_COMPLETED = "Order Completed"


@dataclass
class CampaignContext:
    """What the handlers need besides a session: settings, the database and the ways out."""

    settings: Settings
    session_factory: Callable[[], async_sessionmaker[AsyncSession]]
    consent: ConsentGate
    tracker: EngagementTracker
    mailer: MailSender
    sms: SmsProvider
    webhooks: WebhookSender
    clock: Clock
    composer: Composer = field(default_factory=InlineComposer)

    @property
    def sends_topic(self) -> str:
        """The environment's send-job topic."""
        return self.settings.topic(SENDS_TOPIC)

    @property
    def hash_key(self) -> str:
        """The platform's hash key, which also signs tokens and webhooks."""
        return self.settings.hash_key.get_secret_value()

    @property
    def quiet_hours(self) -> QuietHours:
        """The quiet hours every recipient gets in their own time zone."""
        return QuietHours(start=self.settings.campaign_quiet_start, end=self.settings.campaign_quiet_end)


def new_id(prefix: str) -> str:
    """Return a new random id with a prefix."""
    return f"{prefix}_{secrets.token_hex(8)}"


_PARSED_SPECS: dict[tuple[type[Any], bytes], Any] = {}
_PARSED_SPECS_MAX = 1024


def parsed_campaign(spec: dict[str, Any]) -> CampaignSpec:
    """Return a stored campaign definition parsed, once per distinct content (it is only read)."""
    parsed: CampaignSpec = _parsed(CampaignSpec, spec)
    return parsed


def parsed_journey(spec: dict[str, Any]) -> JourneySpec:
    """Return a stored journey definition parsed, once per distinct content (it is only read)."""
    parsed: JourneySpec = _parsed(JourneySpec, spec)
    return parsed


def _parsed(model: type[Any], spec: dict[str, Any]) -> Any:
    # Keyed by the content itself, so a changed definition can never be served stale; trigger
    # matching reads every running campaign on every event, and this spares the validation.
    key = (model, orjson.dumps(spec, option=orjson.OPT_SORT_KEYS))
    found = _PARSED_SPECS.get(key)
    if found is None:
        if len(_PARSED_SPECS) >= _PARSED_SPECS_MAX:
            _PARSED_SPECS.clear()
        found = _PARSED_SPECS[key] = model.model_validate(spec)
    return found


# --- campaigns: definition and status ---------------------------------------------------------


def campaign_view(row: dict[str, Any]) -> dict[str, Any]:
    """Return a campaign as the API shows it."""
    return {
        "id": row["id"],
        "status": row["status"],
        **row["spec"],
        "next_run_at": row["next_run_at"],
        "runs": row["runs"],
        "created_at": row["created_at"],
        "updated_at": row["updated_at"],
    }


def _validate_webhook(url: str | None) -> None:
    if url is None:
        return
    try:
        _, host, _ = check_url_shape(url)
        if _is_ip_literal(host):
            check_address(host, allowlist=[])
    except AddressNotAllowed as exc:
        raise CampaignError(str(exc), code="webhook_not_allowed", details={"webhook_url": url}) from exc


def _is_ip_literal(host: str) -> bool:
    try:
        ipaddress.ip_address(host)
    except ValueError:
        return False
    return True


async def create_campaign(
    *, session: AsyncSession, ctx: CampaignContext, spec: CampaignSpec
) -> dict[str, Any]:
    """Store a new campaign as a draft."""
    await check_templates(composer=ctx.composer, name=spec.name, contents=campaign_contents(spec))
    _validate_webhook(spec.webhook_url)
    return await store.insert_definition(
        session=session,
        table=store.campaigns,
        id=new_id("cmp"),
        name=spec.name,
        status=Status.DRAFT.value,
        spec=spec.model_dump(mode="json"),
    )


async def check_templates(
    *, composer: Composer, name: str, contents: Sequence[tuple[dict[str, Any], str, Variant]]
) -> None:
    """Try every template of a definition's contents (each with where it is and its channel) the way
    a send renders them, for a representative person; raise CampaignError(invalid_template) for the
    first that cannot render safely."""
    drafts: list[tuple[dict[str, Any], Draft]] = []
    for where, channel, variant in contents:
        for locale, content in [(None, variant), *variant.locales.items()]:
            place = {**where, "locale": locale} if locale is not None else where
            drafts.append((place, trial_draft(channel=channel, content=content, campaign_name=name)))
    try:
        results = await composer.compose_many([draft for _, draft in drafts])
    except ComposerUnavailable as exc:
        raise CampaignError(str(exc), code="composing_unavailable") from exc
    for (place, _), result in zip(drafts, results, strict=True):
        # A value missing from the sample person is missing for some recipients too; it is
        # recorded per recipient at send time, as for any template that reads traits.
        if isinstance(result, Refused) and not result.missing_value:
            raise CampaignError(
                f"{result.field}: {result.reason}",
                code="invalid_template",
                details={**place, "field": result.field, "line": result.line, "reason": result.reason},
            )


def campaign_contents(spec: CampaignSpec) -> list[tuple[dict[str, Any], str, Variant]]:
    """Return a campaign's contents for check_templates: each variant on the campaign's channel."""
    return [({"variant": variant.key}, spec.channel, variant) for variant in spec.variants]


def journey_contents(spec: JourneySpec) -> list[tuple[dict[str, Any], str, Variant]]:
    """Return a journey's contents for check_templates: each send step's content on its channel."""
    return [
        ({"step": index}, step.channel, step.content)
        for index, step in enumerate(spec.steps)
        if isinstance(step, SendStep)
    ]


async def load_campaign(
    *, session: AsyncSession, campaign_id: str, for_update: bool = False
) -> dict[str, Any]:
    """Return a campaign row or raise CampaignError(not_found)."""
    row = await store.get_definition(
        session=session, table=store.campaigns, id=campaign_id, for_update=for_update
    )
    if row is None:
        raise CampaignError(f"no campaign {campaign_id!r}", code="not_found")
    return row


async def update_campaign(
    *, session: AsyncSession, ctx: CampaignContext, campaign_id: str, spec: CampaignSpec
) -> dict[str, Any]:
    """Replace a draft or paused campaign's definition."""
    row = await load_campaign(session=session, campaign_id=campaign_id, for_update=True)
    if row["status"] not in (Status.DRAFT, Status.PAUSED, Status.SCHEDULED):
        raise CampaignError(
            f"a {row['status']} campaign cannot be changed; pause it first", code="invalid_transition"
        )
    await check_templates(composer=ctx.composer, name=spec.name, contents=campaign_contents(spec))
    _validate_webhook(spec.webhook_url)
    await store.update_definition(
        session=session,
        table=store.campaigns,
        id=campaign_id,
        name=spec.name,
        spec=spec.model_dump(mode="json"),
    )
    return await load_campaign(session=session, campaign_id=campaign_id)


async def delete_campaign(*, session: AsyncSession, campaign_id: str) -> None:
    """Delete a draft campaign (others are kept for their results)."""
    row = await load_campaign(session=session, campaign_id=campaign_id, for_update=True)
    if row["status"] != Status.DRAFT:
        raise CampaignError(
            "only a draft can be deleted; complete the campaign instead", code="invalid_transition"
        )
    await store.delete_definition(session=session, table=store.campaigns, id=campaign_id)


async def schedule_campaign(
    *, session: AsyncSession, ctx: CampaignContext, campaign_id: str
) -> dict[str, Any]:
    """Schedule a draft: it starts at once for a `now` schedule, else at its time."""
    row = await load_campaign(session=session, campaign_id=campaign_id, for_update=True)
    spec = parsed_campaign(row["spec"])
    now = ctx.clock.now()
    start = spec.schedule.at if spec.schedule.type != "now" and spec.schedule.at is not None else now
    target = Status.SCHEDULED if start > now else Status.RUNNING
    check_transition(current=Status(row["status"]), target=target)
    if isinstance(spec.audience, DateTraitTrigger) or spec.is_broadcast:
        next_run: datetime | None = start
    else:
        next_run = start if target is Status.SCHEDULED else None
    await store.update_definition(
        session=session, table=store.campaigns, id=campaign_id, status=target.value, next_run_at=next_run
    )
    if target is Status.RUNNING and next_run is not None:
        await run_due_campaigns(session=session, ctx=ctx, now=now, only=campaign_id)
    return await load_campaign(session=session, campaign_id=campaign_id)


async def set_campaign_status(
    *, session: AsyncSession, ctx: CampaignContext, campaign_id: str, target: Status
) -> dict[str, Any]:
    """Pause, resume or complete a campaign; a resumed campaign's waiting sends are queued again."""
    row = await load_campaign(session=session, campaign_id=campaign_id, for_update=True)
    current = Status(row["status"])
    if target is Status.RUNNING and current is not Status.PAUSED:
        raise CampaignError(
            f"only a paused campaign can be resumed; this one is {current.value}", code="invalid_transition"
        )
    not_started = row["next_run_at"] is not None and row["runs"] == 0
    if target is Status.RUNNING and not_started and row["next_run_at"] > ctx.clock.now():
        target = Status.SCHEDULED
    check_transition(current=current, target=target)
    await store.update_definition(session=session, table=store.campaigns, id=campaign_id, status=target.value)
    if target is Status.RUNNING:
        queued = await store.queued_send_ids(session=session, source="campaign", source_id=campaign_id)
        await enqueue_sends(session=session, ctx=ctx, send_ids=queued, key=campaign_id)
        await run_due_campaigns(session=session, ctx=ctx, now=ctx.clock.now(), only=campaign_id)
    return await load_campaign(session=session, campaign_id=campaign_id)


# --- audiences and send records ----------------------------------------------------------------


async def enqueue_sends(
    *, session: AsyncSession, ctx: CampaignContext, send_ids: Sequence[str], key: str
) -> None:
    """Publish send jobs (through the outbox) for workers to pick up."""
    size = ctx.settings.campaign_send_job_size
    for start in range(0, len(send_ids), size):
        chunk = list(send_ids[start : start + size])
        envelope = make_envelope(
            payload=CampaignSendsRequested(send_ids=chunk), source=SERVICE, subject=f"{key}:{start // size}"
        )
        await add_to_outbox(session=session, topic=ctx.sends_topic, envelope=envelope)


async def record_campaign_sends(
    *,
    session: AsyncSession,
    ctx: CampaignContext,
    campaign_id: str,
    spec: CampaignSpec,
    profile_ids: Sequence[str],
    run_key: str,
) -> list[str]:
    """Assign each person to the holdout or a variant, record the sends, queue the non-holdout ones."""
    now = ctx.clock.now()
    variants = [(v.key, v.weight) for v in spec.variants]
    rows: list[dict[str, Any]] = []
    for profile_id in profile_ids:
        group = assign_group(
            campaign_id=campaign_id,
            profile_id=profile_id,
            holdout_percent=spec.holdout_percent,
            variants=variants,
        )
        rows.append(
            {
                "id": store.send_id_for(
                    source="campaign",
                    source_id=campaign_id,
                    step=None,
                    run_key=run_key,
                    profile_id=profile_id,
                ),
                "source": "campaign",
                "source_id": campaign_id,
                "profile_id": profile_id,
                "profile_hash": store.profile_hash(key=ctx.hash_key, profile_id=profile_id),
                "variant": group,
                "channel": spec.channel,
                "status": "holdout" if group == HOLDOUT else "queued",
                "reason": SkipReason.HOLDOUT if group == HOLDOUT else None,
                "created_at": now,
            }
        )
    new = set(await store.insert_sends(session=session, rows=rows))
    queued = [str(r["id"]) for r in rows if r["id"] in new and r["status"] == "queued"]
    await enqueue_sends(session=session, ctx=ctx, send_ids=queued, key=campaign_id)
    return queued


async def run_due_campaigns(
    *, session: AsyncSession, ctx: CampaignContext, now: datetime, only: str | None = None
) -> int:
    """Start scheduled campaigns whose time came and run broadcasts and date triggers that are due."""
    started = 0
    for row in await store.due_campaigns(session=session, now=now):
        if only is not None and row["id"] != only:
            continue
        spec = parsed_campaign(row["spec"])
        runs = row["runs"] + 1
        next_run: datetime | None = None
        if isinstance(spec.audience, SegmentAudience):
            members = await store.segment_members(session=session, segment_key=spec.audience.segment_key)
            await record_campaign_sends(
                session=session,
                ctx=ctx,
                campaign_id=row["id"],
                spec=spec,
                profile_ids=members,
                run_key=f"run{runs}",
            )
            if spec.schedule.type == "recurring" and spec.schedule.every_hours:
                next_run = row["next_run_at"] + timedelta(hours=spec.schedule.every_hours)
                while next_run <= now:
                    next_run += timedelta(hours=spec.schedule.every_hours)
        elif isinstance(spec.audience, DateTraitTrigger):
            today = now.date()
            profile_ids = await _profiles_with_date_today(
                session=session, trait=spec.audience.trait, month_day=today.strftime("%m-%d")
            )
            await record_campaign_sends(
                session=session,
                ctx=ctx,
                campaign_id=row["id"],
                spec=spec,
                profile_ids=profile_ids,
                run_key=f"{spec.audience.trait}:{today.year}",
            )
            next_run = datetime.combine(today + timedelta(days=1), datetime.min.time(), tzinfo=UTC)
        await store.update_definition(
            session=session,
            table=store.campaigns,
            id=row["id"],
            status=Status.RUNNING.value,
            runs=runs,
            next_run_at=next_run,
        )
        started += 1
    return started


async def _profiles_with_date_today(*, session: AsyncSession, trait: str, month_day: str) -> list[str]:
    value = store.contacts.c.traits[trait].as_string()
    rows = await session.execute(
        sa.select(store.contacts.c.profile_id).where(sa.func.substr(value, 6, 5) == month_day)
    )
    return list(rows.scalars())


async def trigger_campaigns(
    *, session: AsyncSession, ctx: CampaignContext, profile_id: str, matches: Callable[[Any], bool]
) -> None:
    """Record a send for every running trigger campaign whose trigger matches; once per person."""
    for row in await store.running_campaigns(session=session):
        spec = parsed_campaign(row["spec"])
        if not spec.is_broadcast and matches(spec.audience):
            await record_campaign_sends(
                session=session,
                ctx=ctx,
                campaign_id=row["id"],
                spec=spec,
                profile_ids=[profile_id],
                run_key="trigger",
            )


# --- consumers of platform events ----------------------------------------------------------------

_CONTACT_TRAITS = {
    "email": "email",
    "phone": "phone",
    "locale": "locale",
    "timezone": "timezone",
    "time_zone": "timezone",
}


def _contact_fields(traits: dict[str, Any]) -> dict[str, Any]:
    fields: dict[str, Any] = {}
    for trait, column in _CONTACT_TRAITS.items():
        if trait not in traits:
            continue
        value = traits[trait]
        if value is None:
            fields[column] = None
            continue
        text = str(value).strip()
        if column in ("email", "phone"):
            try:
                text = normalise_identifier(column, text)
            except InvalidIdentifier:
                continue
        fields[column] = text[:320]
    return fields


def _filters_match(trigger: EventTrigger, event: TrackingEventReceived) -> bool:
    return event.event == trigger.event and all(
        event.properties.get(f.property) == f.equals for f in trigger.filters
    )


async def _referenced_events(*, session: AsyncSession) -> set[str]:
    names = {ORDER_COMPLETED}
    for row in await store.unfinished_campaigns(session=session):
        spec = row["spec"]
        if spec.get("goal"):
            names.add(spec["goal"]["event"])
    for row in await store.active_journeys(session=session):
        spec = row["spec"]
        if spec.get("goal"):
            names.add(spec["goal"]["event"])
        names.update(s["until_event"] for s in spec["steps"] if s["type"] == "wait" and s.get("until_event"))
    return names


def _revenue_of(properties: dict[str, Any]) -> float | None:
    for name in ("revenue", "total", "value"):
        value = properties.get(name)
        if isinstance(value, int | float) and not isinstance(value, bool):
            return float(value)
    return None


def _contact_change(data: ProfileChanged) -> dict[str, Any] | None:
    if not (data.changed_traits or data.changed_computed_traits):
        return None
    return {
        "profile_id": data.profile_id,
        "version": data.version,
        "fields": _contact_fields(data.changed_traits),
        "traits": data.changed_traits,
        "computed": data.changed_computed_traits,
    }


def _tracked_event(data: ProfileChanged) -> TrackingEventReceived | None:
    """Return the track call that caused a change, the only kind goals, triggers and journeys act on."""
    event = data.event
    return event if event is not None and event.type == "track" and event.event else None


async def on_profile_changed(*, session: AsyncSession, envelope: Envelope[Any], ctx: CampaignContext) -> None:
    """Keep contact points and traits, goal events and purchases; fire event triggers and journeys."""
    await on_profiles_changed(session=session, envelopes=[envelope], ctx=ctx)


async def on_profiles_changed(
    *, session: AsyncSession, envelopes: Sequence[Envelope[Any]], ctx: CampaignContext
) -> None:
    """Apply profile changes in order, as on_profile_changed one at a time, in a few statements.

    Contact changes are written together; before a track call's goals, triggers and
    journeys are acted on, every contact change up to it is written.
    """
    versions = [(envelope.data.profile_id, envelope.data.version, None) for envelope in envelopes]
    await apply_profile_versions(session=session, table=store.known_profiles, versions=versions)
    contacts: list[dict[str, Any]] = []
    for envelope in envelopes:
        data: ProfileChanged = envelope.data
        change = _contact_change(data)
        if change is not None:
            contacts.append(change)
        event = _tracked_event(data)
        if event is not None:
            await store.apply_contacts(session=session, changes=contacts)
            contacts = []
            await _act_on_tracked_event(session=session, ctx=ctx, profile_id=data.profile_id, event=event)
    await store.apply_contacts(session=session, changes=contacts)


async def _act_on_tracked_event(
    *, session: AsyncSession, ctx: CampaignContext, profile_id: str, event: TrackingEventReceived
) -> None:
    """Record a goal event or purchase, convert open sends, and fire event triggers and journeys."""
    assert event.event is not None
    name = event.event
    if name in await _referenced_events(session=session):
        revenue = _revenue_of(event.properties)
        fresh = await store.record_event(
            session=session,
            event_id=event.messageId + ":" + event.sourceId,
            profile_id=profile_id,
            event=name,
            at=event.timestamp,
            revenue=revenue,
        )
        if not fresh:
            return
        if name == ORDER_COMPLETED:
            await store.record_purchases(session=session, rows=_purchase_rows(profile_id, event))
        for send in await store.open_sends_for_goal(
            session=session, profile_id=profile_id, event=name, at=event.timestamp
        ):
            await store.record_engagement(
                session=session,
                send_id=send["id"],
                kind="converted",
                at=event.timestamp,
                revenue=revenue,
                dedupe_key=event.messageId,
            )
        await _journeys_on_event(session=session, ctx=ctx, profile_id=profile_id, event=name)
    await trigger_campaigns(
        session=session,
        ctx=ctx,
        profile_id=profile_id,
        matches=lambda audience: isinstance(audience, EventTrigger) and _filters_match(audience, event),
    )
    await enter_journeys(
        session=session,
        ctx=ctx,
        profile_id=profile_id,
        matches=lambda trigger: isinstance(trigger, EventTrigger) and _filters_match(trigger, event),
    )


def _purchase_rows(profile_id: str, event: TrackingEventReceived) -> list[dict[str, Any]]:
    products = event.properties.get("products")
    if not isinstance(products, list):
        return []
    order_id = str(event.properties.get("order_id") or event.messageId)
    rows = []
    for line, product in enumerate(products[:200]):
        if not isinstance(product, dict):
            continue
        product_id = product.get("product_id") or product.get("sku") or product.get("id")
        if product_id is None:
            continue
        price = product.get("price")
        quantity = product.get("quantity")
        rows.append(
            {
                "event_id": event.messageId + ":" + event.sourceId,
                "line": line,
                "profile_id": profile_id,
                "order_id": order_id,
                "product_id": str(product_id)[:200],
                "name": str(product["name"])[:500] if product.get("name") else None,
                "category": str(product["category"])[:200] if product.get("category") else None,
                "price": float(price) if isinstance(price, int | float) else None,
                "quantity": int(quantity) if isinstance(quantity, int) and quantity > 0 else 1,
                "at": event.timestamp,
            }
        )
    return rows


async def on_segment_entered(*, session: AsyncSession, envelope: Envelope[Any], ctx: CampaignContext) -> None:
    """Record the membership; send trigger campaigns and start journeys for this segment."""
    await on_segments_entered(session=session, envelopes=[envelope], ctx=ctx)


async def on_segments_entered(
    *, session: AsyncSession, envelopes: Sequence[Envelope[Any]], ctx: CampaignContext
) -> None:
    """Record the memberships in one statement, then send trigger campaigns and start journeys per entry."""
    entries: list[SegmentEntered] = await _record_memberships(
        session=session, envelopes=envelopes, member=True
    )
    for data in entries:

        def entered(audience: Any, key: str = data.segment_key) -> bool:
            return isinstance(audience, SegmentEnteredTrigger) and audience.segment_key == key

        await trigger_campaigns(session=session, ctx=ctx, profile_id=data.profile_id, matches=entered)
        await enter_journeys(session=session, ctx=ctx, profile_id=data.profile_id, matches=entered)


async def on_segment_exited(*, session: AsyncSession, envelope: Envelope[Any], ctx: CampaignContext) -> None:
    """Forget the membership."""
    await on_segments_exited(session=session, envelopes=[envelope], ctx=ctx)


async def on_segments_exited(
    *, session: AsyncSession, envelopes: Sequence[Envelope[Any]], ctx: CampaignContext
) -> None:
    """Forget the memberships, in one statement."""
    await _record_memberships(session=session, envelopes=envelopes, member=False)


async def _record_memberships(
    *, session: AsyncSession, envelopes: Sequence[Envelope[Any]], member: bool
) -> list[Any]:
    """Record segment entries (or exits) in one statement; return their payloads."""
    changes = [envelope.data for envelope in envelopes]
    await store.set_memberships(
        session=session, changes=[(d.profile_id, d.segment_key, d.at) for d in changes], member=member
    )
    return changes


# --- journeys ---------------------------------------------------------------------------------


async def enter_journeys(
    *, session: AsyncSession, ctx: CampaignContext, profile_id: str, matches: Callable[[Any], bool]
) -> None:
    """Put a person into every active journey whose trigger matches, once, and advance them."""
    now = ctx.clock.now()
    for row in await store.active_journeys(session=session):
        spec = parsed_journey(row["spec"])
        if not matches(spec.trigger):
            continue
        if await store.get_position(session=session, journey_id=row["id"], profile_id=profile_id) is not None:
            continue
        position = Position(step=0, step_started_at=now)
        await _advance_and_save(
            session=session,
            ctx=ctx,
            journey_id=row["id"],
            spec=spec,
            profile_id=profile_id,
            position=position,
            entered_at=now,
            now=now,
        )


async def _facts(
    *, session: AsyncSession, journey_id: str, spec: JourneySpec, profile_id: str, entered_at: datetime
) -> Facts:
    contact = (await store.contacts_of(session=session, profile_ids=[profile_id])).get(profile_id)
    kinds_rows = await session.execute(
        sa.select(store.engagements.c.kind)
        .distinct()
        .select_from(store.engagements.join(store.sends, store.sends.c.id == store.engagements.c.send_id))
        .where(
            store.sends.c.source == "journey",
            store.sends.c.source_id == journey_id,
            store.sends.c.profile_id == profile_id,
        )
    )
    kinds = set(kinds_rows.scalars())
    wanted = {s.until_event for s in spec.steps if isinstance(s, WaitStep) and s.until_event} | {
        ORDER_COMPLETED
    }
    event_rows = await session.execute(
        sa.select(store.profile_events.c.event, store.profile_events.c.at).where(
            store.profile_events.c.profile_id == profile_id, store.profile_events.c.event.in_(wanted)
        )
    )
    seen = [(e, at) for e, at in event_rows]
    purchased = any(e == ORDER_COMPLETED and at >= entered_at for e, at in seen)

    def engaged(kind: str) -> bool:
        if kind == "purchased":
            return purchased or "converted" in kinds
        if kind == "opened":
            return bool(kinds & {"opened", "opened_privacy_proxy", "clicked"})
        return kind in kinds

    return Facts(
        traits=dict(contact["traits"]) if contact else {},
        engaged=engaged,
        event_seen=lambda event, since: any(e == event and at >= since for e, at in seen),
    )


async def _advance_and_save(
    *,
    session: AsyncSession,
    ctx: CampaignContext,
    journey_id: str,
    spec: JourneySpec,
    profile_id: str,
    position: Position,
    entered_at: datetime,
    now: datetime,
) -> Position:
    facts = await _facts(
        session=session, journey_id=journey_id, spec=spec, profile_id=profile_id, entered_at=entered_at
    )
    outcome = advance(spec=spec, position=position, now=now, facts=facts)
    rows = []
    for index in outcome.sends:
        step = spec.steps[index]
        assert isinstance(step, SendStep)
        rows.append(
            {
                "id": store.send_id_for(
                    source="journey", source_id=journey_id, step=index, run_key="entry", profile_id=profile_id
                ),
                "source": "journey",
                "source_id": journey_id,
                "step": index,
                "profile_id": profile_id,
                "profile_hash": store.profile_hash(key=ctx.hash_key, profile_id=profile_id),
                "variant": step.content.key,
                "channel": step.channel,
                "status": "queued",
                "created_at": now,
            }
        )
    new = await store.insert_sends(session=session, rows=rows)
    await enqueue_sends(session=session, ctx=ctx, send_ids=new, key=f"{journey_id}:{profile_id}")
    p = outcome.position
    await store.save_position(
        session=session,
        journey_id=journey_id,
        profile_id=profile_id,
        entered_at=entered_at,
        step=p.step,
        state=p.state,
        wake_at=p.wake_at,
        waiting_for=p.waiting_for,
        step_started_at=p.step_started_at,
    )
    return p


def _position_of(row: dict[str, Any]) -> Position:
    return Position(
        step=row["step"],
        state=row["state"],
        wake_at=row["wake_at"],
        waiting_for=row["waiting_for"],
        step_started_at=row["step_started_at"],
    )


async def _journeys_on_event(
    *, session: AsyncSession, ctx: CampaignContext, profile_id: str, event: str
) -> None:
    now = ctx.clock.now()
    for row in await store.positions_waiting_for(session=session, profile_id=profile_id):
        journey = await store.get_definition(session=session, table=store.journeys, id=row["journey_id"])
        if journey is None or journey["status"] != "active":
            continue
        spec = parsed_journey(journey["spec"])
        if spec.goal is not None and spec.goal.event == event:
            await store.save_position(
                session=session,
                journey_id=row["journey_id"],
                profile_id=profile_id,
                entered_at=row["entered_at"],
                step=row["step"],
                state="exited",
                wake_at=None,
                waiting_for=None,
            )
        elif row["waiting_for"] == event:
            await _advance_and_save(
                session=session,
                ctx=ctx,
                journey_id=row["journey_id"],
                spec=spec,
                profile_id=profile_id,
                position=_position_of(row),
                entered_at=row["entered_at"],
                now=now,
            )


async def advance_due_positions(*, session: AsyncSession, ctx: CampaignContext, now: datetime) -> int:
    """Advance every waiting position whose time came; return how many."""
    rows = await store.positions_due(session=session, now=now)
    specs: dict[str, JourneySpec | None] = {}
    for row in rows:
        if row["journey_id"] not in specs:
            journey = await store.get_definition(session=session, table=store.journeys, id=row["journey_id"])
            specs[row["journey_id"]] = (
                parsed_journey(journey["spec"]) if journey and journey["status"] == "active" else None
            )
        spec = specs[row["journey_id"]]
        if spec is None:
            continue
        await _advance_and_save(
            session=session,
            ctx=ctx,
            journey_id=row["journey_id"],
            spec=spec,
            profile_id=row["profile_id"],
            position=_position_of(row),
            entered_at=row["entered_at"],
            now=now,
        )
    return len(rows)


# --- the scheduler tick ------------------------------------------------------------------------

_SCHEDULER_LOCK = sa.text(
    "SELECT pg_try_advisory_xact_lock(hashtextextended('cdp-campaign-scheduler:' || current_schema(), 0))"
)


async def scheduler_tick(*, ctx: CampaignContext, now: datetime) -> bool:
    """Do what is due at `now`: start campaigns, release quiet-hour sends, advance journeys, finish broadcasts."""
    async with transaction(ctx.session_factory()) as session:
        if not (await session.execute(_SCHEDULER_LOCK)).scalar_one():
            return False
        await run_due_campaigns(session=session, ctx=ctx, now=now)
        released = await store.release_deferred(session=session, now=now)
        await enqueue_sends(session=session, ctx=ctx, send_ids=released, key="released")
        await advance_due_positions(session=session, ctx=ctx, now=now)
        for row in await store.running_campaigns(session=session):
            spec = parsed_campaign(row["spec"])
            one_off = spec.is_broadcast and spec.schedule.type != "recurring" and row["runs"] >= 1
            if one_off and not await store.pending_count(
                session=session, source="campaign", source_id=row["id"]
            ):
                await store.update_definition(
                    session=session, table=store.campaigns, id=row["id"], status=Status.COMPLETED.value
                )
    return True


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
) -> dict[str, Any]:
    """Return what a template sees about a person."""
    values: dict[str, Any] = {
        "profile": dict(contact["traits"]) if contact else {},
        "computed": dict(contact["computed"]) if contact else {},
        "segments": segments,
        "locale": (contact or {}).get("locale") or "en",
        "campaign": {"name": name},
    }
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
    factory = ctx.session_factory()
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
            values = await render_values(
                session=session,
                profile_id=pid,
                contact=contact,
                segments=segments.get(pid, []),
                sources=sources,
                name=definition.name,
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
    factory = ctx.session_factory()
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


async def on_sends_requested(*, session: AsyncSession, envelope: Envelope[Any], ctx: CampaignContext) -> None:
    """Work through a send job; the sends' own records make a redelivered job harmless."""
    data: CampaignSendsRequested = envelope.data
    await deliver_sends(ctx=ctx, send_ids=data.send_ids)


async def on_sends_requested_together(
    *, session: AsyncSession, envelopes: Sequence[Envelope[Any]], ctx: CampaignContext
) -> None:
    """Work through the send jobs of one poll, `campaign_parallel_jobs` at a time."""
    await deliver_jobs(ctx=ctx, jobs=[envelope.data.send_ids for envelope in envelopes])


async def deliver_jobs(*, ctx: CampaignContext, jobs: Sequence[Sequence[str]]) -> dict[str, int]:
    """Deliver send jobs, up to `campaign_parallel_jobs` at a time; return the outcomes summed.

    Every job runs to its end before a failure is raised, so a retry of the jobs never meets
    a send another of them is still handing over (each job's records make the retry harmless).
    """
    # Preparing and handing over are limited apart, so that the next jobs are read and composed
    # while others hold the SMTP connections, and the connections do not wait between jobs;
    # at most as many jobs again as hand over are prepared ahead.
    parallel = ctx.settings.campaign_parallel_jobs
    in_flight = asyncio.Semaphore(2 * parallel)
    preparing = asyncio.Semaphore(parallel)
    handing_over = asyncio.Semaphore(parallel)

    async def one(send_ids: Sequence[str]) -> dict[str, int]:
        async with in_flight:
            async with preparing:
                prepared = await prepare_sends(ctx=ctx, send_ids=send_ids)
            async with handing_over:
                return await hand_over_sends(ctx=ctx, prepared=prepared)

    results = await asyncio.gather(*(one(job) for job in jobs), return_exceptions=True)
    totals: dict[str, int] = {}
    for result in results:
        if isinstance(result, BaseException):
            raise result
        for outcome, count in result.items():
            totals[outcome] = totals.get(outcome, 0) + count
    return totals


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
    values = await render_values(
        session=session,
        profile_id=profile_id,
        contact=contact,
        segments=segments,
        sources=sources,
        name=spec.name,
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
    async with transaction(ctx.session_factory()) as session:
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
    async with transaction(ctx.session_factory()) as session:
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


# --- the report ------------------------------------------------------------------------------------


async def campaign_report(*, session: AsyncSession, campaign_id: str) -> dict[str, Any]:
    """Return the KPIs per variant and for the holdout, with uplift and ROI."""
    row = await load_campaign(session=session, campaign_id=campaign_id)
    spec = parsed_campaign(row["spec"])
    groups: dict[str, dict[str, Any]] = {}

    def group(key: str) -> dict[str, Any]:
        return groups.setdefault(
            key,
            {
                "assigned": 0,
                "sent": 0,
                "delivered": 0,
                "bounced": 0,
                "failed": 0,
                "unknown": 0,
                "queued": 0,
                "in_flight": 0,
                "deferred": 0,
                "skipped": 0,
                "skipped_by_reason": {},
                "opened": 0,
                "opened_privacy_proxy": 0,
                "clicked": 0,
                "unsubscribed": 0,
                "converted": 0,
                "revenue": 0.0,
            },
        )

    for item in await store.campaign_report_rows(session=session, campaign_id=campaign_id):
        g = group(item["variant"])
        if "status" in item:
            status, n = item["status"], item["count"]
            g["assigned"] += n
            if status in ("sent", "unknown"):
                g["sent"] += n
            if status == "sent":
                g["delivered"] += n
            if status in ("bounced", "failed", "unknown", "queued", "deferred", "skipped"):
                g[status] += n
            if status == "handing_over":
                g["in_flight"] += n
            if status == "skipped":
                g["skipped_by_reason"][item["reason"]] = g["skipped_by_reason"].get(item["reason"], 0) + n
        else:
            g[item["engagement"]] = item["count"]
            if item["engagement"] == "converted":
                g["revenue"] = item["revenue"]
    for g in groups.values():
        g["conversion_rate"] = g["converted"] / g["assigned"] if g["assigned"] else 0.0
        g["open_rate"] = g["opened"] / g["delivered"] if g["delivered"] else 0.0
        g["click_rate"] = g["clicked"] / g["delivered"] if g["delivered"] else 0.0
    holdout = groups.get(HOLDOUT, group(HOLDOUT))
    treated = [g for k, g in groups.items() if k != HOLDOUT]
    treated_outcome = GroupOutcome(
        assigned=sum(g["assigned"] for g in treated),
        converted=sum(g["converted"] for g in treated),
        revenue=sum(g["revenue"] for g in treated),
    )
    holdout_outcome = GroupOutcome(
        assigned=holdout["assigned"], converted=holdout["converted"], revenue=holdout["revenue"]
    )
    return {
        "campaign_id": campaign_id,
        "status": row["status"],
        "goal": None if spec.goal is None else spec.goal.model_dump(),
        "cost": spec.cost,
        "variants": {k: g for k, g in sorted(groups.items()) if k != HOLDOUT},
        "holdout": holdout,
        "uplift": uplift(treated=treated_outcome, holdout=holdout_outcome, cost=spec.cost),
    }
