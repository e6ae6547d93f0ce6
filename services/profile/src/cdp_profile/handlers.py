"""Handlers of the profile service: resolve events, merge, split, compute traits, erase, export."""

from __future__ import annotations

import logging
import uuid
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from datetime import UTC, datetime
from functools import lru_cache
from typing import Any

from cdp_common.envelope import Envelope, Payload
from cdp_common.events import (
    Identifier,
    PrivacyReceipt,
    PrivacyRequestOpened,
    ProfileCreated,
    ProfileErased,
    ProfileMerged,
    ProfileSplit,
    ProfileUpdated,
    TrackingEventReceived,
    make_envelope,
)
from cdp_common.hashing import subject_hash
from cdp_common.jobs import new_job_id, submit_job
from cdp_common.outbox import add_to_outbox
from sqlalchemy.ext.asyncio import AsyncSession

from cdp_profile import store
from cdp_profile.domain.computed import (
    Definition,
    StoredEvent,
    combine_builtin,
    combine_defined,
    derive_builtin,
    derive_defined,
    fold_all,
    fold_builtin,
    fold_defined,
    next_change_at,
)
from cdp_profile.domain.identity import (
    PROFILE_ID,
    IdentifierKey,
    ProfileHolding,
    identifiers_of,
    plan_resolution,
    traits_of,
)
from cdp_profile.domain.traits import apply_traits, derive_traits, merge_traits
from cdp_profile.metrics import (
    EVENTS_DROPPED,
    EVENTS_RESOLVED,
    IDENTIFIERS_BLOCKED,
    IDENTIFIERS_DROPPED,
    IDENTIFIERS_QUARANTINED,
    PROFILES_CREATED,
    PROFILES_ERASED,
    PROFILES_MERGED,
    PROFILES_SPLIT,
    WINDOWED_TRAITS_EXPIRED,
)

logger = logging.getLogger(__name__)

SERVICE = "profile"
RESOLUTION_ATTEMPTS = 5
BUILTIN_COMPUTED = frozenset(
    derive_builtin({"first_seen": "2000-01-01T00:00:00+00:00"})
    | {"days_since_last_order": None, "rfm_recency_days": None, "days_since_last_seen": None}
)

Clock = Callable[[], datetime]


def system_clock() -> datetime:
    """Return the current UTC time."""
    return datetime.now(UTC)


# The job that brings the events stored before a computed trait was defined into it.
BACKFILL_JOB = "computed_trait_backfill"


@dataclass(frozen=True)
class ProfileContext:
    """What the handlers need besides the session: topics, the hash key, the phone region, a clock."""

    profiles_topic: str
    privacy_topic: str
    hash_key: str
    default_region: str = "DE"
    clock: Clock = field(default=system_clock)
    # What the last batch read of the rules and definitions, to prepare the next one with.
    configurations: store.LatestConfiguration = field(
        default_factory=store.LatestConfiguration, compare=False, repr=False
    )

    def hash_of(self, key: IdentifierKey) -> str:
        """Return the keyed hash of an identifier, as a privacy request names it."""
        return _keyed_hash_of(self.hash_key, key.type, key.value)


@lru_cache(maxsize=65_536)
def _keyed_hash_of(hash_key: str, kind: str, value: str) -> str:
    """Return an identifier's keyed hash; a person's identifiers come back event after event."""
    return subject_hash(key=hash_key, subject_type=kind, value=value)


def survivor_order(profile: store.StoredProfile, counts: dict[str, int]) -> tuple[int, str, str, str]:
    """Rank merge candidates: a known customer first, then the earliest first event, then creation."""
    first_seen = profile.aggregates.get("first_seen") or "9999"
    return (0 if counts.get("user_id") else 1, first_seen, profile.created_at.isoformat(), profile.id)


class ProfileNotFound(Exception):
    """No profile matches the reference."""


class SplitRefused(Exception):
    """The merge cannot be split (unknown, already split, or its profiles moved on)."""


def event_name(event: TrackingEventReceived) -> str | None:
    """Return the name an event is counted under: the track event, or the page/screen name."""
    if event.type == "track":
        return event.event
    if event.type in ("page", "screen"):
        return event.name
    return None


def stored_event_of(envelope: Envelope[Any]) -> StoredEvent:
    """Return a tracking event as the event store and the folds see it."""
    event: TrackingEventReceived = envelope.data
    return StoredEvent(
        event_id=envelope.id,
        type=event.type,
        name=event_name(event),
        timestamp=event.timestamp,
        properties=event.properties,
    )


async def _publish(
    *, session: AsyncSession, topic: str, payload: Payload, subject: str, event_id: str
) -> None:
    await add_to_outbox(
        session=session,
        topic=topic,
        envelope=make_envelope(payload=payload, source=SERVICE, subject=subject, id=event_id),
    )


def computed_of(
    aggregates: dict[str, Any], states: dict[str, dict[str, Any]], definitions: Sequence[Definition]
) -> dict[str, Any]:
    computed = derive_builtin(aggregates)
    for definition in definitions:
        computed[definition.key] = derive_defined(states.get(definition.key, {}), definition)
    return computed


def refreshed_builtins(
    computed: dict[str, Any], aggregates: dict[str, Any], definitions: Sequence[Definition]
) -> dict[str, Any]:
    """Return computed traits with the built-ins re-derived and user-defined values kept."""
    refreshed = {**computed, **derive_builtin(aggregates)}
    for definition in definitions:
        if definition.key not in refreshed:
            refreshed[definition.key] = derive_defined({}, definition)
    return refreshed


def _changes(before: dict[str, Any], after: dict[str, Any]) -> tuple[dict[str, Any], dict[str, Any]]:
    changed = {name: value for name, value in after.items() if before.get(name) != value}
    changed.update({name: None for name in before if name not in after})
    return changed, {name: before.get(name) for name in changed}


def update_payload(
    *,
    profile: store.StoredProfile,
    traits_before: dict[str, Any],
    computed_before: dict[str, Any],
    created: bool = False,
    envelope: Envelope[Any] | None = None,
    keys: Sequence[IdentifierKey] = (),
) -> ProfileCreated | ProfileUpdated:
    """Return the created/updated change of a profile at its current version, before and after."""
    changed_traits, previous_traits = _changes(
        traits_before, {name: trait.value for name, trait in profile.traits.items()}
    )
    changed_computed, previous_computed = _changes(computed_before, profile.computed)
    payload_cls = ProfileCreated if created else ProfileUpdated
    return payload_cls(
        profile_id=profile.id,
        version=profile.version,
        event_id=envelope.id if envelope is not None else None,
        event=envelope.data if envelope is not None else None,
        identifiers=[Identifier(type=k.type, value=k.value) for k in keys],
        changed_traits=changed_traits,
        changed_computed_traits=changed_computed,
        previous_traits=previous_traits,
        previous_computed_traits=previous_computed,
    )


def profile_change(payload: ProfileCreated | ProfileUpdated) -> Envelope[Any]:
    """Return the envelope a profile change is published in, with its version in the id."""
    return make_envelope(
        payload=payload,
        source=SERVICE,
        subject=payload.profile_id,
        id=f"{payload.profile_id}:v{payload.version}",
    )


async def publish_update(
    *,
    session: AsyncSession,
    context: ProfileContext,
    profile: store.StoredProfile,
    traits_before: dict[str, Any],
    computed_before: dict[str, Any],
    created: bool = False,
    envelope: Envelope[Any] | None = None,
    keys: Sequence[IdentifierKey] = (),
) -> int:
    """Save a profile and publish created/updated with before and after of what changed."""
    version = await store.save_profile(session=session, profile=profile)
    payload = update_payload(
        profile=profile,
        traits_before=traits_before,
        computed_before=computed_before,
        created=created,
        envelope=envelope,
        keys=keys,
    )
    await add_to_outbox(session=session, topic=context.profiles_topic, envelope=profile_change(payload))
    return version


# --- resolution ----------------------------------------------------------------------------


async def resolve_event(
    *, session: AsyncSession, envelope: Envelope[Any], context: ProfileContext
) -> str | None:
    """Attach a tracking event to its person's profile, merging and creating as the rules allow."""
    event: TrackingEventReceived = envelope.data
    await store.serialise_writers(session=session)
    configuration = await store.load_configuration(session=session)
    rules = configuration.rules
    keys, blocked = identifiers_of(event, rules=rules, default_region=context.default_region)
    if blocked:
        IDENTIFIERS_BLOCKED.inc(len(blocked))
    if not keys:
        EVENTS_DROPPED.labels("no_identifier").inc()
        logger.info("event has no usable identifier", extra={"event_id": envelope.id})
        return None
    hashes = {key: context.hash_of(key) for key in keys}
    if await store.tombstoned(session=session, hashes=list(hashes.values())):
        EVENTS_DROPPED.labels("erased").inc()
        logger.info("event of an erased person dropped", extra={"event_id": envelope.id})
        return None
    # Writers of this service are serialised by the outbox's write lock taken above; the row
    # locks and the unique (type, value) index guard the graph should that ever change.
    holders = await store.lock_holders(session=session, keys=keys)
    owners, locked, counts = holders.owners, holders.profiles, holders.counts
    holdings = {
        pid: ProfileHolding(
            profile_id=pid, created_order=survivor_order(profile, counts[pid]), counts=counts[pid]
        )
        for pid, profile in locked.items()
    }
    plan = plan_resolution(
        keys=keys,
        owners={k: o.profile_id for k, o in owners.items()},
        holdings=holdings,
        quarantined=[k for k, o in owners.items() if o.quarantined],
        rules=rules,
        apart=await store.apart_among(session=session, profile_ids=list(locked)),
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
        states = await _merge_into(
            session=session,
            context=context,
            survivor=target,
            survivor_states=states,
            absorbed=locked[absorbed_id],
            rule=f"shared_identifier:{plan.linking[absorbed_id].type}",
            reason={"identifier_type": plan.linking[absorbed_id].type, "event_type": event.type},
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
    if is_new:
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
    version = await publish_update(
        session=session,
        context=context,
        profile=target,
        traits_before=traits_before,
        computed_before=computed_before,
        created=created,
        envelope=envelope,
        keys=keys,
    )
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


async def _recompute_defined(
    *, session: AsyncSession, profile_id: str, definitions: Sequence[Definition], now: datetime
) -> dict[str, dict[str, Any]]:
    """Recompute every user-defined trait of a profile from its events in the store."""
    if not definitions:
        return {}
    every_event = await store.events_for_fold(session=session, profile_id=profile_id)
    states = {d.key: fold_all(every_event, d, now=now) for d in definitions}
    await store.delete_defined_states(session=session, profile_id=profile_id)
    await store.save_defined_states(
        session=session,
        profile_id=profile_id,
        states={
            key: (state, next_change_at(state, d))
            for d in definitions
            for key, state in [(d.key, states[d.key])]
        },
    )
    return states


# --- merges and splits ----------------------------------------------------------------------


async def _merge_into(
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
        await _publish(
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


async def merge_profiles(
    *,
    session: AsyncSession,
    context: ProfileContext,
    profile_ids: Sequence[str],
    rule: str,
    reason: dict[str, Any],
) -> dict[str, Any]:
    """Merge profiles an operator confirmed as one person; the deterministic survivor takes the rest."""
    await store.serialise_writers(session=session)
    resolved = []
    for pid in profile_ids:
        live = await store.resolve_profile_id(session=session, profile_id=pid)
        if live is None:
            raise ProfileNotFound(pid)
        resolved.append(live)
    unique = sorted(set(resolved))
    if len(unique) < 2:
        raise SplitRefused("these references already name one profile")
    configuration = await store.load_configuration(session=session)
    locked = await store.lock_profiles(session=session, profile_ids=unique)
    counts = await store.identifier_counts(session=session, profile_ids=unique)
    for kind in {k for c in counts.values() for k in c}:
        if sum(c.get(kind, 0) for c in counts.values()) > configuration.rules.limit_of(kind):
            raise SplitRefused(f"merging would pass the limit of {kind} identifiers")
    ordered = sorted(unique, key=lambda pid: survivor_order(locked[pid], counts[pid]))
    # The operator says these are one person, whatever an earlier split said.
    await store.forget_apart(session=session, profile_ids=unique)
    survivor = locked[ordered[0]]
    traits_before = {name: trait.value for name, trait in survivor.traits.items()}
    computed_before = dict(survivor.computed)
    states = await store.defined_states(session=session, profile_id=survivor.id)
    for absorbed_id in ordered[1:]:
        states = await _merge_into(
            session=session,
            context=context,
            survivor=survivor,
            survivor_states=states,
            absorbed=locked[absorbed_id],
            rule=rule,
            reason=reason,
            event_id=None,
            definitions=configuration.definitions,
            now=context.clock(),
        )
    await publish_update(
        session=session,
        context=context,
        profile=survivor,
        traits_before=traits_before,
        computed_before=computed_before,
    )
    return {"profile_id": survivor.id, "absorbed_profile_ids": ordered[1:]}


async def _rederive(
    *, session: AsyncSession, profile: store.StoredProfile, definitions: Sequence[Definition], now: datetime
) -> None:
    """Re-derive a profile's traits, aggregates and computed traits from its own events."""
    traits = derive_traits(await store.asserted_traits(session=session, profile_id=profile.id))
    profile.traits = traits
    aggregates: dict[str, Any] = {}
    for event in await store.events_for_fold(session=session, profile_id=profile.id):
        aggregates = fold_builtin(aggregates, event)
    profile.aggregates = aggregates
    states = await _recompute_defined(
        session=session, profile_id=profile.id, definitions=definitions, now=now
    )
    profile.computed = computed_of(aggregates, states, definitions)


async def split_merge(*, session: AsyncSession, context: ProfileContext, merge_id: str) -> dict[str, Any]:
    """Undo a merge: restore the absorbed profile and re-derive both from their own events."""
    await store.serialise_writers(session=session)
    entry = await store.ledger_entry(session=session, merge_id=merge_id)
    if entry is None:
        raise ProfileNotFound(merge_id)
    if entry["split"]:
        raise SplitRefused("this merge was already split")
    survivor_id = await store.resolve_profile_id(session=session, profile_id=entry["survivor_id"])
    restored_id: str = entry["absorbed_id"]
    assert survivor_id is not None
    locked = await store.lock_profiles(session=session, profile_ids=[survivor_id, restored_id])
    survivor, restored = locked[survivor_id], locked[restored_id]
    if restored.merged_into != survivor_id or survivor.status != "active":
        raise SplitRefused("the profiles of this merge changed since; split the later merges first")
    configuration = await store.load_configuration(session=session)
    family = await store.family_of(session=session, profile_id=restored_id, before_seq=entry["seq"])
    await store.move_back(
        session=session,
        survivor_id=survivor_id,
        restored_id=restored_id,
        family=family,
        keys=entry["identifiers"],
    )
    # Events that carry identifiers of both profiles no longer merge them again.
    await store.keep_apart_pairs(session=session, pairs=[(survivor_id, restored_id, merge_id)])
    await store.append_ledger(
        session=session,
        merge_id=merge_id,
        kind="split",
        survivor_id=survivor_id,
        absorbed_id=restored_id,
        rule="operator_split",
        reason={},
        event_id=None,
        moved=[],
    )
    now = context.clock()
    result: dict[str, Any] = {
        "merge_id": merge_id,
        "profile_id": survivor_id,
        "restored_profile_id": restored_id,
    }
    for profile, status in ((survivor, "active"), (restored, "active")):
        traits_before = {name: trait.value for name, trait in profile.traits.items()}
        computed_before = dict(profile.computed)
        await _rederive(session=session, profile=profile, definitions=configuration.definitions, now=now)
        version = await store.save_profile(session=session, profile=profile, status=status, merged_into=None)
        await _publish(
            session=session,
            topic=context.profiles_topic,
            payload=ProfileSplit(
                profile_id=survivor_id, restored_profile_id=restored_id, version=version, merge_id=merge_id
            ),
            subject=profile.id,
            event_id=f"{profile.id}:v{version}",
        )
        await publish_update(
            session=session,
            context=context,
            profile=profile,
            traits_before=traits_before,
            computed_before=computed_before,
        )
    PROFILES_SPLIT.inc()
    return result


# --- user-defined computed traits -----------------------------------------------------------


async def define_computed_trait(*, session: AsyncSession, definition: Definition) -> dict[str, Any] | None:
    """Store a new computed trait and queue the job that backfills it; None when the key exists.

    The event flow folds every event stored from now on into it; the job brings in the
    events stored before, profile by profile, in short steps.
    """
    job_id = new_job_id()
    if not await store.insert_definition(session=session, definition=definition, job_id=job_id):
        return None
    job = await submit_job(session=session, kind=BACKFILL_JOB, params={"key": definition.key}, job_id=job_id)
    stored = await store.get_definition(session=session, key=definition.key)
    return {"computed_trait": stored, "job": job}


async def served_computed(*, session: AsyncSession, profile: store.StoredProfile) -> dict[str, Any]:
    """Return a profile's computed traits with the values a backfill holds only as states."""
    return serve_held(profile, await store.held_states(session=session, profile_id=profile.id))


def serve_held(profile: store.StoredProfile, held: dict[str, store.HeldState]) -> dict[str, Any]:
    """Return a profile's computed traits with the values derived from the states it holds only."""
    served = dict(profile.computed)
    for key in sorted(set(held) - set(served)):
        definition = held[key].definition
        if definition is not None:
            served[key] = derive_defined(held[key].state, definition)
    return served


async def expire_windowed_traits(
    *, session: AsyncSession, context: ProfileContext, limit: int = 500
) -> dict[str, int]:
    """Recompute windowed traits whose oldest event aged out by now and publish the changes."""
    now = context.clock()
    await store.serialise_writers(session=session)
    configuration = await store.load_configuration(session=session)
    windowed = [d for d in configuration.definitions if d.window is not None]
    changed_profiles = 0
    due = await store.due_profiles(session=session, now=now, limit=limit)
    for profile_id in due:
        profile = await store.lock_profile_if_free(session=session, profile_id=profile_id)
        if profile is None:
            continue
        states = await store.defined_states(session=session, profile_id=profile_id)
        updates: dict[str, tuple[dict[str, Any], datetime | None]] = {}
        for definition in windowed:
            assert definition.window is not None
            events = await store.events_for_fold(
                session=session,
                profile_id=profile_id,
                name=definition.event_name,
                since=now - definition.window,
            )
            states[definition.key] = fold_all(events, definition, now=now)
            updates[definition.key] = (
                states[definition.key],
                next_change_at(states[definition.key], definition),
            )
        await store.save_defined_states(session=session, profile_id=profile_id, states=updates)
        computed_before = dict(profile.computed)
        profile.computed = computed_of(profile.aggregates, states, configuration.definitions)
        if profile.computed != computed_before:
            traits_now = {name: trait.value for name, trait in profile.traits.items()}
            await publish_update(
                session=session,
                context=context,
                profile=profile,
                traits_before=traits_now,
                computed_before=computed_before,
            )
            changed_profiles += 1
    WINDOWED_TRAITS_EXPIRED.inc(changed_profiles)
    return {"due": len(due), "changed": changed_profiles}


# --- privacy ------------------------------------------------------------------------------------


async def handle_privacy_request(
    *, session: AsyncSession, envelope: Envelope[Any], context: ProfileContext
) -> list[str]:
    """Resolve a privacy request's keyed-hash subject; erase the person or name their profiles."""
    request: PrivacyRequestOpened = envelope.data
    await store.serialise_writers(session=session)
    root = await store.find_by_hash(
        session=session, subject_type=request.subject_type, subject_hash=request.subject_hash
    )
    profile_ids: list[str] = []
    details: dict[str, int] = {"found": 0}
    if root is not None:
        profile_ids = [root, *await store.merged_away_ids(session=session, profile_id=root)]
        details["found"] = len(profile_ids)
    if request.request_type == "erasure" and root is not None:
        locked = await store.lock_profiles(session=session, profile_ids=profile_ids)
        version = locked[root].version + 1
        details.update(
            await store.erase_profiles(
                session=session, profile_ids=profile_ids, request_id=request.request_id
            )
        )
        await _publish(
            session=session,
            topic=context.profiles_topic,
            payload=ProfileErased(
                profile_id=root,
                version=version,
                request_id=request.request_id,
                merged_profile_ids=profile_ids[1:],
            ),
            subject=root,
            event_id=f"{root}:v{version}",
        )
        PROFILES_ERASED.inc()
    await _publish(
        session=session,
        topic=context.privacy_topic,
        payload=PrivacyReceipt(
            request_id=request.request_id, service=SERVICE, profile_ids=profile_ids, details=details
        ),
        subject=request.request_id,
        event_id=f"{request.request_id}:{SERVICE}:receipt",
    )
    logger.info(
        "privacy request answered",
        extra={
            "request_id": request.request_id,
            "request_type": request.request_type,
            "profiles": len(profile_ids),
        },
    )
    return profile_ids


async def export_profile(*, session: AsyncSession, profile_id: str) -> dict[str, Any] | None:
    """Return everything the profile service holds about one profile, for an access request."""
    live = await store.resolve_profile_id(session=session, profile_id=profile_id)
    if live is None:
        return None
    profile = await store.load_profile(session=session, profile_id=live)
    if profile is None:
        return None
    profile.computed = await served_computed(session=session, profile=profile)
    family = [live, *await store.merged_away_ids(session=session, profile_id=live)]
    events: list[dict[str, Any]] = []
    after: tuple[datetime, int] | None = None
    while True:
        page = await store.list_events(
            session=session,
            profile_id=live,
            event_type=None,
            name=None,
            since=None,
            until=None,
            after=after,
            limit=1000,
        )
        events.extend({**e, "timestamp": e["timestamp"].isoformat()} for e in page)
        if len(page) < 1000:
            break
        after = (page[-1]["timestamp"], page[-1]["seq"])
    return {
        "profile": store.profile_document(profile),
        "merged_profile_ids": family[1:],
        "identifiers": await store.identifiers_of_profile(session=session, profile_id=live),
        "traits": {name: trait.to_json() for name, trait in profile.traits.items()},
        "computed_traits": profile.computed,
        "events": events,
        "merges": await store.ledger_of(session=session, profile_ids=family),
    }
