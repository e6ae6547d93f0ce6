"""One async function per command or event of the campaign service.

Commands: create and change campaigns and journeys, launch.
Events: profile changes (contact points, traits, goal events, purchases, triggers),
segment entries and exits, which start campaigns and move journeys on.
"""

from __future__ import annotations

import ipaddress
from collections.abc import Callable, Sequence
from datetime import UTC, datetime, timedelta
from typing import Any

import sqlalchemy as sa
from cdp_common.envelope import Envelope
from cdp_common.events import (
    CampaignSendsRequested,
    OrderRecorded,
    ProfileChanged,
    SegmentEntered,
    TrackingEventReceived,
    make_envelope,
)
from cdp_common.identifiers import InvalidIdentifier, normalise_identifier
from cdp_common.outbox import add_to_outbox
from cdp_common.replica import apply_profile_versions
from sqlalchemy.ext.asyncio import AsyncSession

from cdp_campaign import store
from cdp_campaign.context import (
    ORDER_COMPLETED,
    SERVICE,
    CampaignContext,
    new_id,
    parsed_campaign,
    parsed_journey,
)
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
)
from cdp_campaign.domain.compose import Draft, Refused, trial_draft
from cdp_campaign.domain.journeys import Facts, JourneySpec, Position, SendStep, WaitStep, advance
from cdp_campaign.domain.rules import SkipReason
from cdp_campaign.gateways import (
    Composer,
    ComposerUnavailable,
)

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


def _conversion_key(event: TrackingEventReceived) -> str:
    """Return what a conversion is recorded under: its order (the same order sent by the web tag and
    by the POS converts once), else the event."""
    order_id = event.properties.get("order_id")
    if event.event == ORDER_COMPLETED and isinstance(order_id, str | int) and not isinstance(order_id, bool):
        return f"order:{order_id}"
    return event.messageId


async def on_order_recorded(*, session: AsyncSession, envelope: Envelope[Any], ctx: CampaignContext) -> None:
    """Value the conversions an order brought at what profile says the order is worth now: net of
    refunds and cancellations, in the reporting currency (none when its currency has no rate)."""
    data: OrderRecorded = envelope.data
    await store.revalue_conversions(
        session=session, profile_id=data.profile_id, dedupe_key=f"order:{data.order_id}", revenue=data.value
    )


def _contact_change(data: ProfileChanged) -> dict[str, Any] | None:
    if not (data.changed_traits or data.changed_computed_traits or data.accounts is not None):
        return None
    fields = _contact_fields(data.changed_traits)
    if data.accounts is not None:
        # The person's accounts (companies) with their traits, replaced whole, for `account` in templates.
        fields["accounts"] = [account.model_dump() for account in data.accounts]
    return {
        "profile_id": data.profile_id,
        "version": data.version,
        "fields": fields,
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
                dedupe_key=_conversion_key(event),
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
