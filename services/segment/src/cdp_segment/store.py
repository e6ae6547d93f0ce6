"""Tables and queries of the segment service, in its own schema.

It holds the segment definitions with their versions, a copy of what profile and
consent publish about each profile (traits, computed traits, consents, keyed by
profile id in the known-profiles table, beside the model results), memberships and
their history. Membership changes are written with their outbox rows.
"""

from __future__ import annotations

import json
import uuid
from collections.abc import Sequence
from dataclasses import dataclass
from datetime import datetime
from typing import Any

import sqlalchemy as sa
from cdp_common.events import SegmentEntered, SegmentExited, make_envelope
from cdp_common.outbox import add_to_outbox
from cdp_common.replica import erase_known_profiles, export_known_profile, known_profiles_table
from sqlalchemy.dialects import postgresql
from sqlalchemy.dialects.postgresql import JSONB
from sqlalchemy.ext.asyncio import AsyncSession

from cdp_segment.domain.membership import SegmentDefinition

metadata = sa.MetaData()
known_profiles = known_profiles_table(metadata)
# The same table with the columns this service added (migration 0002); the replica
# functions of cdp_common keep using the narrow definition above.
profiles = sa.Table(
    "known_profiles",
    sa.MetaData(),
    sa.Column("profile_id", sa.Text, primary_key=True),
    sa.Column("version", sa.BigInteger, nullable=False),
    sa.Column("merged_into", sa.Text),
    sa.Column("traits", JSONB, nullable=False),
    sa.Column("computed", JSONB, nullable=False),
    sa.Column("model", JSONB, nullable=False),
    sa.Column("consents", JSONB, nullable=False),
    sa.Column("updated_at", sa.DateTime(timezone=True)),
)
segments = sa.Table(
    "segments",
    metadata,
    sa.Column("id", sa.Text, primary_key=True),
    sa.Column("key", sa.Text, nullable=False, unique=True),
    sa.Column("name", sa.Text, nullable=False),
    sa.Column("description", sa.Text, nullable=False),
    sa.Column("rule", JSONB, nullable=False),
    sa.Column("version", sa.Integer, nullable=False),
    sa.Column("builtin", sa.Boolean, nullable=False),
    sa.Column("dependencies", postgresql.ARRAY(sa.Text), nullable=False),
    sa.Column("uses_clock", sa.Boolean, nullable=False),
    sa.Column("deleted_at", sa.DateTime(timezone=True)),
    sa.Column("created_at", sa.DateTime(timezone=True), server_default=sa.func.clock_timestamp()),
    sa.Column("updated_at", sa.DateTime(timezone=True), server_default=sa.func.clock_timestamp()),
)
segment_versions = sa.Table(
    "segment_versions",
    metadata,
    sa.Column("segment_id", sa.Text, primary_key=True),
    sa.Column("version", sa.Integer, primary_key=True),
    sa.Column("rule", JSONB, nullable=False),
    sa.Column("created_at", sa.DateTime(timezone=True), server_default=sa.func.clock_timestamp()),
)
memberships = sa.Table(
    "memberships",
    metadata,
    sa.Column("segment_id", sa.Text, primary_key=True),
    sa.Column("profile_id", sa.Text, primary_key=True),
    sa.Column("entered_at", sa.DateTime(timezone=True), nullable=False),
)
membership_history = sa.Table(
    "membership_history",
    metadata,
    sa.Column("id", sa.BigInteger, sa.Identity(), primary_key=True),
    sa.Column("segment_id", sa.Text, nullable=False),
    sa.Column("profile_id", sa.Text, nullable=False),
    sa.Column("change", sa.Text, nullable=False),
    sa.Column("segment_version", sa.Integer, nullable=False),
    sa.Column("at", sa.DateTime(timezone=True), nullable=False),
    sa.Column("event_id", sa.Text, nullable=False),
    sa.Column("reason", JSONB, nullable=False),
)
computed_trait_requests = sa.Table(
    "computed_trait_requests",
    metadata,
    sa.Column("key", sa.Text, primary_key=True),
    sa.Column("spec", JSONB, nullable=False),
    sa.Column("status", sa.Text, nullable=False),
    sa.Column("error", sa.Text),
    sa.Column("updated_at", sa.DateTime(timezone=True), server_default=sa.func.clock_timestamp()),
)
model_runs = sa.Table(
    "model_runs",
    metadata,
    sa.Column("model", sa.Text, primary_key=True),
    sa.Column("ran_at", sa.DateTime(timezone=True), nullable=False),
    sa.Column("parameters", JSONB, nullable=False),
    sa.Column("summary", JSONB, nullable=False),
)


@dataclass(frozen=True)
class SegmentRow:
    """One segment definition as stored."""

    id: str
    key: str
    name: str
    description: str
    rule: dict[str, Any]
    version: int
    builtin: bool
    dependencies: tuple[str, ...]
    uses_clock: bool
    created_at: datetime
    updated_at: datetime


def _segment(row: Any) -> SegmentRow:
    return SegmentRow(
        id=row.id,
        key=row.key,
        name=row.name,
        description=row.description,
        rule=row.rule,
        version=row.version,
        builtin=row.builtin,
        dependencies=tuple(row.dependencies),
        uses_clock=row.uses_clock,
        created_at=row.created_at,
        updated_at=row.updated_at,
    )


_LIVE = segments.c.deleted_at.is_(None)


async def catalog_stamp(*, session: AsyncSession) -> tuple[Any, int]:
    """Return what changes whenever a definition changes: the latest update and the count."""
    row = (await session.execute(sa.select(sa.func.max(segments.c.updated_at), sa.func.count()))).one()
    return row[0], int(row[1])


async def list_live_segments(*, session: AsyncSession) -> list[SegmentRow]:
    """Return every segment that is not deleted."""
    rows = await session.execute(sa.select(segments).where(_LIVE).order_by(segments.c.key))
    return [_segment(r) for r in rows]


async def page_segments(*, session: AsyncSession, after_key: str | None, limit: int) -> list[SegmentRow]:
    """Return a page of live segments ordered by key."""
    query = sa.select(segments).where(_LIVE).order_by(segments.c.key).limit(limit)
    if after_key is not None:
        query = query.where(segments.c.key > after_key)
    return [_segment(r) for r in await session.execute(query)]


async def get_segment(*, session: AsyncSession, ref: str) -> SegmentRow | None:
    """Return a live segment by id or key."""
    query = sa.select(segments).where(_LIVE, sa.or_(segments.c.id == ref, segments.c.key == ref))
    row = (await session.execute(query)).first()
    return None if row is None else _segment(row)


async def key_taken(*, session: AsyncSession, key: str) -> bool:
    """Whether a key belongs to a segment, deleted ones included (keys are never reused)."""
    return (await session.execute(sa.select(segments.c.id).where(segments.c.key == key))).first() is not None


async def insert_segment(
    *,
    session: AsyncSession,
    key: str,
    name: str,
    description: str,
    rule: dict[str, Any],
    dependencies: Sequence[str],
    uses_clock: bool,
    builtin: bool = False,
    segment_id: str | None = None,
) -> SegmentRow:
    """Create a segment at version 1."""
    new_id = segment_id or uuid.uuid4().hex
    row = (
        await session.execute(
            segments.insert()
            .values(
                id=new_id,
                key=key,
                name=name,
                description=description,
                rule=rule,
                version=1,
                builtin=builtin,
                dependencies=sorted(dependencies),
                uses_clock=uses_clock,
            )
            .returning(segments)
        )
    ).one()
    await session.execute(segment_versions.insert().values(segment_id=new_id, version=1, rule=rule))
    return _segment(row)


async def update_segment(
    *,
    session: AsyncSession,
    segment_id: str,
    name: str,
    description: str,
    rule: dict[str, Any],
    dependencies: Sequence[str],
    uses_clock: bool,
) -> SegmentRow:
    """Store a new version of a segment."""
    row = (
        await session.execute(
            segments.update()
            .where(segments.c.id == segment_id)
            .values(
                name=name,
                description=description,
                rule=rule,
                version=segments.c.version + 1,
                dependencies=sorted(dependencies),
                uses_clock=uses_clock,
                updated_at=sa.func.clock_timestamp(),
            )
            .returning(segments)
        )
    ).one()
    await session.execute(
        segment_versions.insert().values(segment_id=segment_id, version=row.version, rule=rule)
    )
    return _segment(row)


async def mark_deleted(*, session: AsyncSession, segment_id: str) -> None:
    """Delete a segment softly: its key stays taken and its history stays readable."""
    await session.execute(
        segments.update()
        .where(segments.c.id == segment_id)
        .values(deleted_at=sa.func.clock_timestamp(), updated_at=sa.func.clock_timestamp())
    )


async def list_versions(*, session: AsyncSession, segment_id: str) -> list[dict[str, Any]]:
    """Return every version of a segment's rule."""
    rows = await session.execute(
        sa.select(segment_versions)
        .where(segment_versions.c.segment_id == segment_id)
        .order_by(segment_versions.c.version)
    )
    return [{"version": r.version, "rule": r.rule, "created_at": r.created_at.isoformat()} for r in rows]


async def segments_referencing(*, session: AsyncSession, key: str) -> list[str]:
    """Return the keys of live segments whose rules use a segment."""
    rows = await session.execute(
        sa.select(segments.c.key).where(_LIVE, segments.c.dependencies.any(f"segment:{key}"))
    )
    return list(rows.scalars())


# --- the profile copy ----------------------------------------------------------------


@dataclass(frozen=True)
class ProfileRow:
    """What segment holds about one profile."""

    profile_id: str
    version: int
    merged_into: str | None
    traits: dict[str, Any]
    computed: dict[str, Any]
    model: dict[str, Any]
    consents: dict[str, Any]


def _without_nulls(document: dict[str, Any]) -> dict[str, Any]:
    return {k: v for k, v in document.items() if v is not None}


async def apply_profile_change(
    *,
    session: AsyncSession,
    profile_id: str,
    version: int,
    changed_traits: dict[str, Any],
    changed_computed: dict[str, Any],
) -> ProfileRow | None:
    """Merge changed traits into the copy unless a newer version is held; return it when applied.

    A trait or computed trait changed to null is removed.
    """
    removed_traits = [k for k, v in changed_traits.items() if v is None]
    removed_computed = [k for k, v in changed_computed.items() if v is None]
    statement = postgresql.insert(profiles).values(
        profile_id=profile_id,
        version=version,
        traits=_without_nulls(changed_traits),
        computed=_without_nulls(changed_computed),
        model={},
        consents={},
    )
    excluded = statement.excluded
    upsert = statement.on_conflict_do_update(
        index_elements=[profiles.c.profile_id],
        set_={
            "version": excluded.version,
            "traits": (profiles.c.traits.op("||")(excluded.traits)).op("-")(
                sa.cast(removed_traits, postgresql.ARRAY(sa.Text))
            ),
            "computed": (profiles.c.computed.op("||")(excluded.computed)).op("-")(
                sa.cast(removed_computed, postgresql.ARRAY(sa.Text))
            ),
            "updated_at": sa.func.now(),
        },
        where=profiles.c.version < excluded.version,
    ).returning(*profiles.c)
    row = (await session.execute(upsert)).first()
    return None if row is None else _profile(row)


async def load_profile(*, session: AsyncSession, profile_id: str, lock: bool = False) -> ProfileRow | None:
    """Return the copy of one profile; with lock, hold it until the transaction ends."""
    query = sa.select(profiles).where(profiles.c.profile_id == profile_id)
    if lock:
        query = query.with_for_update()
    row = (await session.execute(query)).first()
    return None if row is None else _profile(row)


def _profile(row: Any) -> ProfileRow:
    return ProfileRow(
        profile_id=row.profile_id,
        version=row.version,
        merged_into=row.merged_into,
        traits=row.traits,
        computed=row.computed,
        model=row.model,
        consents=row.consents,
    )


async def set_profile_documents(
    *, session: AsyncSession, profile_id: str, **documents: dict[str, Any]
) -> None:
    """Replace some of a profile's documents (traits, computed, model, consents)."""
    await session.execute(
        profiles.update()
        .where(profiles.c.profile_id == profile_id)
        .values(**documents, updated_at=sa.func.now())
    )


async def ensure_profile(*, session: AsyncSession, profile_id: str) -> None:
    """Create an empty copy (version 0: not yet heard of from profile) if there is none."""
    await session.execute(
        postgresql.insert(profiles)
        .values(profile_id=profile_id, version=0, traits={}, computed={}, model={}, consents={})
        .on_conflict_do_nothing(index_elements=[profiles.c.profile_id])
    )


# --- memberships ---------------------------------------------------------------------


async def count_members(*, session: AsyncSession) -> dict[str, int]:
    """Return the number of members of every live segment, by key."""
    rows = await session.execute(
        sa.select(segments.c.key, sa.func.count(memberships.c.profile_id))
        .select_from(segments.outerjoin(memberships, memberships.c.segment_id == segments.c.id))
        .where(segments.c.deleted_at.is_(None))
        .group_by(segments.c.key)
    )
    return {key: int(count) for key, count in rows.all()}


async def member_keys(*, session: AsyncSession, profile_id: str) -> set[str]:
    """Return the keys of the live segments a profile is in."""
    rows = await session.execute(
        sa.select(segments.c.key)
        .select_from(memberships.join(segments, segments.c.id == memberships.c.segment_id))
        .where(memberships.c.profile_id == profile_id, _LIVE)
    )
    return set(rows.scalars())


async def record_membership_change(
    *,
    session: AsyncSession,
    topic: str,
    segment: SegmentRow | SegmentDefinition,
    profile_id: str,
    entered: bool,
    at: datetime,
    reason: dict[str, Any],
    history_reason: dict[str, Any],
) -> None:
    """Enter or leave a segment: the membership, its history and the outbox event, together."""
    if entered:
        await session.execute(
            postgresql.insert(memberships)
            .values(segment_id=segment.id, profile_id=profile_id, entered_at=at)
            .on_conflict_do_nothing()
        )
    else:
        await session.execute(
            memberships.delete().where(
                memberships.c.segment_id == segment.id, memberships.c.profile_id == profile_id
            )
        )
    payload_cls = SegmentEntered if entered else SegmentExited
    envelope = make_envelope(
        payload=payload_cls(
            profile_id=profile_id,
            segment_key=segment.key,
            segment_version=segment.version,
            reason=reason,
            at=at,
        ),
        source="segment",
        subject=profile_id,
    )
    await session.execute(
        membership_history.insert().values(
            segment_id=segment.id,
            profile_id=profile_id,
            change="entered" if entered else "exited",
            segment_version=segment.version,
            at=at,
            event_id=envelope.id,
            reason=history_reason,
        )
    )
    await add_to_outbox(session=session, topic=topic, envelope=envelope)


async def page_members(
    *, session: AsyncSession, segment_id: str, after: str | None, limit: int
) -> list[dict[str, Any]]:
    """Return a page of a segment's members ordered by profile id."""
    query = (
        sa.select(memberships.c.profile_id, memberships.c.entered_at)
        .where(memberships.c.segment_id == segment_id)
        .order_by(memberships.c.profile_id)
        .limit(limit)
    )
    if after is not None:
        query = query.where(memberships.c.profile_id > after)
    return [
        {"profile_id": r.profile_id, "entered_at": r.entered_at.isoformat()}
        for r in await session.execute(query)
    ]


async def member_ids(*, session: AsyncSession, segment_id: str) -> set[str]:
    """Return every member of a segment."""
    rows = await session.execute(
        sa.select(memberships.c.profile_id).where(memberships.c.segment_id == segment_id)
    )
    return set(rows.scalars())


async def profile_memberships(*, session: AsyncSession, profile_id: str) -> list[dict[str, Any]]:
    """Return the live segments a profile is in, with when it entered."""
    rows = await session.execute(
        sa.select(segments.c.id, segments.c.key, segments.c.name, memberships.c.entered_at)
        .select_from(memberships.join(segments, segments.c.id == memberships.c.segment_id))
        .where(memberships.c.profile_id == profile_id, _LIVE)
        .order_by(segments.c.key)
    )
    return [
        {"segment_id": r.id, "segment_key": r.key, "name": r.name, "entered_at": r.entered_at.isoformat()}
        for r in rows
    ]


async def page_history(
    *,
    session: AsyncSession,
    segment_id: str | None,
    profile_id: str | None,
    before_id: int | None,
    limit: int,
) -> list[dict[str, Any]]:
    """Return membership changes, newest first, for a segment and/or a profile."""
    query = (
        sa.select(membership_history, segments.c.key)
        .select_from(membership_history.join(segments, segments.c.id == membership_history.c.segment_id))
        .order_by(membership_history.c.id.desc())
        .limit(limit)
    )
    if segment_id is not None:
        query = query.where(membership_history.c.segment_id == segment_id)
    if profile_id is not None:
        query = query.where(membership_history.c.profile_id == profile_id)
    if before_id is not None:
        query = query.where(membership_history.c.id < before_id)
    return [
        {
            "id": r.id,
            "segment_key": r.key,
            "profile_id": r.profile_id,
            "change": r.change,
            "segment_version": r.segment_version,
            "at": r.at.isoformat(),
            "event_id": r.event_id,
            "reason": r.reason,
        }
        for r in await session.execute(query)
    ]


async def last_change(*, session: AsyncSession, segment_id: str, profile_id: str) -> dict[str, Any] | None:
    """Return the latest entry or exit of a profile in a segment."""
    rows = await page_history(
        session=session, segment_id=segment_id, profile_id=profile_id, before_id=None, limit=1
    )
    return rows[0] if rows else None


# --- computed traits asked of profile ------------------------------------------------


async def request_computed_traits(*, session: AsyncSession, specs: dict[str, dict[str, Any]]) -> None:
    """Record computed traits that profile must maintain; new ones start pending."""
    if not specs:
        return
    await session.execute(
        postgresql.insert(computed_trait_requests)
        .values([{"key": key, "spec": spec, "status": "pending"} for key, spec in specs.items()])
        .on_conflict_do_nothing()
    )


async def pending_computed_traits(*, session: AsyncSession) -> list[dict[str, Any]]:
    """Return the computed-trait definitions profile has not confirmed yet."""
    rows = await session.execute(
        sa.select(computed_trait_requests.c.spec).where(computed_trait_requests.c.status != "defined")
    )
    return list(rows.scalars())


async def mark_computed_trait(*, session: AsyncSession, key: str, status: str, error: str | None) -> None:
    """Record the outcome of asking profile for a computed trait."""
    await session.execute(
        computed_trait_requests.update()
        .where(computed_trait_requests.c.key == key)
        .values(status=status, error=error, updated_at=sa.func.clock_timestamp())
    )


async def list_computed_traits(*, session: AsyncSession) -> list[dict[str, Any]]:
    """Return every computed trait segment asked for, with its state."""
    rows = await session.execute(sa.select(computed_trait_requests).order_by(computed_trait_requests.c.key))
    return [{"key": r.key, "spec": r.spec, "status": r.status, "error": r.error} for r in rows]


# --- models --------------------------------------------------------------------------


async def save_model_run(
    *,
    session: AsyncSession,
    model: str,
    ran_at: datetime,
    parameters: dict[str, Any],
    summary: dict[str, Any],
) -> None:
    """Keep the latest run of a model: its parameters and summary."""
    statement = postgresql.insert(model_runs).values(
        model=model, ran_at=ran_at, parameters=parameters, summary=summary
    )
    await session.execute(
        statement.on_conflict_do_update(
            index_elements=[model_runs.c.model],
            set_={
                "ran_at": statement.excluded.ran_at,
                "parameters": statement.excluded.parameters,
                "summary": statement.excluded.summary,
            },
        )
    )


async def get_model_run(*, session: AsyncSession, model: str) -> dict[str, Any] | None:
    """Return the latest run of a model."""
    row = (await session.execute(sa.select(model_runs).where(model_runs.c.model == model))).first()
    if row is None:
        return None
    return {
        "model": row.model,
        "ran_at": row.ran_at.isoformat(),
        "parameters": row.parameters,
        "summary": row.summary,
    }


# --- privacy -------------------------------------------------------------------------


async def erase_profiles(*, session: AsyncSession, profile_ids: list[str]) -> dict[str, int]:
    """Delete everything held about these profiles; return the rows removed per table."""
    removed_members = await session.execute(
        memberships.delete().where(memberships.c.profile_id.in_(profile_ids))
    )
    removed_history = await session.execute(
        membership_history.delete().where(membership_history.c.profile_id.in_(profile_ids))
    )
    details = {
        "known_profiles": await erase_known_profiles(
            session=session, table=known_profiles, profile_ids=profile_ids
        )
    }
    # Only what was there is listed beside the profile record itself.
    for name, result in (("memberships", removed_members), ("membership_history", removed_history)):
        count = int(getattr(result, "rowcount", 0) or 0)
        if count:
            details[name] = count
    return details


async def export_profile(*, session: AsyncSession, profile_id: str) -> dict[str, Any] | None:
    """Return everything held about one profile, or None."""
    known = await export_known_profile(session=session, table=known_profiles, profile_id=profile_id)
    if known is None:
        return None
    copy = await load_profile(session=session, profile_id=profile_id)
    assert copy is not None
    return {
        "known_profile": known,
        "traits": copy.traits,
        "computed_traits": copy.computed,
        "model_results": copy.model,
        "consents": copy.consents,
        "memberships": await profile_memberships(session=session, profile_id=profile_id),
        "membership_history": await page_history(
            session=session, segment_id=None, profile_id=profile_id, before_id=None, limit=10_000
        ),
    }


def jsonb(value: Any) -> Any:
    """Return a bound JSONB literal."""
    return sa.cast(json.dumps(value), JSONB)
