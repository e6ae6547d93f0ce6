"""Handlers of the profile service: resolve events, merge, split, compute traits, erase, export."""

from __future__ import annotations

import logging
from collections.abc import Sequence
from datetime import datetime
from typing import Any

from cdp_common.envelope import Envelope
from cdp_common.events import (
    PrivacyReceipt,
    PrivacyRequestOpened,
    ProfileErased,
    ProfileSplit,
)
from cdp_common.jobs import new_job_id, submit_job
from sqlalchemy.ext.asyncio import AsyncSession

from cdp_profile import accounts, store
from cdp_profile.changes import publish, publish_update, survivor_order
from cdp_profile.context import BACKFILL_JOB, SERVICE, ProfileContext
from cdp_profile.domain.computed import (
    Definition,
    computed_of,
    derive_builtin,
    derive_defined,
    fold_all,
    fold_builtin,
    next_change_at,
)
from cdp_profile.domain.traits import derive_traits
from cdp_profile.metrics import (
    PROFILES_ERASED,
    PROFILES_SPLIT,
    WINDOWED_TRAITS_EXPIRED,
)
from cdp_profile.orders import announce_orders, booked, order_document
from cdp_profile.resolution import merge_into

logger = logging.getLogger(__name__)

BUILTIN_COMPUTED = frozenset(
    derive_builtin({"first_seen": "2000-01-01T00:00:00+00:00"})
    | {"days_since_last_order": None, "rfm_recency_days": None, "days_since_last_seen": None}
)


class ProfileNotFound(Exception):
    """No profile matches the reference."""


class SplitRefused(Exception):
    """The merge cannot be split (unknown, already split, or its profiles moved on)."""


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
        states = await merge_into(
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
    held = await accounts.accounts_of(session=session, profile_ids=[survivor.id])
    await publish_update(
        session=session,
        context=context,
        profile=survivor,
        traits_before=traits_before,
        computed_before=computed_before,
        accounts=held[survivor.id] or None,
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
    profile.aggregates = await booked(session=session, profile_id=profile.id, aggregates=aggregates)
    states = await _recompute_defined(
        session=session, profile_id=profile.id, definitions=definitions, now=now
    )
    profile.computed = computed_of(profile.aggregates, states, definitions)


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
    # Each order goes back to the profile that holds its first event.
    moved_orders = await store.follow_first_events(session=session, profile_ids=[survivor_id, restored_id])
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
    held = await accounts.accounts_of(session=session, profile_ids=[survivor_id, restored_id])
    for profile, status in ((survivor, "active"), (restored, "active")):
        traits_before = {name: trait.value for name, trait in profile.traits.items()}
        computed_before = dict(profile.computed)
        await _rederive(session=session, profile=profile, definitions=configuration.definitions, now=now)
        version = await store.save_profile(session=session, profile=profile, status=status, merged_into=None)
        await publish(
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
            accounts=held[profile.id],
        )
    await announce_orders(
        session=session,
        context=context,
        order_ids=moved_orders,
        versions={survivor.id: survivor.version, restored.id: restored.version},
        cause=f"split:{merge_id}",
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
        await publish(
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
    await publish(
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
        "orders": [
            order_document(o) for o in await store.orders_of_profile(session=session, profile_id=live)
        ],
        "accounts": await accounts.served_accounts_of(session=session, profile_id=live),
        "events": events,
        "merges": await store.ledger_of(session=session, profile_ids=family),
    }
