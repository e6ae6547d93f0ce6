"""Resolution: tracking events attached to their person's profile, merging and creating as the
identity rules allow. A partition batch is resolved with bulk reads and writes; an event
the batch cannot decide takes the one-event path below.

The events are applied in order to an in-memory view of the identifiers, profiles and
computed-trait states (with the events their windows count) they touch, read at once, and
their writes go out together. An event the view cannot decide alone (it merges profiles,
drops an identifier under the rules, names a profile id, or may belong to an erased person)
goes through the one-event path after a flush, and the view is read afresh for the events
after it. Every event therefore ends exactly as the one-event path would have left it.
"""

from __future__ import annotations

import logging
import uuid
from collections.abc import Sequence
from dataclasses import dataclass, field
from datetime import datetime
from typing import Any

from cdp_common.envelope import Envelope
from cdp_common.events import ProfileMerged, TrackingEventReceived
from cdp_common.kafka import let_others_run
from sqlalchemy.ext.asyncio import AsyncSession

from cdp_profile import accounts, store
from cdp_profile.changes import profile_change, publish, publish_update, survivor_order, update_payload
from cdp_profile.context import ProfileContext
from cdp_profile.domain.computed import (
    Definition,
    StoredEvent,
    combine_builtin,
    combine_defined,
    computed_of,
    fold_all,
    fold_builtin,
    fold_defined,
    next_change_at,
    refreshed_builtins,
    stored_event_of,
)
from cdp_profile.domain.identity import (
    PROFILE_ID,
    IdentifierKey,
    IdentityRules,
    MergePlan,
    ProfileHolding,
    alias_keys,
    identifiers_of,
    plan_resolution,
    previous_identifiers,
    refusal_reason,
    traits_of,
)
from cdp_profile.domain.traits import apply_traits, merge_traits
from cdp_profile.metrics import (
    ALIASES_REFUSED,
    EVENTS_DROPPED,
    EVENTS_RESOLVED,
    IDENTIFIERS_BLOCKED,
    IDENTIFIERS_DROPPED,
    IDENTIFIERS_QUARANTINED,
    PROFILES_CREATED,
    PROFILES_MERGED,
)
from cdp_profile.orders import (
    OrderChange,
    OrderValues,
    order_elsewhere,
    order_ids_of,
    order_message,
    publish_order,
    record_in_view,
    record_order,
    value_ahead,
)

logger = logging.getLogger(__name__)

# Aliases tie two profiles together, group calls write accounts: both take the one-event path.
ONE_EVENT_TYPES = frozenset({"alias", "group"})
# How many events one view covers at most; after an event the view could not decide, the
# next view starts small and doubles, so runs of merges do not reread long stretches.
LARGEST_VIEW = 500
SMALLEST_VIEW = 8


@dataclass(frozen=True)
class _Prepared:
    envelope: Envelope[Any]
    keys: list[IdentifierKey]
    blocked: list[IdentifierKey]
    hashes: dict[IdentifierKey, str]
    stored: StoredEvent
    selected: list[Definition]


@dataclass
class _View:
    """What the events of one stretch touch, as read at its start, and the writes they make."""

    owners: dict[IdentifierKey, store.Owner]
    profiles: dict[str, store.StoredProfile]
    counts: dict[str, dict[str, int]]
    states: dict[str, dict[str, dict[str, Any]]]
    stored_events: set[str]
    maybe_erased: bool
    now: datetime
    # Per profile, its events a windowed trait of this stretch may count (None: none read).
    windowed_events: dict[str, list[StoredEvent]] | None = None
    created: dict[str, str] = field(default_factory=dict)
    changed: dict[str, None] = field(default_factory=dict)
    attached: list[tuple[str, IdentifierKey, str, str | None]] = field(default_factory=list)
    event_rows: list[dict[str, Any]] = field(default_factory=list)
    changed_states: dict[tuple[str, str], tuple[dict[str, Any], Any]] = field(default_factory=dict)
    outbox: list[tuple[str, Envelope[Any]]] = field(default_factory=list)
    # The orders the stretch's order events name (read at its start, then as amended), the
    # values in the reporting currency looked up ahead of them, and the orders to write.
    orders: dict[str, store.StoredOrder] = field(default_factory=dict)
    order_values: OrderValues = field(default_factory=dict)
    order_writes: dict[str, store.StoredOrder] = field(default_factory=dict)


async def resolve_events(
    *, session: AsyncSession, envelopes: Sequence[Envelope[Any]], context: ProfileContext
) -> list[str | None]:
    """Resolve tracking events in order, as `resolve_event` would one at a time; return their profiles."""
    await store.lock_for_resolution(session=session)
    # Prepared with the configuration the last transaction read; the first view brings this
    # transaction's own, and the events are prepared again should it differ.
    configuration = context.configurations.configuration
    prepared = await _prepare_all([*envelopes], configuration, context)
    held: store.Configuration | None = None
    resolved: list[str | None] = []
    position, size = 0, LARGEST_VIEW
    while position < len(prepared):
        stretch = prepared[position : position + size]
        view, read = await _read_view(session=session, stretch=stretch, now=context.clock())
        if held is None:
            held = await store.hold_configuration(
                session=session,
                configuration=context.configurations.configuration_of(
                    rules=read.rules, definitions=read.definitions
                ),
            )
            if held is not configuration:
                configuration = held
                prepared = await _prepare_all([item.envelope for item in prepared], configuration, context)
                continue
        applied = 0
        for done, item in enumerate(stretch):
            await let_others_run(done)
            if item.envelope.id not in view.stored_events:
                await value_ahead(
                    session=session,
                    context=context,
                    known=view.orders,
                    values=view.order_values,
                    event=item.stored,
                    source_id=item.envelope.data.sourceId,
                )
            decided, profile_id = _apply(view=view, item=item, configuration=configuration, context=context)
            if not decided:
                break
            resolved.append(profile_id)
            applied += 1
        await _flush(session=session, view=view)
        position += applied
        if applied < len(stretch):
            envelope = prepared[position].envelope
            resolved.append(await resolve_event(session=session, envelope=envelope, context=context))
            position += 1
            size = SMALLEST_VIEW
        else:
            size = min(size * 2, LARGEST_VIEW)
    return resolved


async def _prepare_all(
    envelopes: list[Envelope[Any]], configuration: store.Configuration, context: ProfileContext
) -> list[_Prepared]:
    prepared = []
    for done, envelope in enumerate(envelopes):
        await let_others_run(done)
        prepared.append(_prepare(envelope, configuration, context))
    return prepared


def _prepare(
    envelope: Envelope[Any], configuration: store.Configuration, context: ProfileContext
) -> _Prepared:
    event: TrackingEventReceived = envelope.data
    keys, blocked = identifiers_of(event, rules=configuration.rules, default_region=context.default_region)
    stored = stored_event_of(envelope)
    return _Prepared(
        envelope=envelope,
        keys=keys,
        blocked=blocked,
        hashes={k: context.hash_of(k) for k in keys},
        stored=stored,
        selected=[d for d in configuration.definitions if d.selects(stored)],
    )


async def _read_view(
    *, session: AsyncSession, stretch: Sequence[_Prepared], now: datetime
) -> tuple[_View, store.View]:
    """Read what the stretch touches in one statement (and its windowed events in a second, if any)."""
    read = await store.read_view(
        session=session,
        keys=list(dict.fromkeys(k for item in stretch for k in item.keys if k.type != PROFILE_ID)),
        hashes=[h for item in stretch for h in item.hashes.values()],
        event_ids=[item.envelope.id for item in stretch],
    )
    holders = read.holders
    windowed = [d for item in stretch for d in item.selected if d.window is not None]
    windowed_events = None
    if windowed:
        names = {d.event_name for d in windowed}
        windowed_events = await store.events_of_profiles(
            session=session,
            profile_ids=list(holders.profiles),
            names=None if None in names else sorted(n for n in names if n is not None),
            since=now - max(d.window for d in windowed if d.window is not None),
        )
    view = _View(
        owners=holders.owners,
        profiles=holders.profiles,
        counts=holders.counts,
        states=read.states,
        stored_events=read.stored_events,
        maybe_erased=read.maybe_erased,
        now=now,
        windowed_events=windowed_events,
        orders=await store.orders_by_id(
            session=session, order_ids=order_ids_of([item.stored for item in stretch])
        ),
    )
    return view, read


def _apply(
    *, view: _View, item: _Prepared, configuration: store.Configuration, context: ProfileContext
) -> tuple[bool, str | None]:
    """Apply one event to the view: (decided, its profile); undecided when only the one-event
    path can decide it."""
    envelope = item.envelope
    event: TrackingEventReceived = envelope.data
    if view.maybe_erased or event.type in ONE_EVENT_TYPES or any(k.type == PROFILE_ID for k in item.keys):
        return False, None
    if not item.keys:
        IDENTIFIERS_BLOCKED.inc(len(item.blocked))
        EVENTS_DROPPED.labels("no_identifier").inc()
        return True, None
    owners = {k: view.owners[k] for k in item.keys if k in view.owners}
    held = {owner.profile_id for owner in owners.values()}
    plan = plan_resolution(
        keys=item.keys,
        owners={k: owner.profile_id for k, owner in owners.items()},
        holdings={
            pid: ProfileHolding(
                profile_id=pid,
                created_order=survivor_order(view.profiles[pid], view.counts[pid]),
                counts=view.counts[pid],
            )
            for pid in held
        },
        quarantined=[k for k, owner in owners.items() if owner.quarantined],
        rules=configuration.rules,
    )
    if plan.absorbed or plan.dropped:
        return False, None
    if envelope.id not in view.stored_events and order_elsewhere(view.orders, item.stored, plan.target):
        # The event's order counts on another profile: the one-event path amends it there.
        return False, None
    stored, selected = item.stored, item.selected
    if item.blocked:
        IDENTIFIERS_BLOCKED.inc(len(item.blocked))
    created = plan.target is None
    if plan.target is None:
        if not plan.attach:
            EVENTS_DROPPED.labels("no_identifier").inc()
            return True, None
        target = _new_profile(view, context)
    else:
        target = view.profiles[plan.target]
    traits_before = {name: trait.value for name, trait in target.traits.items()}
    computed_before = dict(target.computed)
    counts = view.counts[target.id]
    for key in plan.attach:
        view.owners[key] = store.Owner(target.id, False)
        counts[key.type] = counts.get(key.type, 0) + 1
        view.attached.append((target.id, key, item.hashes[key], envelope.id))
    asserted = traits_of(event)
    is_new = envelope.id not in view.stored_events
    if is_new:
        view.stored_events.add(envelope.id)
        view.event_rows.append(
            store.event_row(
                event_id=envelope.id,
                profile_id=target.id,
                event=stored,
                received_at=event.receivedAt,
                source_id=event.sourceId,
                traits=asserted,
                keys=item.keys,
            )
        )
    target.traits.update(
        apply_traits(
            target.traits, asserted, source=event.sourceId, event_id=envelope.id, timestamp=event.timestamp
        )
    )
    states = view.states.setdefault(target.id, {})
    order_change: OrderChange | None = None
    if is_new:
        target.aggregates = fold_builtin(target.aggregates, stored)
        order_change = record_in_view(
            known=view.orders,
            values=view.order_values,
            event=stored,
            source_id=event.sourceId,
            profile=target,
            reporting_currency=context.reporting_currency,
        )
        if order_change is not None:
            view.order_writes[order_change.after.order.order_id] = order_change.after
        if view.windowed_events is not None:
            view.windowed_events.setdefault(target.id, []).append(stored)
        for definition in selected:
            if definition.window is None:
                states[definition.key] = fold_defined(states.get(definition.key, {}), stored, definition)
            else:
                states[definition.key] = _fold_window(view, target.id, definition)
            view.changed_states[(target.id, definition.key)] = (
                states[definition.key],
                next_change_at(states[definition.key], definition),
            )
    if selected:
        target.computed = computed_of(target.aggregates, states, configuration.definitions)
    else:
        target.computed = refreshed_builtins(target.computed, target.aggregates, configuration.definitions)
    traits_now = {name: trait.value for name, trait in target.traits.items()}
    if not (created or plan.attach or is_new or traits_now != traits_before):
        return True, target.id
    target.version += 1
    if not created:
        view.changed[target.id] = None
    payload = update_payload(
        profile=target,
        traits_before=traits_before,
        computed_before=computed_before,
        created=created,
        envelope=envelope,
        keys=item.keys,
    )
    view.outbox.append((context.profiles_topic, profile_change(payload)))
    if order_change is not None and order_change.seen:
        view.outbox.append((context.profiles_topic, order_message(order_change, version=target.version)))
    if created:
        PROFILES_CREATED.inc()
    EVENTS_RESOLVED.labels(event.type).inc()
    return True, target.id


def _fold_window(view: _View, profile_id: str, definition: Definition) -> dict[str, Any]:
    """Fold a windowed trait afresh over the profile's events inside its window, in time order."""
    assert view.windowed_events is not None
    assert definition.window is not None
    since = view.now - definition.window
    inside = sorted(
        (
            e
            for e in view.windowed_events.get(profile_id, [])
            if (definition.event_name is None or e.name == definition.event_name) and e.timestamp > since
        ),
        key=lambda e: (e.timestamp, e.event_id),
    )
    return fold_all(inside, definition, now=view.now)


def _new_profile(view: _View, context: ProfileContext) -> store.StoredProfile:
    now = context.clock()
    profile = store.StoredProfile(
        id=str(uuid.uuid4()),
        version=0,
        status="active",
        merged_into=None,
        traits={},
        aggregates={},
        computed={},
        created_at=now,
        updated_at=now,
    )
    view.profiles[profile.id] = profile
    view.counts[profile.id] = {}
    view.states[profile.id] = {}
    view.created[profile.id] = context.hash_of(IdentifierKey(PROFILE_ID, profile.id))
    return profile


async def _flush(*, session: AsyncSession, view: _View) -> None:
    """Write what the view's events changed, in one statement."""
    await store.write_view(
        session=session,
        writes=store.ViewWrites(
            created=[(view.profiles[pid], id_hash) for pid, id_hash in view.created.items()],
            changed=[view.profiles[pid] for pid in view.changed],
            attached=view.attached,
            event_rows=view.event_rows,
            states=[(pid, key, state, due) for (pid, key), (state, due) in view.changed_states.items()],
            outbox=view.outbox,
        ),
    )
    await store.save_orders(session=session, saved=list(view.order_writes.values()))


# --- one event at a time, and merges ------------------------------------------------------


async def resolve_event(
    *, session: AsyncSession, envelope: Envelope[Any], context: ProfileContext
) -> str | None:
    """Attach a tracking event to its person's profile, merging and creating as the rules allow."""
    event: TrackingEventReceived = envelope.data
    await store.serialise_writers(session=session)
    configuration = await store.load_configuration(session=session)
    rules = configuration.rules
    keys, blocked = identifiers_of(event, rules=rules, default_region=context.default_region)
    previous, previous_blocked = previous_identifiers(
        event, rules=rules, default_region=context.default_region
    )
    if blocked or previous_blocked:
        IDENTIFIERS_BLOCKED.inc(len(blocked) + len(previous_blocked))
    if not keys:
        EVENTS_DROPPED.labels("no_identifier").inc()
        logger.info("event has no usable identifier", extra={"event_id": envelope.id})
        return None
    hashes = {key: context.hash_of(key) for key in [*keys, *previous]}
    if await store.tombstoned(session=session, hashes=list(hashes.values())):
        EVENTS_DROPPED.labels("erased").inc()
        logger.info("event of an erased person dropped", extra={"event_id": envelope.id})
        return None
    # Writers of this service are serialised by the outbox's write lock taken above; the row
    # locks and the unique (type, value) index guard the graph should that ever change.
    holders = await store.lock_holders(session=session, keys=[*keys, *previous])
    owners, locked, counts = holders.owners, holders.profiles, holders.counts
    # An alias's previous id takes part as the event's least trusted identifier: the rules drop it
    # first, so the alias merges only where any event carrying both identifiers would.
    aliased = alias_keys(previous, owned=owners, own=keys)
    keys = [*keys, *aliased]
    holdings = {
        pid: ProfileHolding(
            profile_id=pid, created_order=survivor_order(profile, counts[pid]), counts=counts[pid]
        )
        for pid, profile in locked.items()
    }
    apart = await store.apart_among(session=session, profile_ids=list(locked))
    plan = plan_resolution(
        keys=keys,
        owners={k: o.profile_id for k, o in owners.items()},
        holdings=holdings,
        quarantined=[k for k, o in owners.items() if o.quarantined],
        rules=rules,
        apart=apart,
    )
    created = False
    if plan.target is None:
        if not plan.attach:
            EVENTS_DROPPED.labels("no_identifier").inc()
            return None
        profile_id = str(uuid.uuid4())
        target = await store.create_profile(
            session=session,
            profile_id=profile_id,
            id_hash=context.hash_of(IdentifierKey(PROFILE_ID, profile_id)),
        )
        created = True
    else:
        target = locked[plan.target]
    traits_before = {name: trait.value for name, trait in target.traits.items()}
    computed_before = dict(target.computed)
    stored = stored_event_of(envelope)
    # The user-defined states are read only when this event can change them.
    needs_states = bool(plan.absorbed) or any(d.selects(stored) for d in configuration.definitions)
    states = await store.defined_states(session=session, profile_id=target.id) if needs_states else {}
    now = context.clock()
    for absorbed_id in plan.absorbed:
        linking = plan.linking[absorbed_id]
        states = await merge_into(
            session=session,
            context=context,
            survivor=target,
            survivor_states=states,
            absorbed=locked[absorbed_id],
            rule="alias" if linking in aliased else f"shared_identifier:{linking.type}",
            reason={"identifier_type": linking.type, "event_type": event.type},
            event_id=envelope.id,
            definitions=configuration.definitions,
            now=now,
        )
    await store.attach_identifiers(
        session=session,
        profile_id=target.id,
        keys=[(k, hashes[k]) for k in plan.attach],
        event_id=envelope.id,
    )
    await _note_conflicts(
        session=session, context=context, plan_dropped=plan.dropped, owners=owners, target=target.id
    )
    asserted = traits_of(event)
    is_new = await store.store_event(
        session=session,
        event_id=envelope.id,
        profile_id=target.id,
        event=stored,
        received_at=event.receivedAt,
        source_id=event.sourceId,
        traits=asserted,
        keys=keys,
    )
    target.traits.update(
        apply_traits(
            target.traits, asserted, source=event.sourceId, event_id=envelope.id, timestamp=event.timestamp
        )
    )
    order_change = (
        await record_order(
            session=session,
            context=context,
            profile=target,
            event=stored,
            source_id=event.sourceId,
            definitions=configuration.definitions,
        )
        if is_new
        else None
    )
    accounts_changed = bool(plan.absorbed)
    if is_new:
        accounts_changed |= await accounts.record_group_call(
            session=session, envelope=envelope, profile_id=target.id
        )
        if aliased:
            await _record_refusals(
                session=session,
                envelope=envelope,
                aliased=aliased,
                owners=owners,
                plan=plan,
                holdings=holdings,
                rules=rules,
                apart=apart,
                target=target.id,
            )
        target.aggregates = fold_builtin(target.aggregates, stored)
        states = await _fold_defined_event(
            session=session,
            profile_id=target.id,
            states=states,
            event=stored,
            definitions=configuration.definitions,
            now=now,
        )
    if needs_states:
        target.computed = computed_of(target.aggregates, states, configuration.definitions)
    else:
        target.computed = refreshed_builtins(target.computed, target.aggregates, configuration.definitions)
    traits_now = {name: trait.value for name, trait in target.traits.items()}
    if not (created or plan.absorbed or plan.attach or is_new or traits_now != traits_before):
        # A replay of an event the store already holds changes nothing.
        return target.id
    held_accounts = None
    if accounts_changed:
        held_accounts = (await accounts.accounts_of(session=session, profile_ids=[target.id]))[target.id]
    version = await publish_update(
        session=session,
        context=context,
        profile=target,
        traits_before=traits_before,
        computed_before=computed_before,
        created=created,
        envelope=envelope,
        keys=keys,
        # A merge of profiles that belong to no account changes no one's accounts.
        accounts=held_accounts or None,
    )
    if order_change is not None and order_change.after.profile_id == target.id:
        await publish_order(session=session, context=context, change=order_change, version=version)
    if created:
        PROFILES_CREATED.inc()
    EVENTS_RESOLVED.labels(event.type).inc()
    logger.info(
        "event resolved", extra={"event_id": envelope.id, "profile_id": target.id, "version": version}
    )
    return target.id


async def _note_conflicts(
    *,
    session: AsyncSession,
    context: ProfileContext,
    plan_dropped: Sequence[IdentifierKey],
    owners: dict[IdentifierKey, store.Owner],
    target: str,
) -> None:
    """Count identifiers that tied two profiles the rules kept apart; quarantine super-nodes."""
    if not plan_dropped:
        return
    configuration = await store.load_configuration(session=session)
    IDENTIFIERS_DROPPED.inc(len(plan_dropped))
    for key in plan_dropped:
        owner = owners.get(key)
        if owner is None or owner.profile_id == target or key.type == PROFILE_ID:
            continue
        tied = await store.record_links(
            session=session, key=key, value_hash=context.hash_of(key), profile_ids=[owner.profile_id, target]
        )
        if tied > configuration.rules.supernode_threshold and await store.quarantine(
            session=session, key=key
        ):
            IDENTIFIERS_QUARANTINED.inc()
            logger.warning("identifier quarantined", extra={"identifier_type": key.type, "profiles": tied})


async def _record_refusals(
    *,
    session: AsyncSession,
    envelope: Envelope[Any],
    aliased: Sequence[IdentifierKey],
    owners: dict[IdentifierKey, store.Owner],
    plan: MergePlan,
    holdings: dict[str, ProfileHolding],
    rules: IdentityRules,
    apart: set[frozenset[str]],
    target: str,
) -> None:
    """Record in the ledger each profile an alias named that the identity rules kept apart, with why."""
    quarantined = [k for k, o in owners.items() if o.quarantined]
    refused: dict[str, IdentifierKey] = {}
    for key in aliased:
        owner = owners.get(key)
        if owner is not None and owner.profile_id != target and owner.profile_id not in plan.absorbed:
            refused.setdefault(owner.profile_id, key)
    for other, key in refused.items():
        why = refusal_reason(
            key=key,
            other=other,
            plan=plan,
            holdings=holdings,
            quarantined=quarantined,
            rules=rules,
            apart=apart,
        )
        reason: dict[str, Any] = {"refused": why, "identifier_type": key.type, "event_type": "alias"}
        if why == "limit:user_id":
            reason["message"] = "two known customers (different user ids) are never merged"
        await store.append_ledger(
            session=session,
            merge_id=str(uuid.uuid4()),
            kind="refused",
            survivor_id=target,
            absorbed_id=other,
            rule="alias",
            reason=reason,
            event_id=envelope.id,
            moved=[],
        )
        ALIASES_REFUSED.labels(why.split(":", 1)[0]).inc()
        logger.info("alias refused", extra={"event_id": envelope.id, "profile_id": target, "reason": why})


async def _fold_defined_event(
    *,
    session: AsyncSession,
    profile_id: str,
    states: dict[str, dict[str, Any]],
    event: StoredEvent,
    definitions: Sequence[Definition],
    now: datetime,
) -> dict[str, dict[str, Any]]:
    """Fold a newly stored event into the user-defined traits it counts for."""
    states = dict(states)
    changed: dict[str, tuple[dict[str, Any], datetime | None]] = {}
    for definition in definitions:
        if not definition.selects(event):
            continue
        if definition.window is None:
            states[definition.key] = fold_defined(states.get(definition.key, {}), event, definition)
        else:
            window_events = await store.events_for_fold(
                session=session,
                profile_id=profile_id,
                name=definition.event_name,
                since=now - definition.window,
            )
            states[definition.key] = fold_all(window_events, definition, now=now)
        changed[definition.key] = (states[definition.key], next_change_at(states[definition.key], definition))
    await store.save_defined_states(session=session, profile_id=profile_id, states=changed)
    return states


async def merge_into(
    *,
    session: AsyncSession,
    context: ProfileContext,
    survivor: store.StoredProfile,
    survivor_states: dict[str, dict[str, Any]],
    absorbed: store.StoredProfile,
    rule: str,
    reason: dict[str, Any],
    event_id: str | None,
    definitions: Sequence[Definition],
    now: datetime,
) -> dict[str, dict[str, Any]]:
    """Move one profile into another, combine their traits and aggregates, record and publish it."""
    moved = await store.move_profile_contents(
        session=session, absorbed_id=absorbed.id, survivor_id=survivor.id
    )
    survivor.traits.update(merge_traits(survivor.traits, absorbed.traits))
    # Each event belongs to one profile, so the two states cover disjoint events: adding them
    # never counts an event twice.
    survivor.aggregates = combine_builtin(survivor.aggregates, absorbed.aggregates)
    states = dict(survivor_states)
    if definitions:
        absorbed_states = await store.defined_states(session=session, profile_id=absorbed.id)
        await store.delete_defined_states(session=session, profile_id=absorbed.id)
        changed: dict[str, tuple[dict[str, Any], datetime | None]] = {}
        for definition in definitions:
            # While a trait is building, either state may lack the events stored before it was
            # defined; the survivor's is then recomputed whole, like a windowed one.
            if definition.window is None and not definition.building:
                states[definition.key] = combine_defined(
                    states.get(definition.key, {}), absorbed_states.get(definition.key, {})
                )
            else:
                window_events = await store.events_for_fold(
                    session=session,
                    profile_id=survivor.id,
                    name=definition.event_name,
                    since=now - definition.window if definition.window else None,
                )
                states[definition.key] = fold_all(window_events, definition, now=now)
            changed[definition.key] = (
                states[definition.key],
                next_change_at(states[definition.key], definition),
            )
        await store.save_defined_states(session=session, profile_id=survivor.id, states=changed)
    survivor.computed = computed_of(survivor.aggregates, states, definitions)
    merge_id = str(uuid.uuid4())
    await store.append_ledger(
        session=session,
        merge_id=merge_id,
        kind="merge",
        survivor_id=survivor.id,
        absorbed_id=absorbed.id,
        rule=rule,
        reason=reason,
        event_id=event_id,
        moved=moved,
    )
    survivor_version = await store.save_profile(session=session, profile=survivor)
    absorbed_version = await store.save_profile(
        session=session, profile=absorbed, status="merged", merged_into=survivor.id
    )
    for subject, version in ((survivor.id, survivor_version), (absorbed.id, absorbed_version)):
        await publish(
            session=session,
            topic=context.profiles_topic,
            payload=ProfileMerged(
                profile_id=survivor.id,
                absorbed_profile_id=absorbed.id,
                version=version,
                merge_id=merge_id,
                rule=rule,
                event_id=event_id,
            ),
            subject=subject,
            event_id=f"{subject}:v{version}",
        )
    PROFILES_MERGED.labels(rule.split(":", 1)[0]).inc()
    logger.info(
        "profiles merged", extra={"profile_id": survivor.id, "absorbed_profile_id": absorbed.id, "rule": rule}
    )
    return states
