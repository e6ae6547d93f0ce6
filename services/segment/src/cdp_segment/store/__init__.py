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

import orjson
import sqlalchemy as sa
from cdp_common.events import SegmentEntered, SegmentExited, make_envelope
from cdp_common.outbox import OUTBOX_WRITE_LOCK, note_outbox_write_lock
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
    # The person's accounts, each {"group_id", "traits"} as profile's last change carried them (0008).
    sa.Column("accounts", JSONB, nullable=False),
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
    # `building` until the job `job_id` has made the members right; `awaiting_data` while the
    # computed traits it reads are not in the copy yet (changes of single profiles skip it).
    sa.Column("status", sa.Text, nullable=False, server_default="ready"),
    sa.Column("job_id", sa.Text),
    sa.Column("awaiting_data", sa.Boolean, nullable=False, server_default=sa.false()),
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
    sa.Column("profile_job_id", sa.Text),
    sa.Column("fill_job_id", sa.Text),
    sa.Column("ready_at", sa.DateTime(timezone=True)),
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
    status: str = "ready"
    job_id: str | None = None
    awaiting_data: bool = False


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
        status=row.status,
        job_id=row.job_id,
        awaiting_data=row.awaiting_data,
    )


_LIVE = segments.c.deleted_at.is_(None)


# What changes whenever a definition changes, as text: counts of segments and
# deletions and the sum of versions only grow, so a change committed after another
# with a later update time still changes it.
_CATALOG_STAMP = """
    SELECT ARRAY[CAST(max(updated_at) AS text), CAST(count(*) AS text), CAST(count(deleted_at) AS text),
                 CAST(coalesce(sum(version), 0) AS text)]
      FROM segments
"""


async def catalog_stamp(*, session: AsyncSession) -> tuple[str | None, ...]:
    """Return what changes whenever a definition changes."""
    return tuple((await session.execute(sa.text(_CATALOG_STAMP))).scalar_one())


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
    status: str = "ready",
) -> SegmentRow:
    """Create a segment at version 1 (`building` when a job is to compute its members)."""
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
                status=status,
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


async def get_segment_by_id(*, session: AsyncSession, segment_id: str) -> SegmentRow | None:
    """Return a segment by id, deleted or not."""
    row = (await session.execute(sa.select(segments).where(segments.c.id == segment_id))).first()
    return None if row is None else _segment(row)


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
        sa.select(segments.c.key).where(
            _LIVE, sa.literal(f"segment:{key}") == sa.any_(segments.c.dependencies)
        )
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
    accounts: tuple[dict[str, Any], ...] = ()


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


@dataclass(frozen=True)
class ProfileChange:
    """What one profile message changes in the copy: a new version and its changed traits."""

    profile_id: str
    version: int
    changed_traits: dict[str, Any]
    changed_computed: dict[str, Any]
    accounts: list[dict[str, Any]] | None = None


# One statement for a batch of changes (at most one per profile): the insert or merge
# of every copy, each row's current memberships read back with it. Rows come in
# profile-id order so concurrent writers lock them in the same order. The only
# interpolation is the constant stamp query.
_APPLY_CHANGES = sa.text(
    f"""
    WITH input AS (
      SELECT * FROM jsonb_to_recordset(CAST(:changes AS jsonb))
        AS r(profile_id text, version bigint, traits jsonb, computed jsonb)
    ),
    removals AS (SELECT CAST(:removals AS jsonb) AS keys)
    INSERT INTO known_profiles AS p (profile_id, version, traits, computed, model, consents, accounts)
    SELECT profile_id, version, traits, computed, '{{}}', '{{}}',
           coalesce(CAST(:accounts AS jsonb) -> profile_id, '[]') FROM input ORDER BY profile_id
    ON CONFLICT (profile_id) DO UPDATE SET
      version = excluded.version,
      accounts = coalesce(CAST(:accounts AS jsonb) -> excluded.profile_id, p.accounts),
      traits = (p.traits || excluded.traits) - ARRAY(
        SELECT jsonb_array_elements_text(r.keys -> excluded.profile_id -> 'traits') FROM removals r),
      computed = (p.computed || excluded.computed) - ARRAY(
        SELECT jsonb_array_elements_text(r.keys -> excluded.profile_id -> 'computed') FROM removals r),
      updated_at = now()
    WHERE p.version < excluded.version
    RETURNING p.profile_id, p.version, p.merged_into,
      CAST(p.traits AS text) AS traits, CAST(p.computed AS text) AS computed,
      CAST(p.model AS text) AS model, CAST(p.consents AS text) AS consents,
      CAST(p.accounts AS text) AS accounts,
      ARRAY(SELECT m.segment_id FROM memberships m WHERE m.profile_id = p.profile_id) AS segment_ids,
      ({_CATALOG_STAMP}) AS catalog_stamp
    """  # noqa: S608
).columns(
    sa.column("profile_id", sa.Text),
    sa.column("version", sa.BigInteger),
    sa.column("merged_into", sa.Text),
    # The documents come back as text and are decoded with orjson below, several times
    # faster than the driver's JSONB codec; the envelopes they came from were decoded so too.
    sa.column("traits", sa.Text),
    sa.column("computed", sa.Text),
    sa.column("model", sa.Text),
    sa.column("consents", sa.Text),
    sa.column("accounts", sa.Text),
    sa.column("segment_ids", postgresql.ARRAY(sa.Text)),
    sa.column("catalog_stamp", postgresql.ARRAY(sa.Text)),
)


@dataclass(frozen=True)
class AppliedChanges:
    """The copies a batch of changes was applied to, with their memberships, and the catalog stamp."""

    profiles: dict[str, tuple[ProfileRow, frozenset[str]]]
    catalog_stamp: tuple[str | None, ...] | None


async def apply_profile_changes(*, session: AsyncSession, changes: Sequence[ProfileChange]) -> AppliedChanges:
    """Merge changes (at most one per profile) into the copies in one statement.

    Return, by profile id, each copy a change was applied to (newer than the version
    held) with the ids of the segments it is in, and the catalog stamp read in the
    same statement. A trait or computed trait changed to null is removed.
    """
    if not changes:
        return AppliedChanges(profiles={}, catalog_stamp=None)
    document = [
        {
            "profile_id": change.profile_id,
            "version": change.version,
            "traits": _without_nulls(change.changed_traits),
            "computed": _without_nulls(change.changed_computed),
        }
        for change in changes
    ]
    # Removed names by profile id, looked up per row (a JSON object, not a scan of the batch).
    removals = {
        change.profile_id: {
            "traits": [k for k, v in change.changed_traits.items() if v is None],
            "computed": [k for k, v in change.changed_computed.items() if v is None],
        }
        for change in changes
        if None in change.changed_traits.values() or None in change.changed_computed.values()
    }
    # The accounts of the changes that carry them replace the copy's (a JSON object by profile id).
    held = {change.profile_id: change.accounts for change in changes if change.accounts is not None}
    parameters = {
        "changes": json.dumps(document),
        "removals": json.dumps(removals),
        "accounts": json.dumps(held),
    }
    rows = (await session.execute(_APPLY_CHANGES, parameters)).all()
    return AppliedChanges(
        profiles={row.profile_id: (_profile_of_text(row), frozenset(row.segment_ids)) for row in rows},
        catalog_stamp=tuple(rows[0].catalog_stamp) if rows else None,
    )


async def set_profile_models(*, session: AsyncSession, models: dict[str, dict[str, Any]]) -> None:
    """Replace the model documents of several profiles in one statement."""
    if not models:
        return
    await session.execute(
        sa.text(
            """
            UPDATE known_profiles AS p SET model = m.value, updated_at = now()
              FROM jsonb_each(CAST(:models AS jsonb)) AS m
             WHERE p.profile_id = m.key
            """
        ),
        {"models": json.dumps(models)},
    )


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
        accounts=tuple(row.accounts),
    )


def _profile_of_text(row: Any) -> ProfileRow:
    """Return a profile whose documents were read as JSON text."""
    return ProfileRow(
        profile_id=row.profile_id,
        version=row.version,
        merged_into=row.merged_into,
        traits=orjson.loads(row.traits),
        computed=orjson.loads(row.computed),
        model=orjson.loads(row.model),
        consents=orjson.loads(row.consents),
        accounts=tuple(orjson.loads(row.accounts)),
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


@dataclass(frozen=True)
class MembershipChange:
    """A profile enters or leaves a segment, with the reason published and the one kept in history."""

    segment: SegmentRow | SegmentDefinition
    profile_id: str
    entered: bool
    at: datetime
    reason: dict[str, Any]
    history_reason: dict[str, Any]


# One statement for every entry and exit of a batch, in order: the membership rows
# (deleted where the last change is an exit; inserted where it is an entry, with the
# entry time renewed where the profile left and came back), the history and the
# outbox rows. The statement takes the outbox write lock itself: every outbox row is
# joined to it, so no outbox id is drawn before the lock is held and ids follow commit order.
_WRITE_CHANGES = sa.text(
    f"""
    WITH locked AS MATERIALIZED (SELECT {OUTBOX_WRITE_LOCK}),
    input AS (
      SELECT * FROM unnest(
          CAST(:segment_ids AS text[]), CAST(:profile_ids AS text[]), CAST(:changes AS text[]),
          CAST(:versions AS integer[]), CAST(:ats AS timestamptz[]), CAST(:event_ids AS text[]),
          CAST(:reasons AS text[]), CAST(:payloads AS bytea[])) WITH ORDINALITY
        AS c(segment_id, profile_id, change, segment_version, at, event_id, reason, payload, position)
    ),
    last_change AS (
      SELECT DISTINCT ON (segment_id, profile_id) segment_id, profile_id, change, at,
             bool_or(change = 'exited') OVER (PARTITION BY segment_id, profile_id) AS left_once
        FROM input ORDER BY segment_id, profile_id, position DESC
    ),
    removed AS (
      DELETE FROM memberships m USING last_change l
       WHERE l.change = 'exited' AND m.segment_id = l.segment_id AND m.profile_id = l.profile_id
    ),
    added AS (
      INSERT INTO memberships AS m (segment_id, profile_id, entered_at)
      SELECT segment_id, profile_id, at FROM last_change WHERE change = 'entered'
      ON CONFLICT (segment_id, profile_id) DO UPDATE SET entered_at = excluded.entered_at
       WHERE EXISTS (SELECT 1 FROM last_change l WHERE l.left_once
                        AND l.segment_id = excluded.segment_id AND l.profile_id = excluded.profile_id)
    ),
    history AS (
      INSERT INTO membership_history (segment_id, profile_id, change, segment_version, at, event_id, reason)
      SELECT segment_id, profile_id, change, segment_version, at, event_id, CAST(reason AS jsonb)
        FROM input ORDER BY position
    )
    INSERT INTO outbox (topic, key, event_id, payload)
    SELECT :topic, profile_id, event_id, payload FROM input CROSS JOIN locked ORDER BY position
    """  # noqa: S608 - the only interpolation is the constant lock expression
)


async def write_membership_changes(
    *, session: AsyncSession, topic: str, changes: Sequence[MembershipChange]
) -> None:
    """Apply entries and exits in order: memberships, history and outbox events in one statement."""
    if not changes:
        return
    envelopes = [
        make_envelope(
            payload=(SegmentEntered if change.entered else SegmentExited)(
                profile_id=change.profile_id,
                segment_key=change.segment.key,
                segment_version=change.segment.version,
                reason=change.reason,
                at=change.at,
            ),
            source="segment",
            subject=change.profile_id,
        )
        for change in changes
    ]
    await session.execute(
        _WRITE_CHANGES,
        {
            "segment_ids": [c.segment.id for c in changes],
            "profile_ids": [c.profile_id for c in changes],
            "changes": ["entered" if c.entered else "exited" for c in changes],
            "versions": [c.segment.version for c in changes],
            "ats": [c.at for c in changes],
            "event_ids": [e.id for e in envelopes],
            "reasons": [json.dumps(c.history_reason) for c in changes],
            "payloads": [e.to_bytes() for e in envelopes],
            "topic": topic,
        },
    )
    note_outbox_write_lock(session=session)


async def member_range(
    *, session: AsyncSession, segment_id: str, after: str | None, size: int
) -> tuple[str | None, int]:
    """Return the last profile id of a segment's next `size` members after `after` (None when they run
    to the end) and how many members the range holds."""
    inner = (
        sa.select(memberships.c.profile_id)
        .where(memberships.c.segment_id == segment_id, memberships.c.profile_id > (after or ""))
        .order_by(memberships.c.profile_id)
        .limit(size)
        .subquery()
    )
    last, count = (
        await session.execute(sa.select(sa.func.max(inner.c.profile_id), sa.func.count()).select_from(inner))
    ).one()
    return (last if count >= size else None), int(count)


async def count_segment_members(*, session: AsyncSession, segment_id: str) -> int:
    """Return how many members a segment holds."""
    query = sa.select(sa.func.count()).select_from(memberships).where(memberships.c.segment_id == segment_id)
    return int((await session.execute(query)).scalar_one())


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


async def mark_computed_trait(
    *, session: AsyncSession, key: str, status: str, error: str | None, profile_job_id: str | None = None
) -> None:
    """Record the outcome of asking profile for a computed trait (and the job that builds it there)."""
    values: dict[str, Any] = {"status": status, "error": error, "updated_at": sa.func.clock_timestamp()}
    if profile_job_id is not None:
        values["profile_job_id"] = profile_job_id
    await session.execute(
        computed_trait_requests.update().where(computed_trait_requests.c.key == key).values(**values)
    )


async def list_computed_traits(*, session: AsyncSession) -> list[dict[str, Any]]:
    """Return every computed trait segment asked for, with its state."""
    rows = await session.execute(sa.select(computed_trait_requests).order_by(computed_trait_requests.c.key))
    return [
        {
            "key": r.key,
            "spec": r.spec,
            "status": r.status,
            "error": r.error,
            "profile_job_id": r.profile_job_id,
            "fill_job_id": r.fill_job_id,
            "ready_at": r.ready_at.isoformat() if r.ready_at else None,
        }
        for r in rows
    ]


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
    # Features a model run keeps between its fit and its scoring.
    await session.execute(
        sa.text("DELETE FROM model_features WHERE profile_id = ANY(CAST(:ids AS text[]))"),
        {"ids": profile_ids},
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
        "accounts": list(copy.accounts),
        "memberships": await profile_memberships(session=session, profile_id=profile_id),
        "membership_history": await page_history(
            session=session, segment_id=None, profile_id=profile_id, before_id=None, limit=10_000
        ),
    }


def jsonb(value: Any) -> Any:
    """Return a bound JSONB literal."""
    return sa.cast(json.dumps(value), JSONB)
