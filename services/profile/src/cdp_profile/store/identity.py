"""The profile store: the identity rules and computed-trait definitions read once per transaction,
the identity graph, and the view of a batch of events (one statement to lock, one to read, one to write)."""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field
from datetime import datetime
from typing import Any

import sqlalchemy as sa
from cdp_common.db import forget_for_transaction, json_text, once_per_transaction
from cdp_common.envelope import Envelope
from cdp_common.outbox import OUTBOX_WRITE_LOCK, lock_outbox_writes, note_outbox_write_lock
from sqlalchemy.dialects import postgresql
from sqlalchemy.ext.asyncio import AsyncSession

from cdp_profile.domain.computed import Definition
from cdp_profile.domain.identity import PROFILE_ID, IdentifierKey, IdentityRules
from cdp_profile.store.tables import (
    CONFIGURATION,
    DEFINITIONS_LOCK,
    StoredProfile,
    _profile_of,
    computed_definitions,
    computed_values,
    identifier_links,
    identifiers,
    identity_rules,
    profiles,
    tombstones,
)

# --- the view of a batch of events: one statement to lock, one to read, one to write -------------

# The writers' lock (with the relay's wake-up), then the shared definitions lock: the order
# every writer of the service takes them in, so replicas and definers cannot deadlock.
_LOCK_FOR_RESOLUTION = sa.text(
    f"SELECT {OUTBOX_WRITE_LOCK}, pg_advisory_xact_lock_shared(CAST(:definitions_lock AS bigint))"
)

# --- configuration read once per transaction -------------------------------------------------


@dataclass(frozen=True)
class Configuration:
    """The identity rules and the computed-trait definitions a transaction works with."""

    rules: IdentityRules
    definitions: tuple[Definition, ...]


async def load_configuration(*, session: AsyncSession) -> Configuration:
    """Return the rules and definitions, read once per transaction under the shared definitions lock."""

    async def load() -> Configuration:
        await session.execute(sa.select(sa.func.pg_advisory_xact_lock_shared(DEFINITIONS_LOCK)))
        rules_row = (
            await session.execute(sa.select(identity_rules.c.rules).where(identity_rules.c.id == 1))
        ).first()
        definitions = (
            await session.execute(
                sa.select(computed_definitions.c.definition).order_by(computed_definitions.c.key)
            )
        ).scalars()
        return Configuration(
            rules=IdentityRules.from_json(rules_row.rules) if rules_row else IdentityRules(),
            definitions=tuple(Definition.from_json(raw) for raw in definitions),
        )

    return await once_per_transaction(session, CONFIGURATION, load)


async def save_rules(*, session: AsyncSession, rules: IdentityRules) -> None:
    """Store the identity rules."""
    statement = postgresql.insert(identity_rules).values(id=1, rules=rules.to_json())
    await session.execute(
        statement.on_conflict_do_update(
            index_elements=[identity_rules.c.id],
            set_={"rules": statement.excluded.rules, "updated_at": sa.func.now()},
        )
    )
    forget_for_transaction(session, CONFIGURATION)


# --- identity graph ----------------------------------------------------------------------------


async def serialise_writers(*, session: AsyncSession) -> None:
    """Take the outbox's write lock first, once per transaction.

    Every transaction that writes an outbox row holds this lock until it commits; taking
    it before any identifier or profile lock means a batch of events never waits for it
    while holding locks another replica needs, so replicas cannot deadlock.
    """
    await lock_outbox_writes(session=session)


async def tombstoned(*, session: AsyncSession, hashes: Sequence[str]) -> bool:
    """Whether any of the keyed hashes belongs to an erased person."""
    if not hashes:
        return False
    # Erasures write under the same writers' lock, so what this transaction saw first holds.
    if session.info.get("profile_no_tombstones"):
        return False
    if "profile_no_tombstones" not in session.info:
        any_row = (await session.execute(sa.select(tombstones.c.value_hash).limit(1))).first()
        session.info["profile_no_tombstones"] = any_row is None
        if any_row is None:
            return False
    found = await session.execute(
        sa.select(tombstones.c.value_hash).where(tombstones.c.value_hash.in_(list(hashes))).limit(1)
    )
    return found.first() is not None


@dataclass(frozen=True)
class Owner:
    """Who holds an identifier, and whether it is quarantined."""

    profile_id: str
    quarantined: bool


_OWNERS_WITH_PROFILES = sa.text(
    """
    SELECT i.type AS key_type, i.value AS key_value, i.quarantined_at IS NOT NULL AS quarantined,
           p.id, p.version, p.status, p.merged_into, p.traits, p.aggregates, p.computed, p.created_at,
           p.updated_at,
           (SELECT jsonb_object_agg(c.type, c.n)
              FROM (SELECT x.type, count(*) AS n FROM identifiers x WHERE x.profile_id = p.id GROUP BY x.type) c
           ) AS counts
      FROM identifiers i JOIN profiles p ON p.id = i.profile_id
     WHERE (i.type, i.value) IN (SELECT * FROM unnest(CAST(:types AS text[]), CAST(:vals AS text[])))
     ORDER BY p.id
       FOR UPDATE OF p
    """
).columns(
    traits=postgresql.JSONB, aggregates=postgresql.JSONB, computed=postgresql.JSONB, counts=postgresql.JSONB
)


@dataclass
class Holders:
    """The owners of an event's identifiers, their profiles (locked) and identifier counts."""

    owners: dict[IdentifierKey, Owner]
    profiles: dict[str, StoredProfile]
    counts: dict[str, dict[str, int]]


async def lock_holders(*, session: AsyncSession, keys: Sequence[IdentifierKey]) -> Holders:
    """Find who holds the identifiers, lock those profiles in id order and count their identifiers, at once."""
    holders = Holders(owners={}, profiles={}, counts={})
    plain = [k for k in keys if k.type != PROFILE_ID]
    if plain:
        rows = await session.execute(
            _OWNERS_WITH_PROFILES, {"types": [k.type for k in plain], "vals": [k.value for k in plain]}
        )
        for row in rows:
            holders.owners[IdentifierKey(row.key_type, row.key_value)] = Owner(row.id, row.quarantined)
            holders.profiles[row.id] = _profile_of(row)
            holders.counts[row.id] = dict(row.counts or {})
    named = [k for k in keys if k.type == PROFILE_ID]
    for key in named:
        resolved = await resolve_profile_id(session=session, profile_id=key.value)
        if resolved is None:
            continue
        holders.owners[key] = Owner(resolved, False)
        if resolved not in holders.profiles:
            holders.profiles.update(await lock_profiles(session=session, profile_ids=[resolved]))
            holders.counts.update(await identifier_counts(session=session, profile_ids=[resolved]))
    return holders


async def lock_for_resolution(*, session: AsyncSession) -> None:
    """Take the outbox's write lock and the shared definitions lock in one statement.

    What the transaction reads afterwards is read after both were granted: a statement's
    snapshot predates the locks it waits for, so no read shares this statement.
    """
    await session.execute(_LOCK_FOR_RESOLUTION, {"definitions_lock": DEFINITIONS_LOCK})
    note_outbox_write_lock(session=session)


@dataclass
class LatestConfiguration:
    """The rules and definitions the last transaction read, as stored and as parsed.

    A batch prepares its events with them before the transaction's own reading arrives in
    the view's statement; when that reading differs, the batch is prepared again.
    """

    rules: Any = None
    definitions: Any = field(default_factory=list)
    configuration: Configuration = field(default_factory=lambda: Configuration(IdentityRules(), ()))

    def configuration_of(self, *, rules: Any, definitions: Any) -> Configuration:
        """Return the configuration these stored forms stand for, parsed only when they changed."""
        if rules != self.rules or definitions != self.definitions:
            self.rules, self.definitions = rules, definitions
            self.configuration = Configuration(
                rules=IdentityRules.from_json(rules) if rules else IdentityRules(),
                definitions=tuple(Definition.from_json(raw) for raw in definitions),
            )
        return self.configuration


async def hold_configuration(*, session: AsyncSession, configuration: Configuration) -> Configuration:
    """Keep a configuration read under the shared definitions lock for the rest of the transaction;
    return the one the transaction already holds, if any."""

    async def load() -> Configuration:
        return configuration

    return await once_per_transaction(session, CONFIGURATION, load)


# The owners of the identifiers with their profiles (locked in id order), identifier counts
# and user-defined states; then one row with the rules, the definitions, whether any hash
# is an erased person's and which events the store holds. The locks this statement relies
# on were taken by an earlier one, so its snapshot sees every writer that went before.
_VIEW = sa.text(
    """
    WITH held AS MATERIALIZED (
        SELECT i.type AS key_type, i.value AS key_value, i.quarantined_at IS NOT NULL AS quarantined,
               p.id, p.version, p.status, p.merged_into, p.traits, p.aggregates, p.computed,
               p.created_at, p.updated_at,
               (SELECT jsonb_object_agg(c.type, c.n)
                  FROM (SELECT x.type, count(*) AS n FROM identifiers x WHERE x.profile_id = p.id
                         GROUP BY x.type) c) AS counts,
               (SELECT jsonb_object_agg(v.key, v.state) FROM computed_values v
                 WHERE v.profile_id = p.id) AS states
          FROM identifiers i JOIN profiles p ON p.id = i.profile_id
         WHERE (i.type, i.value) IN (SELECT * FROM unnest(CAST(:types AS text[]), CAST(:vals AS text[])))
         ORDER BY p.id
           FOR UPDATE OF p
    )
    SELECT held.*, NULL::jsonb AS rules, NULL::jsonb AS definitions, NULL::boolean AS erased,
           NULL::text[] AS stored
      FROM held
    UNION ALL
    SELECT NULL::text, NULL::text, NULL::boolean, NULL::text, NULL::bigint, NULL::text, NULL::text,
           NULL::jsonb, NULL::jsonb, NULL::jsonb, NULL::timestamptz, NULL::timestamptz, NULL::jsonb,
           NULL::jsonb,
           (SELECT r.rules FROM identity_rules r WHERE r.id = 1),
           (SELECT coalesce(jsonb_agg(d.definition ORDER BY d.key), '[]'::jsonb) FROM computed_definitions d),
           EXISTS (SELECT 1 FROM tombstones t WHERE t.value_hash = ANY(CAST(:hashes AS text[]))),
           ARRAY(SELECT e.event_id FROM events e WHERE e.event_id = ANY(CAST(:event_ids AS text[])))
    """
).columns(
    traits=postgresql.JSONB,
    aggregates=postgresql.JSONB,
    computed=postgresql.JSONB,
    counts=postgresql.JSONB,
    states=postgresql.JSONB,
    rules=postgresql.JSONB,
    definitions=postgresql.JSONB,
)


@dataclass
class View:
    """What a stretch of events touches, read at once after the locks."""

    holders: Holders
    states: dict[str, dict[str, dict[str, Any]]]
    stored_events: set[str]
    maybe_erased: bool
    rules: Any
    definitions: Any


async def read_view(
    *, session: AsyncSession, keys: Sequence[IdentifierKey], hashes: Sequence[str], event_ids: Sequence[str]
) -> View:
    """Lock and read the holders of plain identifiers, with the configuration, erasures and stored events."""
    rows = await session.execute(
        _VIEW,
        {
            "types": [k.type for k in keys],
            "vals": [k.value for k in keys],
            "hashes": list(hashes),
            "event_ids": list(event_ids),
        },
    )
    view = View(
        holders=Holders(owners={}, profiles={}, counts={}),
        states={},
        stored_events=set(),
        maybe_erased=False,
        rules=None,
        definitions=[],
    )
    for row in rows:
        if row.key_type is None:
            view.rules, view.definitions = row.rules, row.definitions
            view.maybe_erased, view.stored_events = row.erased, set(row.stored)
            continue
        view.holders.owners[IdentifierKey(row.key_type, row.key_value)] = Owner(row.id, row.quarantined)
        view.holders.profiles[row.id] = _profile_of(row)
        view.holders.counts[row.id] = dict(row.counts or {})
        view.states[row.id] = dict(row.states or {})
    return view


# Every write of a stretch in one statement: new profiles, changed profiles, attached
# identifiers, stored events (in order), user-defined states and outbox rows (in order).
# The caller holds the outbox write lock (taken by lock_for_resolution) before any id is drawn.
_WRITE_VIEW = sa.text(
    """
    WITH created AS (
        INSERT INTO profiles (id, id_hash, version, status, traits, aggregates, computed, created_at)
        SELECT u.id, u.h, u.v, 'active', u.t::jsonb, u.a::jsonb, u.c::jsonb, clock_timestamp()
          FROM unnest(CAST(:new_ids AS text[]), CAST(:new_hashes AS text[]), CAST(:new_versions AS bigint[]),
                      CAST(:new_traits AS text[]), CAST(:new_aggregates AS text[]),
                      CAST(:new_computed AS text[])) AS u(id, h, v, t, a, c)
    ),
    saved AS (
        UPDATE profiles AS p
           SET traits = u.t::jsonb, aggregates = u.a::jsonb, computed = u.c::jsonb, version = u.v,
               updated_at = now()
          FROM unnest(CAST(:ids AS text[]), CAST(:versions AS bigint[]), CAST(:traits AS text[]),
                      CAST(:aggregates AS text[]), CAST(:computed AS text[])) AS u(id, v, t, a, c)
         WHERE p.id = u.id
    ),
    attached AS (
        INSERT INTO identifiers (type, value, value_hash, profile_id, event_id)
        SELECT * FROM unnest(CAST(:key_types AS text[]), CAST(:key_values AS text[]),
                             CAST(:key_hashes AS text[]), CAST(:key_profile_ids AS text[]),
                             CAST(:key_event_ids AS text[]))
    ),
    stored AS (
        INSERT INTO events (event_id, profile_id, origin_profile_id, type, name, timestamp, received_at,
                            source_id, properties, traits, identifiers)
        SELECT u.e, u.p, u.p, u.ty, u.n, u.ts, u.r, u.s, u.pr::jsonb, u.tr::jsonb, u.i::jsonb
          FROM unnest(CAST(:event_ids AS text[]), CAST(:event_profile_ids AS text[]),
                      CAST(:event_types AS text[]), CAST(:event_names AS text[]),
                      CAST(:event_times AS timestamptz[]), CAST(:event_received AS timestamptz[]),
                      CAST(:event_sources AS text[]), CAST(:event_properties AS text[]),
                      CAST(:event_traits AS text[]), CAST(:event_identifiers AS text[]))
               WITH ORDINALITY AS u(e, p, ty, n, ts, r, s, pr, tr, i, o)
         ORDER BY u.o
        ON CONFLICT (event_id) DO NOTHING
    ),
    states AS (
        INSERT INTO computed_values (profile_id, key, state, next_change_at)
        SELECT u.p, u.k, u.s::jsonb, u.d
          FROM unnest(CAST(:state_profile_ids AS text[]), CAST(:state_keys AS text[]),
                      CAST(:states AS text[]), CAST(:state_due AS timestamptz[])) AS u(p, k, s, d)
        ON CONFLICT (profile_id, key) DO UPDATE
           SET state = excluded.state, next_change_at = excluded.next_change_at
    )
    INSERT INTO outbox (topic, key, event_id, payload)
    SELECT u.t, u.k, u.e, u.p
      FROM unnest(CAST(:topics AS text[]), CAST(:outbox_keys AS text[]), CAST(:outbox_event_ids AS text[]),
                  CAST(:payloads AS bytea[])) WITH ORDINALITY AS u(t, k, e, p, n)
     ORDER BY u.n
    """
)


@dataclass
class ViewWrites:
    """What a stretch of events writes: rows per table, in the order they were made."""

    created: list[tuple[StoredProfile, str]] = field(default_factory=list)
    changed: list[StoredProfile] = field(default_factory=list)
    attached: list[tuple[str, IdentifierKey, str, str | None]] = field(default_factory=list)
    event_rows: list[dict[str, Any]] = field(default_factory=list)
    states: list[tuple[str, str, dict[str, Any], datetime | None]] = field(default_factory=list)
    outbox: list[tuple[str, Envelope[Any]]] = field(default_factory=list)

    def __bool__(self) -> bool:
        return bool(
            self.created or self.changed or self.attached or self.event_rows or self.states or self.outbox
        )


async def write_view(*, session: AsyncSession, writes: ViewWrites) -> None:
    """Write a stretch's profiles, identifiers, events, states and outbox rows in one statement."""
    if not writes:
        return
    if writes.outbox:
        # Taken already by lock_for_resolution; this only checks so.
        await lock_outbox_writes(session=session)
    created = [_json_columns(profile) for profile, _ in writes.created]
    changed = [_json_columns(profile) for profile in writes.changed]
    rows = writes.event_rows
    await session.execute(
        _WRITE_VIEW,
        {
            "new_ids": [profile.id for profile, _ in writes.created],
            "new_hashes": [id_hash for _, id_hash in writes.created],
            "new_versions": [profile.version for profile, _ in writes.created],
            "new_traits": [d[0] for d in created],
            "new_aggregates": [d[1] for d in created],
            "new_computed": [d[2] for d in created],
            "ids": [profile.id for profile in writes.changed],
            "versions": [profile.version for profile in writes.changed],
            "traits": [d[0] for d in changed],
            "aggregates": [d[1] for d in changed],
            "computed": [d[2] for d in changed],
            "key_types": [k.type for _, k, _, _ in writes.attached],
            "key_values": [k.value for _, k, _, _ in writes.attached],
            "key_hashes": [h for _, _, h, _ in writes.attached],
            "key_profile_ids": [pid for pid, _, _, _ in writes.attached],
            "key_event_ids": [event_id for _, _, _, event_id in writes.attached],
            "event_ids": [r["event_id"] for r in rows],
            "event_profile_ids": [r["profile_id"] for r in rows],
            "event_types": [r["type"] for r in rows],
            "event_names": [r["name"] for r in rows],
            "event_times": [r["timestamp"] for r in rows],
            "event_received": [r["received_at"] for r in rows],
            "event_sources": [r["source_id"] for r in rows],
            "event_properties": [json_text(r["properties"]) for r in rows],
            "event_traits": [json_text(r["traits"]) for r in rows],
            "event_identifiers": [json_text(r["identifiers"]) for r in rows],
            "state_profile_ids": [pid for pid, _, _, _ in writes.states],
            "state_keys": [key for _, key, _, _ in writes.states],
            "states": [json_text(state) for _, _, state, _ in writes.states],
            "state_due": [due for _, _, _, due in writes.states],
            "topics": [topic for topic, _ in writes.outbox],
            "outbox_keys": [envelope.subject for _, envelope in writes.outbox],
            "outbox_event_ids": [envelope.id for _, envelope in writes.outbox],
            "payloads": [envelope.to_bytes() for _, envelope in writes.outbox],
        },
    )


async def lock_profiles(*, session: AsyncSession, profile_ids: Sequence[str]) -> dict[str, StoredProfile]:
    """Lock profiles in id order and return them."""
    if not profile_ids:
        return {}
    rows = await session.execute(
        sa.select(profiles)
        .where(profiles.c.id.in_(sorted(set(profile_ids))))
        .order_by(profiles.c.id)
        .with_for_update()
    )
    return {row.id: _profile_of(row) for row in rows}


async def identifier_counts(
    *, session: AsyncSession, profile_ids: Sequence[str]
) -> dict[str, dict[str, int]]:
    """Return how many identifiers of each type each profile holds."""
    counts: dict[str, dict[str, int]] = {pid: {} for pid in profile_ids}
    if not profile_ids:
        return counts
    rows = await session.execute(
        sa.select(identifiers.c.profile_id, identifiers.c.type, sa.func.count())
        .where(identifiers.c.profile_id.in_(list(profile_ids)))
        .group_by(identifiers.c.profile_id, identifiers.c.type)
    )
    for profile_id, kind, count in rows:
        counts[profile_id][kind] = count
    return counts


async def create_profile(*, session: AsyncSession, profile_id: str, id_hash: str) -> StoredProfile:
    """Insert an empty active profile at version 0."""
    row = (
        await session.execute(
            profiles.insert()
            .values(
                id=profile_id,
                id_hash=id_hash,
                version=0,
                status="active",
                traits={},
                aggregates={},
                computed={},
                created_at=sa.func.clock_timestamp(),
            )
            .returning(*profiles.c)
        )
    ).one()
    return _profile_of(row)


def _json_columns(profile: StoredProfile) -> tuple[str, str, str]:
    return (
        json_text({name: trait.to_json() for name, trait in profile.traits.items()}),
        json_text(profile.aggregates),
        json_text(profile.computed),
    )


async def attach_identifiers(
    *, session: AsyncSession, profile_id: str, keys: Sequence[tuple[IdentifierKey, str]], event_id: str | None
) -> None:
    """Attach new identifiers (key, keyed hash) to a profile; the unique (type, value) index guards races."""
    if not keys:
        return
    await session.execute(
        identifiers.insert(),
        [
            {
                "type": k.type,
                "value": k.value,
                "value_hash": h,
                "profile_id": profile_id,
                "event_id": event_id,
            }
            for k, h in keys
        ],
    )


async def record_links(
    *, session: AsyncSession, key: IdentifierKey, value_hash: str, profile_ids: Sequence[str]
) -> int:
    """Remember that an identifier tied these profiles; return how many profiles it ties in all."""
    await session.execute(
        postgresql.insert(identifier_links)
        .values([{"type": key.type, "value_hash": value_hash, "profile_id": pid} for pid in profile_ids])
        .on_conflict_do_nothing()
    )
    count: int = (
        await session.execute(
            sa.select(sa.func.count()).where(
                identifier_links.c.type == key.type, identifier_links.c.value_hash == value_hash
            )
        )
    ).scalar_one()
    return count


async def quarantine(*, session: AsyncSession, key: IdentifierKey) -> bool:
    """Quarantine an identifier so it never merges again; False when it already was."""
    result = await session.execute(
        identifiers.update()
        .where(
            identifiers.c.type == key.type,
            identifiers.c.value == key.value,
            identifiers.c.quarantined_at.is_(None),
        )
        .values(quarantined_at=sa.func.now())
        .returning(identifiers.c.type)
    )
    return result.first() is not None


async def list_quarantined(
    *, session: AsyncSession, after: tuple[str, str] | None, limit: int
) -> list[dict[str, Any]]:
    """Return quarantined identifiers with how many profiles each tried to tie."""
    query = (
        sa.select(
            identifiers.c.type,
            identifiers.c.value,
            identifiers.c.profile_id,
            identifiers.c.quarantined_at,
            sa.select(sa.func.count())
            .where(
                identifier_links.c.type == identifiers.c.type,
                identifier_links.c.value_hash == identifiers.c.value_hash,
            )
            .scalar_subquery()
            .label("profiles"),
        )
        .where(identifiers.c.quarantined_at.is_not(None))
        .order_by(identifiers.c.type, identifiers.c.value)
        .limit(limit)
    )
    if after is not None:
        query = query.where(sa.tuple_(identifiers.c.type, identifiers.c.value) > sa.tuple_(*after))
    return [
        {
            "type": r.type,
            "value": r.value,
            "profile_id": r.profile_id,
            "profiles_tied": r.profiles,
            "quarantined_at": r.quarantined_at.isoformat(),
        }
        for r in await session.execute(query)
    ]


async def resolve_profile_id(*, session: AsyncSession, profile_id: str) -> str | None:
    """Return the live profile a (possibly merged-away) profile id stands for."""
    row = (
        await session.execute(
            sa.select(profiles.c.id, profiles.c.merged_into).where(profiles.c.id == profile_id)
        )
    ).first()
    if row is None:
        return None
    return str(row.merged_into or row.id)


async def resolve_identifier(*, session: AsyncSession, key: IdentifierKey) -> str | None:
    """Return the profile an identifier belongs to."""
    if key.type == PROFILE_ID:
        return await resolve_profile_id(session=session, profile_id=key.value)
    found = await session.execute(
        sa.select(identifiers.c.profile_id).where(
            identifiers.c.type == key.type, identifiers.c.value == key.value
        )
    )
    return found.scalar_one_or_none()


async def identifiers_of_profile(*, session: AsyncSession, profile_id: str) -> list[dict[str, Any]]:
    """Return a profile's identifiers with when they were first seen and whether quarantined."""
    rows = await session.execute(
        sa.select(identifiers)
        .where(identifiers.c.profile_id == profile_id)
        .order_by(identifiers.c.type, identifiers.c.value)
    )
    return [
        {
            "type": r.type,
            "value": r.value,
            "first_seen_at": r.first_seen_at.isoformat(),
            "event_id": r.event_id,
            "quarantined": r.quarantined_at is not None,
        }
        for r in rows
    ]


async def load_profile(*, session: AsyncSession, profile_id: str) -> StoredProfile | None:
    """Load a profile with its identifiers."""
    row = (await session.execute(sa.select(profiles).where(profiles.c.id == profile_id))).first()
    if row is None:
        return None
    profile = _profile_of(row)
    keys = await session.execute(
        sa.select(identifiers.c.type, identifiers.c.value)
        .where(identifiers.c.profile_id == profile_id)
        .order_by(identifiers.c.type, identifiers.c.value)
    )
    profile.identifiers = [IdentifierKey(k.type, k.value) for k in keys]
    return profile


# One statement for a profile read: the profile, its identifiers, and the states (with their
# definitions) of the computed traits a backfill holds; built once, so a lookup costs one round
# trip and no statement building.
_listed = identifiers.alias("listed")
_found = identifiers.alias("found")
_standing = profiles.alias("standing")
_READ = sa.select(
    profiles,
    sa.select(
        sa.func.jsonb_agg(
            postgresql.aggregate_order_by(
                sa.func.jsonb_build_array(_listed.c.type, _listed.c.value), _listed.c.type, _listed.c.value
            )
        )
    )
    .where(_listed.c.profile_id == profiles.c.id)
    .scalar_subquery()
    .label("identifier_keys"),
    sa.select(
        sa.func.jsonb_object_agg(
            computed_values.c.key,
            sa.func.jsonb_build_array(computed_values.c.state, computed_definitions.c.definition),
        )
    )
    .select_from(
        computed_values.outerjoin(computed_definitions, computed_definitions.c.key == computed_values.c.key)
    )
    .where(computed_values.c.profile_id == profiles.c.id)
    .scalar_subquery()
    .label("held_states"),
)
_READ_BY_IDENTIFIER = _READ.where(
    profiles.c.id
    == sa.select(_found.c.profile_id)
    .where(_found.c.type == sa.bindparam("type"), _found.c.value == sa.bindparam("value"))
    .scalar_subquery()
)
_READ_BY_ID = _READ.where(
    profiles.c.id
    == sa.select(sa.func.coalesce(_standing.c.merged_into, _standing.c.id))
    .where(_standing.c.id == sa.bindparam("id"))
    .scalar_subquery()
)


@dataclass
class HeldState:
    """The state of a computed trait a profile holds, with the trait's definition (None when gone)."""

    state: dict[str, Any]
    definition: Definition | None


async def read_profile(
    *, session: AsyncSession, key: IdentifierKey | None = None, profile_id: str | None = None
) -> tuple[StoredProfile, dict[str, HeldState]] | None:
    """Load the live profile an identifier (or a possibly merged-away id) stands for, with its
    identifiers and the computed-trait states it holds, in one statement; None when none."""
    standing = key.value if key is not None else profile_id
    if key is not None and key.type != PROFILE_ID:
        statement, params = _READ_BY_IDENTIFIER, {"type": key.type, "value": key.value}
    elif standing is not None:
        statement, params = _READ_BY_ID, {"id": standing}
    else:
        return None
    row = (await session.execute(statement, params)).first()
    if row is None:
        return None
    profile = _profile_of(row)
    profile.identifiers = [IdentifierKey(t, v) for t, v in row.identifier_keys or ()]
    held = {
        name: HeldState(state, None if definition is None else Definition.from_json(definition))
        for name, (state, definition) in (row.held_states or {}).items()
    }
    return profile, held


async def held_states(*, session: AsyncSession, profile_id: str) -> dict[str, HeldState]:
    """Return the computed-trait states a profile holds, each with its trait's definition."""
    rows = await session.execute(
        sa.select(computed_values.c.key, computed_values.c.state, computed_definitions.c.definition)
        .select_from(
            computed_values.outerjoin(
                computed_definitions, computed_definitions.c.key == computed_values.c.key
            )
        )
        .where(computed_values.c.profile_id == profile_id)
    )
    return {
        r.key: HeldState(r.state, None if r.definition is None else Definition.from_json(r.definition))
        for r in rows
    }


async def save_profile(
    *, session: AsyncSession, profile: StoredProfile, status: str = "active", merged_into: str | None = None
) -> int:
    """Write a profile's traits and computed state and bump its version; return the new version."""
    statement = (
        profiles.update()
        .where(profiles.c.id == profile.id)
        .values(
            traits={name: trait.to_json() for name, trait in profile.traits.items()},
            aggregates=profile.aggregates,
            computed=profile.computed,
            status=status,
            merged_into=merged_into,
            version=profiles.c.version + 1,
            updated_at=sa.func.now(),
        )
        .returning(profiles.c.version)
    )
    version: int = (await session.execute(statement)).scalar_one()
    profile.version = version
    return version
