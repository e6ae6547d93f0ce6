"""One async function per event segment reacts to, and the real-time evaluation they share."""

from __future__ import annotations

import contextlib
import logging
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field, replace
from datetime import datetime
from typing import Any

import sqlalchemy as sa
from cdp_common.db import once_per_transaction
from cdp_common.envelope import Envelope, Payload
from cdp_common.events import (
    ConsentChanged,
    ConsentGranted,
    ConsentWithdrawn,
    ProfileChanged,
    ProfileCreated,
    ProfileMerged,
    ProfileSplit,
    ProfileUpdated,
)
from cdp_common.jobs import JobFinished, JobNotFound, cancel_job, new_job_id, submit_job
from cdp_common.kafka import BatchHandler, Handler, let_others_run
from cdp_common.purposes import PROFILING, PurposePolicy, decisions_for
from cdp_common.replica import apply_profile_version
from sqlalchemy.exc import DBAPIError, IntegrityError
from sqlalchemy.ext.asyncio import AsyncSession

from cdp_segment import store
from cdp_segment.compiler import compile_rule, members_query, segmentable
from cdp_segment.domain.evaluation import ProfileFacts, explain, mark_building, withheld_explanation
from cdp_segment.domain.lifecycle import STAGES, LifecycleThresholds, builtin_computed_traits, lifecycle_model
from cdp_segment.domain.membership import (
    ANY_ACCOUNT_TRAIT,
    Catalog,
    SegmentDefinition,
    find_cycle,
    public_reason,
)
from cdp_segment.domain.rfm import LABELS, NAMED_SEGMENTS
from cdp_segment.domain.rules import ParsedRule, RuleError, is_segment_key, parse_rule
from cdp_segment.store import builds, claims
from cdp_segment.store import purposes as purpose_store

logger = logging.getLogger(__name__)

Clock = Callable[[], datetime]

# The job that makes a segment's members right (cdp_segment.jobs.SegmentBuild).
BUILD_JOB = "segment_build"
# The job that takes a deleted segment's members out of it (cdp_segment.jobs.SegmentDelete).
DELETE_JOB = "segment_delete"


def definition_of(row: store.SegmentRow) -> SegmentDefinition:
    """Return the domain's view of a stored segment."""
    return SegmentDefinition(
        id=row.id,
        key=row.key,
        version=row.version,
        parsed=parse_rule(row.rule),
        realtime=not row.awaiting_data,
    )


@dataclass
class CatalogCache:
    """The live segments parsed once, reloaded when any definition changed."""

    policy: PurposePolicy = field(default_factory=PurposePolicy)
    _stamp: tuple[str | None, ...] | None = None
    _catalog: Catalog = field(default_factory=lambda: Catalog([]))

    async def current(self, session: AsyncSession, stamp: tuple[str | None, ...] | None = None) -> Catalog:
        """Return the catalog as of the session's transaction (checked once per transaction).

        A caller that has read the stamp in its own statement passes it, saving a query.
        """

        async def load() -> Catalog:
            current_stamp = stamp if stamp is not None else await store.catalog_stamp(session=session)
            if current_stamp != self._stamp:
                definitions = []
                for row in await store.list_live_segments(session=session):
                    try:
                        definitions.append(definition_of(row))
                    except RuleError:
                        logger.exception("stored rule no longer parses", extra={"segment": row.key})
                self._catalog = Catalog(definitions, self.policy)
                self._stamp = current_stamp
            return self._catalog

        return await once_per_transaction(session, "segment_catalog", load)


@dataclass
class SegmentContext:
    """What the handlers share: where to publish, the clock, the catalog, the model settings and
    who is excluded from profiling and analytics (`CDP_OPT_IN_PURPOSES` unless given)."""

    segments_topic: str
    clock: Clock
    lifecycle: LifecycleThresholds = field(default_factory=LifecycleThresholds)
    purposes: PurposePolicy = field(default_factory=PurposePolicy.from_environment)
    catalog: CatalogCache = field(init=False)

    def __post_init__(self) -> None:
        self.catalog = CatalogCache(policy=self.purposes)

    def profiling_withheld(self, consents: dict[str, Any]) -> bool:
        """Whether a person with these decisions is excluded from profiling (no segments, no models)."""
        return self.purposes.excluded(PROFILING, consents)


def facts_of(row: store.ProfileRow, members: set[str], policy: PurposePolicy) -> ProfileFacts:
    """Return the domain's view of a stored profile."""
    return ProfileFacts(
        traits=row.traits,
        computed=row.computed,
        model=row.model,
        consents=row.consents,
        segments=frozenset(members),
        withheld=frozenset({PROFILING}) if policy.excluded(PROFILING, row.consents) else frozenset(),
        accounts=tuple(a.get("traits") or {} for a in row.accounts if isinstance(a, dict)),
    )


async def reevaluate_profile(
    *,
    session: AsyncSession,
    context: SegmentContext,
    profile_id: str,
    changed: set[str] | None,
    cause: dict[str, Any],
    row: store.ProfileRow | None = None,
) -> int:
    """Evaluate the segments a change can affect for one profile and record who enters or leaves.

    A caller that has just written the profile (and so holds its row lock) passes the row.
    """
    catalog = await context.catalog.current(session)
    if row is None:
        row = await store.load_profile(session=session, profile_id=profile_id, lock=True)
    if row is None or row.merged_into is not None or row.version == 0:
        return 0
    if (
        changed is not None
        and not catalog.affected_by(changed)
        and not context.profiling_withheld(row.consents)
    ):
        return 0
    members = await store.member_keys(session=session, profile_id=profile_id)
    changes = _membership_changes(
        catalog=catalog, row=row, members=members, changed=changed, cause=cause, now=context.clock()
    )
    await store.write_membership_changes(session=session, topic=context.segments_topic, changes=changes)
    return len(changes)


def _membership_changes(
    *,
    catalog: Catalog,
    row: store.ProfileRow,
    members: set[str],
    changed: set[str] | None,
    cause: dict[str, Any],
    now: datetime,
    new_profile: bool = False,
) -> list[store.MembershipChange]:
    """Return the entries and exits of one profile after a change; `members` is brought up to date.

    A profile excluded from profiling leaves every segment it is in, whatever changed.
    """
    facts = facts_of(row, members, catalog.policy)
    if changed is not None and not catalog.affected_by(changed) and not (facts.withheld and members):
        return []
    decisions = catalog.decide(facts, changed, now, new_profile=new_profile)
    for decision in decisions:
        if decision.entered:
            members.add(decision.segment.key)
        else:
            members.discard(decision.segment.key)
    return [
        store.MembershipChange(
            segment=decision.segment,
            profile_id=row.profile_id,
            entered=decision.entered,
            at=now,
            reason={"cause": _why(cause, decision.why), "conditions": public_reason(decision.explanation)},
            history_reason={"cause": _why(cause, decision.why), "explanation": decision.explanation},
        )
        for decision in decisions
    ]


def _why(cause: dict[str, Any], why: str | None) -> dict[str, Any]:
    return cause if why is None else {**cause, "why": why}


def _cause(envelope: Envelope[Any], changed: set[str] | None, **extra: Any) -> dict[str, Any]:
    return {"event_id": envelope.id, "type": envelope.type, "changed": sorted(changed or ["*"]), **extra}


def _lifecycle_documents(
    context: SegmentContext, row: store.ProfileRow, changed: set[str] | None
) -> dict[str, Any] | None:
    """Return the profile's model documents with a new lifecycle stage, or None when it did not move.

    A profile excluded from profiling keeps no model results at all.
    """
    if context.profiling_withheld(row.consents):
        return {} if row.model else None
    if changed is not None and not changed & context.lifecycle.dependencies:
        return None
    model = lifecycle_model(row.computed, row.model.get("lifecycle"), context.clock(), context.lifecycle)
    if model == row.model.get("lifecycle"):
        return None
    return {**row.model, "lifecycle": model}


async def _refresh_lifecycle(
    *,
    session: AsyncSession,
    context: SegmentContext,
    profile_id: str,
    changed: set[str] | None,
) -> store.ProfileRow | None:
    """Recompute the profile's lifecycle stage when its order aggregates changed; return the row when it moved."""
    if changed is not None and not changed & context.lifecycle.dependencies:
        return None
    row = await store.load_profile(session=session, profile_id=profile_id, lock=True)
    if row is None:
        return None
    documents = _lifecycle_documents(context, row, changed)
    if documents is None:
        return None
    await store.set_profile_documents(session=session, profile_id=profile_id, model=documents)
    return replace(row, model=documents)


def _in_waves(envelopes: Sequence[Envelope[Any]]) -> list[list[Envelope[Any]]]:
    """Split changes into waves that hold each profile at most once, keeping each profile's order."""
    waves: list[list[Envelope[Any]]] = []
    seen: dict[str, int] = {}
    for envelope in envelopes:
        profile_id = envelope.data.profile_id
        wave = seen.get(profile_id, 0)
        seen[profile_id] = wave + 1
        if wave == len(waves):
            waves.append([])
        waves[wave].append(envelope)
    return waves


def _changed_names(data: ProfileChanged) -> set[str] | None:
    """Return the dependency names a change touches; None (everything) for a new profile."""
    if isinstance(data, ProfileCreated):
        return None
    accounts = {ANY_ACCOUNT_TRAIT} if data.accounts is not None else set()
    return (
        {f"trait:{k}" for k in data.changed_traits}
        | {f"computed:{k}" for k in data.changed_computed_traits}
        | accounts
    )


async def apply_profile_changes(
    *, session: AsyncSession, context: SegmentContext, envelopes: Sequence[Envelope[Any]]
) -> None:
    """Apply created/updated profiles in order and record who enters or leaves, a few statements a batch.

    The copies are written one wave at a time (each profile at most once a wave) and
    read back with their memberships; the segments each change can affect are
    evaluated in memory; memberships, history and outbox rows are written together at the end.
    """
    members_now: dict[str, set[str]] = {}
    changes: list[store.MembershipChange] = []
    for wave in _in_waves(envelopes):
        applied = await store.apply_profile_changes(
            session=session,
            changes=[
                store.ProfileChange(
                    profile_id=e.data.profile_id,
                    version=e.data.version,
                    changed_traits=dict(e.data.changed_traits),
                    changed_computed=dict(e.data.changed_computed_traits),
                    accounts=None if e.data.accounts is None else [a.model_dump() for a in e.data.accounts],
                )
                for e in wave
            ],
        )
        if not applied.profiles:
            continue
        catalog = await context.catalog.current(session, stamp=applied.catalog_stamp)
        models: dict[str, dict[str, Any]] = {}
        for done, envelope in enumerate(wave):
            await let_others_run(done)
            data: ProfileChanged = envelope.data
            held = applied.profiles.get(data.profile_id)
            if held is None:
                continue
            row, segment_ids = held
            changed = _changed_names(data)
            documents = _lifecycle_documents(context, row, changed)
            if documents is not None:
                models[row.profile_id] = documents
                row = replace(row, model=documents)
                changed = None if changed is None else changed | {"model:lifecycle"}
            if row.merged_into is not None:
                continue
            members = members_now.get(row.profile_id)
            if members is None:
                members = {catalog.by_id[i].key for i in segment_ids if i in catalog.by_id}
                members_now[row.profile_id] = members
            changes += _membership_changes(
                catalog=catalog,
                row=row,
                members=members,
                changed=changed,
                cause=_cause(envelope, changed, tracking_event_id=data.event_id),
                now=context.clock(),
                new_profile=isinstance(data, ProfileCreated),
            )
        await store.set_profile_models(session=session, models=models)
    await store.write_membership_changes(session=session, topic=context.segments_topic, changes=changes)


def profile_batch_handlers(context: SegmentContext) -> dict[type[Payload], BatchHandler]:
    """Return the handlers of runs of created or updated profiles, equal to the one-event handlers in order."""

    async def on_profile_changes(*, session: AsyncSession, envelopes: Sequence[Envelope[Any]]) -> None:
        await apply_profile_changes(session=session, context=context, envelopes=envelopes)

    return {ProfileCreated: on_profile_changes, ProfileUpdated: on_profile_changes}


def profile_handlers(context: SegmentContext) -> dict[type[Payload], Handler]:
    """Return the handlers of cdp.profiles.v1 that keep the copy and memberships current."""

    async def on_profile_changed(*, session: AsyncSession, envelope: Envelope[Any]) -> None:
        await apply_profile_changes(session=session, context=context, envelopes=[envelope])

    async def on_profile_merged(*, session: AsyncSession, envelope: Envelope[Any]) -> None:
        data: ProfileMerged = envelope.data
        table = store.known_profiles
        await apply_profile_version(
            session=session, table=table, profile_id=data.profile_id, version=data.version
        )
        absorbed_applied = await apply_profile_version(
            session=session,
            table=table,
            profile_id=data.absorbed_profile_id,
            version=data.version,
            merged_into=data.profile_id,
        )
        if not absorbed_applied:
            return
        survivor = await store.load_profile(session=session, profile_id=data.profile_id, lock=True)
        absorbed = await store.load_profile(session=session, profile_id=data.absorbed_profile_id, lock=True)
        assert survivor is not None
        assert absorbed is not None
        await store.set_profile_documents(
            session=session,
            profile_id=data.profile_id,
            traits={**absorbed.traits, **survivor.traits},
            computed={**absorbed.computed, **survivor.computed},
            consents=_most_restrictive(survivor.consents, absorbed.consents),
        )
        cause = _cause(envelope, None, merge_id=data.merge_id, merged_into=data.profile_id)
        now = context.clock()
        catalog = await context.catalog.current(session)
        reason = {"cause": {**cause, "why": "merged into another profile"}, "conditions": {}}
        await store.write_membership_changes(
            session=session,
            topic=context.segments_topic,
            changes=[
                store.MembershipChange(
                    segment=catalog.by_key[key],
                    profile_id=data.absorbed_profile_id,
                    entered=False,
                    at=now,
                    reason=reason,
                    history_reason=reason,
                )
                for key in sorted(
                    await store.member_keys(session=session, profile_id=data.absorbed_profile_id)
                )
            ],
        )
        await _refresh_lifecycle(session=session, context=context, profile_id=data.profile_id, changed=None)
        await reevaluate_profile(
            session=session, context=context, profile_id=data.profile_id, changed=None, cause=cause
        )

    async def on_profile_split(*, session: AsyncSession, envelope: Envelope[Any]) -> None:
        data: ProfileSplit = envelope.data
        applied = False
        for profile_id in (data.profile_id, data.restored_profile_id):
            applied |= await apply_profile_version(
                session=session, table=store.known_profiles, profile_id=profile_id, version=data.version
            )
        if not applied:
            return
        for profile_id in (data.profile_id, data.restored_profile_id):
            await reevaluate_profile(
                session=session,
                context=context,
                profile_id=profile_id,
                changed=None,
                cause=_cause(envelope, None, merge_id=data.merge_id),
            )

    return {
        ProfileCreated: on_profile_changed,
        ProfileUpdated: on_profile_changed,
        ProfileMerged: on_profile_merged,
        ProfileSplit: on_profile_split,
    }


def _most_restrictive(one: dict[str, Any], other: dict[str, Any]) -> dict[str, Any]:
    merged = dict(one)
    for key, decision in other.items():
        mine = merged.get(key)
        if mine is None or (mine.get("status") == "granted" and decision.get("status") != "granted"):
            merged[key] = decision
    return merged


def consent_handler(context: SegmentContext) -> Handler:
    """Return the handler of cdp.consents.v1: keep the latest decision per purpose and channel.

    A decision that excludes the person from profiling takes them out of every segment (reason
    consent) and drops their model results; one that lets them back evaluates every segment again.
    """

    async def on_consent_changed(*, session: AsyncSession, envelope: Envelope[Any]) -> None:
        data: ConsentChanged = envelope.data
        await store.ensure_profile(session=session, profile_id=data.profile_id)
        row = await store.load_profile(session=session, profile_id=data.profile_id, lock=True)
        assert row is not None
        key = f"{data.purpose}:{data.channel}"
        held = row.consents.get(key)
        if held is not None and datetime.fromisoformat(held["at"]) > data.at:
            return
        status = (
            "granted"
            if isinstance(data, ConsentGranted)
            else "withdrawn"
            if isinstance(data, ConsentWithdrawn)
            else "denied"
        )
        consents = {**row.consents, key: {"status": status, "at": data.at.isoformat()}}
        was_withheld = context.profiling_withheld(row.consents)
        now_withheld = context.profiling_withheld(consents)
        documents: dict[str, Any] = {"consents": consents}
        if now_withheld and row.model:
            documents["model"] = {}
        await store.set_profile_documents(session=session, profile_id=data.profile_id, **documents)
        changed = {f"consent:{key}"}
        if was_withheld and not now_withheld:
            await _refresh_lifecycle(
                session=session, context=context, profile_id=data.profile_id, changed=None
            )
        await reevaluate_profile(
            session=session,
            context=context,
            profile_id=data.profile_id,
            # Every segment, when the person is out of them all or back in.
            changed=None if was_withheld != now_withheld else changed,
            cause=_cause(envelope, changed),
        )

    return on_consent_changed


# --- commands of the API -------------------------------------------------------------


class SegmentNotFound(Exception):
    """No live segment has this id or key."""


class SegmentConflict(Exception):
    """The change clashes with what exists (a taken key, a built-in segment, a segment in use)."""


class InvalidSegment(Exception):
    """A definition is not valid; `where` is the JSON path of the offending part."""

    def __init__(self, where: str, message: str) -> None:
        super().__init__(f"{where}: {message}")
        self.where = where
        self.message = message


def _parse_definition(rule: Any) -> ParsedRule:
    try:
        return parse_rule(rule)
    except RuleError as exc:
        raise InvalidSegment(exc.where, exc.message) from exc


async def _check_references(
    *, session: AsyncSession, context: SegmentContext, key: str, parsed: ParsedRule
) -> None:
    catalog = await context.catalog.current(session)
    for ref in sorted(parsed.segment_refs):
        if ref not in catalog.by_key:
            raise InvalidSegment("rule", f"the rule refers to the unknown segment {ref!r}")
    refs = {k: d.parsed.segment_refs for k, d in catalog.by_key.items()}
    refs[key] = parsed.segment_refs
    cycle = find_cycle(refs)
    if cycle:
        raise InvalidSegment("rule", f"segments would refer to each other in a cycle: {' -> '.join(cycle)}")


async def _request_traits(*, session: AsyncSession, segment_key: str, parsed: ParsedRule) -> None:
    """Ask profile for the computed traits a segment's rule reads, owned by the segment (and let go
    of those its earlier version read)."""
    specs = {spec.key: spec.as_request_body() for spec in parsed.computed_traits}
    await store.request_computed_traits(session=session, specs=specs)
    await claims.claim_traits(session=session, segment_key=segment_key, keys=specs)


async def _build(
    *, session: AsyncSession, segment: store.SegmentRow, parsed: ParsedRule, trigger: str
) -> tuple[store.SegmentRow, dict[str, Any]]:
    """Queue the job that makes a segment's members right; the segment is building until it is done.

    A job whose computed traits are not in the copy yet waits parked until they are; a job
    that built an earlier version is cancelled.
    """
    await _cancel_build(session=session, segment=segment)
    keys = {spec.key for spec in parsed.computed_traits}
    awaiting = bool(keys - await builds.ready_traits(session=session, keys=keys))
    job_id = new_job_id()
    job = await submit_job(
        session=session,
        kind=BUILD_JOB,
        params={"segment_id": segment.id, "version": segment.version, "trigger": trigger},
        job_id=job_id,
    )
    if awaiting:
        await builds.park_job(session=session, job_id=job_id)
    await builds.start_build(session=session, segment_id=segment.id, job_id=job_id, awaiting_data=awaiting)
    return replace(segment, status="building", job_id=job_id, awaiting_data=awaiting), job


async def _cancel_build(*, session: AsyncSession, segment: store.SegmentRow) -> None:
    """Cancel the job that builds a segment, if it has not finished."""
    if segment.job_id is None:
        return
    with contextlib.suppress(JobNotFound, JobFinished):
        await cancel_job(session=session, job_id=segment.job_id)


async def create_segment(
    *, session: AsyncSession, context: SegmentContext, key: str, name: str, description: str, rule: Any
) -> tuple[store.SegmentRow, dict[str, Any]]:
    """Create a segment, building: a job computes its members once its computed traits are in."""
    if not is_segment_key(key):
        raise InvalidSegment("key", "a segment key is 1 to 64 of a-z, 0-9 and _ starting with a letter")
    parsed = _parse_definition(rule)
    if await store.key_taken(session=session, key=key):
        raise SegmentConflict(f"the key {key!r} is taken (keys of deleted segments stay taken)")
    await _check_references(session=session, context=context, key=key, parsed=parsed)
    try:
        segment = await store.insert_segment(
            session=session,
            key=key,
            name=name,
            description=description,
            rule=rule,
            dependencies=sorted(parsed.dependencies),
            uses_clock=parsed.uses_clock,
            status="building",
        )
    except IntegrityError as exc:
        # Another request created the key since it was checked above.
        raise SegmentConflict(f"the key {key!r} is taken (keys of deleted segments stay taken)") from exc
    await _request_traits(session=session, segment_key=key, parsed=parsed)
    return await _build(session=session, segment=segment, parsed=parsed, trigger="created")


async def _live(session: AsyncSession, ref: str) -> store.SegmentRow:
    segment = await store.get_segment(session=session, ref=ref)
    if segment is None:
        raise SegmentNotFound(ref)
    return segment


async def update_segment(
    *, session: AsyncSession, context: SegmentContext, ref: str, name: str, description: str, rule: Any
) -> tuple[store.SegmentRow, dict[str, Any]]:
    """Store a new version of a segment's rule; a job brings its membership in line."""
    segment = await _live(session, ref)
    if segment.builtin:
        raise SegmentConflict(f"{segment.key!r} is built in: its model maintains it")
    parsed = _parse_definition(rule)
    await _check_references(session=session, context=context, key=segment.key, parsed=parsed)
    updated = await store.update_segment(
        session=session,
        segment_id=segment.id,
        name=name,
        description=description,
        rule=rule,
        dependencies=sorted(parsed.dependencies),
        uses_clock=parsed.uses_clock,
    )
    await _request_traits(session=session, segment_key=segment.key, parsed=parsed)
    return await _build(session=session, segment=updated, parsed=parsed, trigger=f"version {updated.version}")


async def rebuild_segment(*, session: AsyncSession, ref: str) -> tuple[store.SegmentRow, dict[str, Any]]:
    """Queue a job that evaluates a segment again over every profile (and the segments that use it)."""
    segment = await _live(session, ref)
    return await _build(
        session=session, segment=segment, parsed=parse_rule(segment.rule), trigger="requested"
    )


async def delete_segment(*, session: AsyncSession, ref: str) -> dict[str, Any]:
    """Delete a segment at once and queue the job through which every member leaves it (the deletion as
    the reason); return the job."""
    segment = await _live(session, ref)
    if segment.builtin:
        raise SegmentConflict(f"{segment.key!r} is built in and cannot be deleted")
    users = await store.segments_referencing(session=session, key=segment.key)
    if users:
        raise SegmentConflict(f"{segment.key!r} is used by {users}; change those first")
    await _cancel_build(session=session, segment=segment)
    await store.mark_deleted(session=session, segment_id=segment.id)
    await claims.claim_traits(session=session, segment_key=segment.key, keys=())
    return await submit_job(session=session, kind=DELETE_JOB, params={"segment_id": segment.id})


class _PreviewTimedOut(Exception):
    """The statement of a preview ran past its time."""


async def _bounded(session: AsyncSession, timeout_s: float, statement: Any) -> Any:
    """Run a read under a statement timeout, in a savepoint so the request's transaction survives it."""
    set_timeout = sa.text("SELECT set_config('statement_timeout', :value, true)")
    try:
        async with session.begin_nested():
            held = (
                await session.execute(sa.text("SELECT current_setting('statement_timeout')"))
            ).scalar_one()
            await session.execute(set_timeout, {"value": f"{max(int(timeout_s * 1000), 1)}ms"})
            rows = (await session.execute(statement)).all()
            await session.execute(set_timeout, {"value": held})
            return rows
    except DBAPIError as exc:
        if "statement timeout" in str(exc.orig) or "canceling statement" in str(exc.orig):
            raise _PreviewTimedOut from exc
        raise


# Profiles a preview's estimate looks at: a block sample of about this many rows.
ESTIMATE_ROWS = 20_000


async def _estimate(
    session: AsyncSession, predicate: Any, sample_size: int, timeout_s: float
) -> tuple[int | None, list[str]]:
    """Estimate a rule's audience from a block sample of the copy; return it and a sample of members."""
    held = (
        await session.execute(
            sa.text("SELECT reltuples FROM pg_class WHERE oid = CAST('known_profiles' AS regclass)")
        )
    ).scalar_one()
    rows = max(float(held or 0), 1.0)
    percent = min(100.0, 100.0 * ESTIMATE_ROWS / rows)
    sampled = sa.tablesample(store.profiles, sa.func.system(percent), name="p", seed=sa.literal(7))
    matching = sa.and_(
        sampled.c.merged_into.is_(None),
        sampled.c.version > 0,
        sa.exists(
            sa.select(store.profiles.c.profile_id)
            .where(store.profiles.c.profile_id == sampled.c.profile_id)
            .where(predicate)
        ),
    )
    try:
        found = await _bounded(
            session,
            timeout_s,
            sa.select(
                sa.func.count(),
                sa.func.count().filter(matching),
                sa.func.array_agg(sampled.c.profile_id).filter(matching),
            ).select_from(sampled),
        )
    except _PreviewTimedOut:
        return None, []
    scanned, matched, ids = found[0]
    if not scanned:
        return 0, []
    # With no statistics yet (reltuples -1), the sample's share of the table stands in for them.
    total = rows if float(held or 0) > 0 else scanned * 100.0 / percent
    return round(matched / scanned * total), sorted(ids or [])[:sample_size]


async def preview_segment(
    *,
    session: AsyncSession,
    context: SegmentContext,
    rule: Any,
    sample_size: int,
    timeout_s: float = 3.0,
    estimate_timeout_s: float = 5.0,
) -> dict[str, Any]:
    """Return how many profiles a rule matches now and a sample of them, without saving anything.

    The count runs at most `timeout_s`; past it, the answer estimates the size from a sample of
    the copy (`"size": null, "estimate": N, "exact": false`), itself bounded by `estimate_timeout_s`.
    """
    parsed = _parse_definition(rule)
    await _check_references(session=session, context=context, key="__preview__", parsed=parsed)
    now = context.clock()
    query = members_query(parsed.root, now, policy=context.purposes).subquery()
    size: int | None
    try:
        size = int((await _bounded(session, timeout_s, sa.select(sa.func.count()).select_from(query)))[0][0])
        sample = [
            r[0]
            for r in await _bounded(
                session,
                timeout_s,
                sa.select(query.c.profile_id).order_by(query.c.profile_id).limit(sample_size),
            )
        ]
        estimate: int | None = size
    except _PreviewTimedOut:
        size = None
        estimate, sample = await _estimate(
            session,
            sa.and_(segmentable(context.purposes), compile_rule(parsed.root, now)),
            sample_size,
            estimate_timeout_s,
        )
    keys = [spec.key for spec in parsed.computed_traits]
    building = sorted(set(keys) - await builds.ready_traits(session=session, keys=keys))
    building += sorted(await builds.building_keys(session=session, keys=parsed.segment_refs))
    # While a condition's data is building, the size counts only what the copy holds so far.
    return {
        "size": size,
        "estimate": estimate,
        "exact": size is not None,
        "sample": sample,
        "computed_traits": keys,
        "status": "building" if building else "ready",
        "building": building,
    }


async def explain_membership(
    *, session: AsyncSession, context: SegmentContext, ref: str, profile_id: str
) -> dict[str, Any] | None:
    """Return why a profile is in or out of a segment: every condition with its values, and the last change.

    A profile excluded from profiling is out of every segment: `excluded` names the purpose, its
    basis and the person's decisions, and the explanation puts that condition before the rule's.
    """
    segment = await _live(session, ref)
    row = await store.load_profile(session=session, profile_id=profile_id)
    if row is None:
        return None
    members = await store.member_keys(session=session, profile_id=profile_id)
    now = context.clock()
    parsed = parse_rule(segment.rule)
    keys = {spec.key for spec in parsed.computed_traits}
    # A value the copy holds came by message and is current; only missing ones are unknown yet.
    unknown = keys - await builds.ready_traits(session=session, keys=keys) - set(row.computed)
    building_segments = await builds.building_keys(session=session, keys=parsed.segment_refs)
    facts = facts_of(row, members, context.purposes)
    tree = mark_building(
        explain(parsed.root, facts, now),
        computed=frozenset(unknown),
        segments=frozenset(building_segments),
    )
    excluded = None
    if PROFILING in facts.withheld:
        tree = {"type": "all", "result": False, "conditions": [withheld_explanation(facts, PROFILING), tree]}
        excluded = {
            "reason": "consent",
            "purpose": PROFILING,
            "basis": context.purposes.basis(PROFILING).value,
            "decisions": decisions_for(PROFILING, row.consents),
        }
    return {
        "segment_key": segment.key,
        "segment_version": segment.version,
        "segment_status": segment.status,
        "profile_id": profile_id,
        "member": segment.key in members,
        "matches_now": tree["result"],
        "building": sorted(unknown | building_segments),
        "merged_into": row.merged_into,
        "evaluated_at": now.isoformat(),
        "explanation": tree,
        "excluded": excluded,
        "last_change": await store.last_change(session=session, segment_id=segment.id, profile_id=profile_id),
    }


BUILTIN_SEGMENTS: tuple[tuple[str, str, dict[str, Any]], ...] = (
    *(
        (f"rfm_{name}", f"RFM: {LABELS[name]}", {"model": "rfm.segment", "op": "eq", "value": name})
        for name in NAMED_SEGMENTS
    ),
    *(
        (
            f"lifecycle_{stage}",
            f"Lifecycle: {stage.replace('_', ' ')}",
            {"model": "lifecycle.stage", "op": "eq", "value": stage},
        )
        for stage in STAGES
    ),
)


async def ensure_builtin_segments(
    *, session: AsyncSession, new_days: int = 30, purposes: PurposePolicy | None = None
) -> list[str]:
    """Create the built-in RFM and lifecycle segments that are missing, have every segment claim
    the computed traits it reads (those made before segments claimed them too), and rebuild every
    segment when the consent purposes rest on other bases than at the last start (`CDP_OPT_IN_PURPOSES`
    unless given); return the keys created."""
    await session.execute(
        sa.text("SELECT pg_advisory_xact_lock(hashtextextended('cdp-segment-builtins', 0))")
    )
    created = []
    for key, name, rule in BUILTIN_SEGMENTS:
        if await store.key_taken(session=session, key=key):
            continue
        parsed = parse_rule(rule)
        await store.insert_segment(
            session=session,
            key=key,
            name=name,
            description="Built-in segment maintained by its model",
            rule=rule,
            dependencies=sorted(parsed.dependencies),
            uses_clock=False,
            builtin=True,
            segment_id=f"builtin_{key}",
        )
        created.append(key)
    specs = {spec.key: spec.as_request_body() for spec in builtin_computed_traits(new_days)}
    await store.request_computed_traits(session=session, specs=specs)
    # The lifecycle model reads these traits for its segments, which are never deleted.
    for key, _, _ in BUILTIN_SEGMENTS:
        if key.startswith("lifecycle_"):
            await claims.claim_traits(session=session, segment_key=key, keys=specs)
    for segment in await store.list_live_segments(session=session):
        if not segment.builtin:
            keys = {spec.key for spec in parse_rule(segment.rule).computed_traits}
            await claims.claim_traits(session=session, segment_key=segment.key, keys=keys)
    # Members who are excluded under the new bases leave, with consent as the reason.
    bases = (purposes or PurposePolicy.from_environment()).bases()
    if await purpose_store.record_bases(session=session, bases=bases):
        for segment in await store.list_live_segments(session=session):
            await _build(
                session=session, segment=segment, parsed=parse_rule(segment.rule), trigger="consent purposes"
            )
    return created
