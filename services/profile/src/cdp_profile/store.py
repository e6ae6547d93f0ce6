"""Tables and queries of the profile service, in its own schema: the identity graph, the merge
ledger, profiles with traits and computed traits, the event store, definitions and tombstones."""

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

from cdp_profile.domain.computed import Definition, StoredEvent
from cdp_profile.domain.identity import PROFILE_ID, IdentifierKey, IdentityRules
from cdp_profile.domain.traits import TraitValue, common_traits

metadata = sa.MetaData()

profiles = sa.Table(
    "profiles",
    metadata,
    sa.Column("id", sa.Text, primary_key=True),
    sa.Column("id_hash", sa.Text, nullable=False),
    sa.Column("version", sa.BigInteger, nullable=False),
    sa.Column("status", sa.Text, nullable=False),
    sa.Column("merged_into", sa.Text),
    sa.Column("traits", postgresql.JSONB, nullable=False),
    sa.Column("aggregates", postgresql.JSONB, nullable=False),
    sa.Column("computed", postgresql.JSONB, nullable=False),
    sa.Column("created_at", sa.DateTime(timezone=True), nullable=False, server_default=sa.func.now()),
    sa.Column("updated_at", sa.DateTime(timezone=True), nullable=False, server_default=sa.func.now()),
)

identifiers = sa.Table(
    "identifiers",
    metadata,
    sa.Column("type", sa.Text, primary_key=True),
    sa.Column("value", sa.Text, primary_key=True),
    sa.Column("value_hash", sa.Text, nullable=False),
    sa.Column("profile_id", sa.Text, nullable=False),
    sa.Column("event_id", sa.Text),
    sa.Column("quarantined_at", sa.DateTime(timezone=True)),
    sa.Column("first_seen_at", sa.DateTime(timezone=True), nullable=False, server_default=sa.func.now()),
)

identifier_links = sa.Table(
    "identifier_links",
    metadata,
    sa.Column("type", sa.Text, primary_key=True),
    sa.Column("value_hash", sa.Text, primary_key=True),
    sa.Column("profile_id", sa.Text, primary_key=True),
)

merges = sa.Table(
    "merges",
    metadata,
    sa.Column("seq", sa.BigInteger, sa.Identity(), primary_key=True),
    sa.Column("merge_id", sa.Text, nullable=False),
    sa.Column("kind", sa.Text, nullable=False),
    sa.Column("survivor_id", sa.Text, nullable=False),
    sa.Column("absorbed_id", sa.Text, nullable=False),
    sa.Column("rule", sa.Text, nullable=False),
    sa.Column("reason", postgresql.JSONB, nullable=False),
    sa.Column("event_id", sa.Text),
    sa.Column("identifiers", postgresql.JSONB, nullable=False),
    sa.Column("at", sa.DateTime(timezone=True), nullable=False, server_default=sa.func.now()),
)

events = sa.Table(
    "events",
    metadata,
    sa.Column("seq", sa.BigInteger, sa.Identity(), primary_key=True),
    sa.Column("event_id", sa.Text, nullable=False, unique=True),
    sa.Column("profile_id", sa.Text, nullable=False),
    sa.Column("origin_profile_id", sa.Text, nullable=False),
    sa.Column("type", sa.Text, nullable=False),
    sa.Column("name", sa.Text),
    sa.Column("timestamp", sa.DateTime(timezone=True), nullable=False),
    sa.Column("received_at", sa.DateTime(timezone=True), nullable=False),
    sa.Column("source_id", sa.Text, nullable=False),
    sa.Column("properties", postgresql.JSONB, nullable=False),
    sa.Column("traits", postgresql.JSONB, nullable=False),
    sa.Column("identifiers", postgresql.JSONB, nullable=False),
)

computed_definitions = sa.Table(
    "computed_definitions",
    metadata,
    sa.Column("key", sa.Text, primary_key=True),
    sa.Column("definition", postgresql.JSONB, nullable=False),
    sa.Column("created_at", sa.DateTime(timezone=True), nullable=False, server_default=sa.func.now()),
    sa.Column("backfilled_profiles", sa.BigInteger, nullable=False, server_default="0"),
    sa.Column("job_id", sa.Text),
)

computed_values = sa.Table(
    "computed_values",
    metadata,
    sa.Column("profile_id", sa.Text, primary_key=True),
    sa.Column("key", sa.Text, primary_key=True),
    sa.Column("state", postgresql.JSONB, nullable=False),
    sa.Column("next_change_at", sa.DateTime(timezone=True)),
)

tombstones = sa.Table(
    "tombstones",
    metadata,
    sa.Column("value_hash", sa.Text, primary_key=True),
    sa.Column("request_id", sa.Text, nullable=False),
    sa.Column("erased_at", sa.DateTime(timezone=True), nullable=False, server_default=sa.func.now()),
)

identity_rules = sa.Table(
    "identity_rules",
    metadata,
    sa.Column("id", sa.Integer, primary_key=True),
    sa.Column("rules", postgresql.JSONB, nullable=False),
    sa.Column("updated_at", sa.DateTime(timezone=True), nullable=False, server_default=sa.func.now()),
)

kept_apart = sa.Table(
    "kept_apart",
    metadata,
    sa.Column("profile_id", sa.Text, primary_key=True),
    sa.Column("other_id", sa.Text, primary_key=True),
    sa.Column("merge_id", sa.Text, nullable=False),
    sa.Column("at", sa.DateTime(timezone=True), nullable=False, server_default=sa.func.now()),
)

# Consumers hold this advisory lock shared while they read the definitions; defining a new
# computed trait holds it exclusively, so its backfill sees every event stored before it.
DEFINITIONS_LOCK = 0x70726F66696C65
# What a transaction reads of the rules and definitions, kept for the rest of it.
CONFIGURATION = "profile_configuration"


@dataclass
class StoredProfile:
    """A profile as held: version, status, traits with provenance, computed state and values."""

    id: str
    version: int
    status: str
    merged_into: str | None
    traits: dict[str, TraitValue]
    aggregates: dict[str, Any]
    computed: dict[str, Any]
    created_at: datetime
    updated_at: datetime
    identifiers: list[IdentifierKey] = field(default_factory=list)


def _profile_of(row: Any) -> StoredProfile:
    return StoredProfile(
        id=row.id,
        version=row.version,
        status=row.status,
        merged_into=row.merged_into,
        traits={name: TraitValue.from_json(raw) for name, raw in row.traits.items()},
        aggregates=row.aggregates,
        computed=row.computed,
        created_at=row.created_at,
        updated_at=row.updated_at,
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


# --- the view of a batch of events: one statement to lock, one to read, one to write -------------

# The writers' lock (with the relay's wake-up), then the shared definitions lock: the order
# every writer of the service takes them in, so replicas and definers cannot deadlock.
_LOCK_FOR_RESOLUTION = sa.text(
    f"SELECT {OUTBOX_WRITE_LOCK}, pg_advisory_xact_lock_shared(CAST(:definitions_lock AS bigint))"
)


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


# --- merges --------------------------------------------------------------------------------------


async def move_profile_contents(
    *, session: AsyncSession, absorbed_id: str, survivor_id: str
) -> list[IdentifierKey]:
    """Move identifiers, events and earlier merged-away ids of one profile to another; return moved keys."""
    moved = await session.execute(
        identifiers.update()
        .where(identifiers.c.profile_id == absorbed_id)
        .values(profile_id=survivor_id)
        .returning(identifiers.c.type, identifiers.c.value)
    )
    keys = sorted(IdentifierKey(r.type, r.value) for r in moved)
    await session.execute(
        events.update().where(events.c.profile_id == absorbed_id).values(profile_id=survivor_id)
    )
    await session.execute(
        profiles.update().where(profiles.c.merged_into == absorbed_id).values(merged_into=survivor_id)
    )
    await _carry_apart(session=session, absorbed_id=absorbed_id, survivor_id=survivor_id)
    return keys


async def _carry_apart(*, session: AsyncSession, absorbed_id: str, survivor_id: str) -> None:
    """Whoever was kept apart from the absorbed profile stays apart from its survivor."""
    rows = (
        await session.execute(
            kept_apart.delete()
            .where(sa.or_(kept_apart.c.profile_id == absorbed_id, kept_apart.c.other_id == absorbed_id))
            .returning(kept_apart.c.profile_id, kept_apart.c.other_id, kept_apart.c.merge_id)
        )
    ).all()
    carried = {
        (
            survivor_id if r.profile_id == absorbed_id else r.profile_id,
            survivor_id if r.other_id == absorbed_id else r.other_id,
        ): r.merge_id
        for r in rows
    }
    await keep_apart_pairs(session=session, pairs=[(a, b, m) for (a, b), m in carried.items() if a != b])


async def keep_apart_pairs(*, session: AsyncSession, pairs: Sequence[tuple[str, str, str]]) -> None:
    """Keep (profile, other, merge id) pairs apart, in both directions."""
    rows = [
        {"profile_id": x, "other_id": y, "merge_id": merge_id}
        for a, b, merge_id in pairs
        for x, y in ((a, b), (b, a))
    ]
    if rows:
        await session.execute(postgresql.insert(kept_apart).on_conflict_do_nothing(), rows)


async def forget_apart(*, session: AsyncSession, profile_ids: Sequence[str]) -> None:
    """Stop keeping these profiles apart from one another (an operator merged them)."""
    await session.execute(
        kept_apart.delete().where(
            kept_apart.c.profile_id.in_(list(profile_ids)), kept_apart.c.other_id.in_(list(profile_ids))
        )
    )


async def apart_among(*, session: AsyncSession, profile_ids: Sequence[str]) -> set[frozenset[str]]:
    """Return the pairs among these profiles that an operator's split keeps apart."""
    if len(profile_ids) < 2:
        return set()
    rows = await session.execute(
        sa.select(kept_apart.c.profile_id, kept_apart.c.other_id).where(
            kept_apart.c.profile_id.in_(list(profile_ids)), kept_apart.c.other_id.in_(list(profile_ids))
        )
    )
    return {frozenset((r.profile_id, r.other_id)) for r in rows}


async def append_ledger(
    *,
    session: AsyncSession,
    merge_id: str,
    kind: str,
    survivor_id: str,
    absorbed_id: str,
    rule: str,
    reason: dict[str, Any],
    event_id: str | None,
    moved: Sequence[IdentifierKey],
) -> None:
    """Append one row to the merge ledger."""
    await session.execute(
        merges.insert().values(
            merge_id=merge_id,
            kind=kind,
            survivor_id=survivor_id,
            absorbed_id=absorbed_id,
            rule=rule,
            reason=reason,
            event_id=event_id,
            identifiers=[{"type": k.type, "value": k.value} for k in moved],
        )
    )


async def ledger_of(*, session: AsyncSession, profile_ids: Sequence[str]) -> list[dict[str, Any]]:
    """Return the ledger rows that involve any of the profiles, oldest first."""
    rows = await session.execute(
        sa.select(merges)
        .where(
            sa.or_(merges.c.survivor_id.in_(list(profile_ids)), merges.c.absorbed_id.in_(list(profile_ids)))
        )
        .order_by(merges.c.seq)
    )
    return [
        {
            "merge_id": r.merge_id,
            "kind": r.kind,
            "survivor_id": r.survivor_id,
            "absorbed_id": r.absorbed_id,
            "rule": r.rule,
            "reason": r.reason,
            "event_id": r.event_id,
            "identifiers": r.identifiers,
            "at": r.at.isoformat(),
        }
        for r in rows
    ]


async def ledger_entry(*, session: AsyncSession, merge_id: str) -> dict[str, Any] | None:
    """Return a merge and whether it was split since."""
    rows = (
        await session.execute(sa.select(merges).where(merges.c.merge_id == merge_id).order_by(merges.c.seq))
    ).all()
    merge = next((r for r in rows if r.kind == "merge"), None)
    if merge is None:
        return None
    return {
        "merge_id": merge.merge_id,
        "survivor_id": merge.survivor_id,
        "absorbed_id": merge.absorbed_id,
        "seq": merge.seq,
        "identifiers": [IdentifierKey(i["type"], i["value"]) for i in merge.identifiers],
        "split": any(r.kind == "split" for r in rows),
    }


async def family_of(*, session: AsyncSession, profile_id: str, before_seq: int) -> list[str]:
    """Return the profile and every profile merged into it (transitively) before a ledger position, not split."""
    rows = (await session.execute(sa.select(merges).order_by(merges.c.seq))).all()
    split = {r.merge_id for r in rows if r.kind == "split"}
    family = {profile_id}
    for row in rows:
        if (
            row.kind == "merge"
            and row.seq < before_seq
            and row.merge_id not in split
            and row.survivor_id in family
        ):
            family.add(row.absorbed_id)
    return sorted(family)


async def move_back(
    *,
    session: AsyncSession,
    survivor_id: str,
    restored_id: str,
    family: Sequence[str],
    keys: Sequence[IdentifierKey],
) -> None:
    """Give a restored profile back its family's events, their identifiers and its merged-away ids."""
    await session.execute(
        events.update()
        .where(events.c.profile_id == survivor_id, events.c.origin_profile_id.in_(list(family)))
        .values(profile_id=restored_id)
    )
    own_events = sa.select(events.c.event_id).where(events.c.profile_id == restored_id)
    condition: sa.ColumnElement[bool] = identifiers.c.event_id.in_(own_events)
    if keys:
        condition = sa.or_(
            condition,
            sa.tuple_(identifiers.c.type, identifiers.c.value).in_([(k.type, k.value) for k in keys]),
        )
    await session.execute(
        identifiers.update()
        .where(identifiers.c.profile_id == survivor_id, condition)
        .values(profile_id=restored_id)
    )
    others = [pid for pid in family if pid != restored_id]
    if others:
        await session.execute(
            profiles.update().where(profiles.c.id.in_(others)).values(merged_into=restored_id)
        )


# --- event store ------------------------------------------------------------------------------


def event_row(
    *,
    event_id: str,
    profile_id: str,
    event: StoredEvent,
    received_at: datetime,
    source_id: str,
    traits: dict[str, Any],
    keys: Sequence[IdentifierKey],
) -> dict[str, Any]:
    """Return the event store's row of one event of a profile."""
    return {
        "event_id": event_id,
        "profile_id": profile_id,
        "origin_profile_id": profile_id,
        "type": event.type,
        "name": event.name,
        "timestamp": event.timestamp,
        "received_at": received_at,
        "source_id": source_id,
        "properties": event.properties,
        "traits": traits,
        "identifiers": [{"type": k.type, "value": k.value} for k in keys],
    }


async def store_event(
    *,
    session: AsyncSession,
    event_id: str,
    profile_id: str,
    event: StoredEvent,
    received_at: datetime,
    source_id: str,
    traits: dict[str, Any],
    keys: Sequence[IdentifierKey],
) -> bool:
    """Store an event of a profile once; False when the store already held it (a replay)."""
    row = event_row(
        event_id=event_id,
        profile_id=profile_id,
        event=event,
        received_at=received_at,
        source_id=source_id,
        traits=traits,
        keys=keys,
    )
    statement = (
        postgresql.insert(events)
        .values(**row)
        .on_conflict_do_nothing(index_elements=[events.c.event_id])
        .returning(events.c.seq)
    )
    return (await session.execute(statement)).first() is not None


def _stored_event(row: Any) -> StoredEvent:
    return StoredEvent(
        event_id=row.event_id,
        type=row.type,
        name=row.name,
        timestamp=row.timestamp,
        properties=row.properties,
    )


async def events_for_fold(
    *, session: AsyncSession, profile_id: str, name: str | None = None, since: datetime | None = None
) -> list[StoredEvent]:
    """Return a profile's events (optionally one name, optionally since a time) in time order."""
    query = sa.select(
        events.c.event_id, events.c.type, events.c.name, events.c.timestamp, events.c.properties
    ).where(events.c.profile_id == profile_id)
    if name is not None:
        query = query.where(events.c.name == name)
    if since is not None:
        query = query.where(events.c.timestamp > since)
    rows = await session.execute(query.order_by(events.c.timestamp, events.c.event_id))
    return [_stored_event(r) for r in rows]


async def events_of_profiles(
    *, session: AsyncSession, profile_ids: Sequence[str], names: Sequence[str] | None, since: datetime
) -> dict[str, list[StoredEvent]]:
    """Return the events of many profiles since a time (optionally only some names), per profile."""
    found: dict[str, list[StoredEvent]] = {pid: [] for pid in profile_ids}
    if not profile_ids:
        return found
    query = sa.select(
        events.c.profile_id,
        events.c.event_id,
        events.c.type,
        events.c.name,
        events.c.timestamp,
        events.c.properties,
    ).where(events.c.profile_id.in_(list(profile_ids)), events.c.timestamp > since)
    if names is not None:
        query = query.where(events.c.name.in_(list(names)))
    for row in await session.execute(query):
        found[row.profile_id].append(_stored_event(row))
    return found


async def asserted_traits(
    *, session: AsyncSession, profile_id: str
) -> list[tuple[dict[str, Any], str, str, datetime]]:
    """Return the traits each of a profile's events asserted, with provenance."""
    rows = await session.execute(
        sa.select(events.c.traits, events.c.source_id, events.c.event_id, events.c.timestamp).where(
            events.c.profile_id == profile_id, events.c.traits != sa.cast({}, postgresql.JSONB)
        )
    )
    return [(r.traits, r.source_id, r.event_id, r.timestamp) for r in rows]


async def list_events(
    *,
    session: AsyncSession,
    profile_id: str,
    event_type: str | None,
    name: str | None,
    since: datetime | None,
    until: datetime | None,
    after: tuple[datetime, int] | None,
    limit: int,
) -> list[dict[str, Any]]:
    """Return a page of a profile's events, newest first, filtered by type, name and time."""
    query = sa.select(events).where(events.c.profile_id == profile_id)
    if event_type is not None:
        query = query.where(events.c.type == event_type)
    if name is not None:
        query = query.where(events.c.name == name)
    if since is not None:
        query = query.where(events.c.timestamp >= since)
    if until is not None:
        query = query.where(events.c.timestamp < until)
    if after is not None:
        query = query.where(sa.tuple_(events.c.timestamp, events.c.seq) < sa.tuple_(*after))
    rows = await session.execute(query.order_by(events.c.timestamp.desc(), events.c.seq.desc()).limit(limit))
    return [
        {
            "seq": r.seq,
            "event_id": r.event_id,
            "type": r.type,
            "name": r.name,
            "timestamp": r.timestamp,
            "received_at": r.received_at.isoformat(),
            "source_id": r.source_id,
            "properties": r.properties,
            "traits": r.traits,
            "identifiers": r.identifiers,
        }
        for r in rows
    ]


# --- computed traits -----------------------------------------------------------------------------


async def defined_states(*, session: AsyncSession, profile_id: str) -> dict[str, dict[str, Any]]:
    """Return the state of every user-defined computed trait of a profile."""
    rows = await session.execute(
        sa.select(computed_values.c.key, computed_values.c.state).where(
            computed_values.c.profile_id == profile_id
        )
    )
    return {r.key: r.state for r in rows}


async def save_defined_states(
    *, session: AsyncSession, profile_id: str, states: dict[str, tuple[dict[str, Any], datetime | None]]
) -> None:
    """Write the state (and next window change) of user-defined computed traits of a profile."""
    if not states:
        return
    statement = postgresql.insert(computed_values).values(
        [
            {"profile_id": profile_id, "key": key, "state": state, "next_change_at": due}
            for key, (state, due) in states.items()
        ]
    )
    await session.execute(
        statement.on_conflict_do_update(
            index_elements=[computed_values.c.profile_id, computed_values.c.key],
            set_={"state": statement.excluded.state, "next_change_at": statement.excluded.next_change_at},
        )
    )


async def delete_defined_states(*, session: AsyncSession, profile_id: str) -> None:
    """Forget a profile's user-defined states (its events moved elsewhere)."""
    await session.execute(computed_values.delete().where(computed_values.c.profile_id == profile_id))


async def insert_definition(*, session: AsyncSession, definition: Definition, job_id: str) -> bool:
    """Store a new definition, marked as building by a job, under the exclusive definitions lock;
    False when the key exists.

    Taking the lock exclusively waits for every transaction that read the definitions before,
    so every event stored after this commits is folded by the event flow, and every event
    stored before it is in the store for the backfill to find.
    """
    await session.execute(sa.select(sa.func.pg_advisory_xact_lock(DEFINITIONS_LOCK)))
    result = await session.execute(
        postgresql.insert(computed_definitions)
        .values(key=definition.key, definition={**definition.to_json(), "building": True}, job_id=job_id)
        .on_conflict_do_nothing()
        .returning(computed_definitions.c.key)
    )
    forget_for_transaction(session, CONFIGURATION)
    return result.first() is not None


def _definition_body(row: Any) -> dict[str, Any]:
    stored = dict(row.definition)
    building = bool(stored.pop("building", False))
    return {
        **stored,
        "status": "building" if building else "ready",
        "job_id": row.job_id,
        "created_at": row.created_at.isoformat(),
        "backfilled_profiles": row.backfilled_profiles,
    }


async def list_definitions(*, session: AsyncSession) -> list[dict[str, Any]]:
    """Return every user-defined computed trait with its status."""
    rows = await session.execute(sa.select(computed_definitions).order_by(computed_definitions.c.key))
    return [_definition_body(r) for r in rows]


async def get_definition(*, session: AsyncSession, key: str) -> dict[str, Any] | None:
    """Return one user-defined computed trait with its status, or None."""
    row = (
        await session.execute(sa.select(computed_definitions).where(computed_definitions.c.key == key))
    ).first()
    return None if row is None else _definition_body(row)


async def load_definition(*, session: AsyncSession, key: str) -> Definition | None:
    """Return the parsed definition of a key, or None."""
    raw = await session.scalar(
        sa.select(computed_definitions.c.definition).where(computed_definitions.c.key == key)
    )
    return None if raw is None else Definition.from_json(raw)


async def mark_backfilled(*, session: AsyncSession, key: str, profiles_count: int) -> None:
    """Mark a definition as built, under the exclusive definitions lock, with the profiles it touched."""
    await session.execute(sa.select(sa.func.pg_advisory_xact_lock(DEFINITIONS_LOCK)))
    await session.execute(
        computed_definitions.update()
        .where(computed_definitions.c.key == key)
        .values(
            definition=computed_definitions.c.definition.op("-")(sa.literal("building", sa.Text)),
            backfilled_profiles=profiles_count,
        )
    )
    forget_for_transaction(session, CONFIGURATION)


async def count_profiles(*, session: AsyncSession) -> int:
    """Return how many profiles there are (of any status): the items a backfill walks through."""
    return int(await session.scalar(sa.select(sa.func.count()).select_from(profiles)) or 0)


async def next_profile_range(*, session: AsyncSession, after: str, limit: int) -> tuple[int, str | None]:
    """Return how many of the next `limit` profile ids (of any status) there are after one, and the last."""
    following = (
        sa.select(profiles.c.id).where(profiles.c.id > after).order_by(profiles.c.id).limit(limit).subquery()
    )
    row = (await session.execute(sa.select(sa.func.count(), sa.func.max(following.c.id)))).one()
    return int(row[0]), row[1]


def _selected_events(definition: Definition, *, low: str, high: str, since: datetime | None) -> Any:
    """The events of the profiles in (low, high] that a definition's name, type and window select."""
    conditions = [events.c.profile_id > low, events.c.profile_id <= high]
    if definition.event_name is not None:
        conditions.append(events.c.name == definition.event_name)
    if definition.event_type is not None:
        conditions.append(events.c.type == definition.event_type)
    if since is not None:
        conditions.append(events.c.timestamp > since)
    return sa.and_(*conditions)


# Python's isoformat of a UTC time, which the folds write into a state's first and last stamps.
_ISO = """(to_char({t} AT TIME ZONE 'UTC', 'YYYY-MM-DD"T"HH24:MI:SS')
          || CASE WHEN date_part('microseconds', {t})::bigint % 1000000 = 0 THEN ''
                  ELSE to_char({t} AT TIME ZONE 'UTC', '.US') END || '+00:00')"""

# One step of a count backfill, set-based: count each profile's selected events, write the
# states `fold_defined` would reach, and return the profiles that published another value
# (the caller publishes the new one).
_BACKFILL_COUNTS = """
    WITH counted AS (
        SELECT e.profile_id, count(*) AS n,
               min(e.timestamp) AS first_at,
               (array_agg(e.event_id ORDER BY e.timestamp, e.event_id COLLATE "C"))[1] AS first_id,
               max(e.timestamp) AS last_at,
               (array_agg(e.event_id ORDER BY e.timestamp DESC, e.event_id COLLATE "C" DESC))[1] AS last_id
          FROM events e
         WHERE e.profile_id > :low AND e.profile_id <= :high {conditions}
         GROUP BY e.profile_id
    ), live AS (
        SELECT c.*, p.computed -> CAST(:key AS text) AS current
          FROM counted c JOIN profiles p ON p.id = c.profile_id AND p.status = 'active'
    ), saved AS (
        INSERT INTO computed_values (profile_id, key, state, next_change_at)
        SELECT l.profile_id, CAST(:key AS text),
               jsonb_build_object(
                   'count', l.n,
                   'first', jsonb_build_array({first_iso}, l.first_id, NULL),
                   'last', jsonb_build_array({last_iso}, l.last_id, NULL)),
               l.first_at + CAST(:window AS interval)
          FROM live l
        ON CONFLICT (profile_id, key) DO UPDATE SET state = excluded.state, next_change_at = excluded.next_change_at
        RETURNING 1
    )
    SELECT l.profile_id, l.n, (SELECT count(*) FROM saved) AS holding
      FROM live l
     WHERE l.current IS NOT NULL AND l.current IS DISTINCT FROM to_jsonb(l.n)
    UNION ALL
    SELECT NULL, NULL, (SELECT count(*) FROM saved)
"""


@dataclass(frozen=True)
class CountedBackfill:
    """What one set-based step of a count backfill did."""

    holding: int
    changed: dict[str, int]


async def backfill_counts(
    *, session: AsyncSession, definition: Definition, low: str, high: str, since: datetime | None
) -> CountedBackfill:
    """Backfill a count without property or filters for the profiles in (low, high] in one statement."""
    conditions = ""
    params: dict[str, Any] = {"low": low, "high": high, "key": definition.key}
    if definition.event_name is not None:
        conditions += " AND e.name = :name"
        params["name"] = definition.event_name
    if definition.event_type is not None:
        conditions += " AND e.type = :type"
        params["type"] = definition.event_type
    if since is not None:
        conditions += " AND e.timestamp > :since"
        params["since"] = since
    params["window"] = definition.window
    statement = _BACKFILL_COUNTS.format(
        conditions=conditions, first_iso=_ISO.format(t="l.first_at"), last_iso=_ISO.format(t="l.last_at")
    )
    rows = (await session.execute(sa.text(statement), params)).all()
    return CountedBackfill(
        holding=int(rows[-1].holding),
        changed={r.profile_id: int(r.n) for r in rows if r.profile_id is not None},
    )


async def selected_events(
    *, session: AsyncSession, definition: Definition, low: str, high: str, since: datetime | None
) -> dict[str, list[StoredEvent]]:
    """Return the events of every profile in (low, high] that a definition's name, type and window select."""
    query = (
        sa.select(
            events.c.profile_id,
            events.c.event_id,
            events.c.type,
            events.c.name,
            events.c.timestamp,
            events.c.properties,
        )
        .where(_selected_events(definition, low=low, high=high, since=since))
        .order_by(events.c.profile_id, events.c.timestamp, events.c.event_id)
    )
    found: dict[str, list[StoredEvent]] = {}
    for row in await session.execute(query):
        found.setdefault(row.profile_id, []).append(_stored_event(row))
    return found


async def published_values(
    *, session: AsyncSession, profile_ids: Sequence[str], key: str
) -> dict[str, tuple[bool, Any]]:
    """Return, per active profile, whether it holds (and so has published) a value of a key, and the value."""
    if not profile_ids:
        return {}
    value = profiles.c.computed[key]
    rows = await session.execute(
        sa.select(profiles.c.id, value.is_not(None).label("known"), value.label("value")).where(
            profiles.c.id.in_(list(profile_ids)), profiles.c.status == "active"
        )
    )
    return {r.id: (bool(r.known), r.value) for r in rows}


_SAVE_STATES = sa.text(
    """
    INSERT INTO computed_values (profile_id, key, state, next_change_at)
    SELECT u.id, CAST(:key AS text), u.state::jsonb, u.due
      FROM unnest(CAST(:ids AS text[]), CAST(:states AS text[]), CAST(:dues AS timestamptz[])) AS u(id, state, due)
    ON CONFLICT (profile_id, key) DO UPDATE SET state = excluded.state, next_change_at = excluded.next_change_at
    """
)


async def save_states_of_key(
    *, session: AsyncSession, key: str, states: Sequence[tuple[str, dict[str, Any], datetime | None]]
) -> None:
    """Write one trait's state for many profiles in one statement."""
    if not states:
        return
    await session.execute(
        _SAVE_STATES,
        {
            "key": key,
            "ids": [s[0] for s in states],
            "states": [json_text(s[1]) for s in states],
            "dues": [s[2] for s in states],
        },
    )


async def trait_states(
    *, session: AsyncSession, key: str, after: str, limit: int
) -> list[tuple[str, dict[str, Any]]]:
    """Return the state of one computed trait of active profiles that hold one, in profile id order."""
    rows = await session.execute(
        sa.select(computed_values.c.profile_id, computed_values.c.state)
        .join(profiles, profiles.c.id == computed_values.c.profile_id)
        .where(
            computed_values.c.key == key,
            computed_values.c.profile_id > after,
            profiles.c.status == "active",
        )
        .order_by(computed_values.c.profile_id)
        .limit(limit)
    )
    return [(r.profile_id, r.state) for r in rows]


async def due_profiles(*, session: AsyncSession, now: datetime, limit: int) -> list[str]:
    """Return profiles with a windowed trait whose oldest event has aged out by now.

    States of a deleted trait, until its deletion job has removed them, are never due.
    """
    rows = await session.execute(
        sa.select(computed_values.c.profile_id)
        .where(
            computed_values.c.next_change_at <= now,
            computed_values.c.key.in_(sa.select(computed_definitions.c.key)),
        )
        .group_by(computed_values.c.profile_id)
        .order_by(sa.func.min(computed_values.c.next_change_at))
        .limit(limit)
    )
    return list(rows.scalars())


async def lock_profile_if_free(*, session: AsyncSession, profile_id: str) -> StoredProfile | None:
    """Lock a live profile unless another transaction holds it."""
    row = (
        await session.execute(
            sa.select(profiles)
            .where(profiles.c.id == profile_id, profiles.c.status == "active")
            .with_for_update(skip_locked=True)
        )
    ).first()
    return None if row is None else _profile_of(row)


# --- search and duplicates ------------------------------------------------------------------------


async def search_profiles(
    *, session: AsyncSession, trait: str, value: Any, after: str | None, limit: int
) -> list[StoredProfile]:
    """Return live profiles whose trait has exactly this value."""
    query = (
        sa.select(profiles)
        .where(
            profiles.c.status == "active",
            profiles.c.traits.op("@>")(sa.cast({trait: {"value": value}}, postgresql.JSONB)),
        )
        .order_by(profiles.c.id)
        .limit(limit)
    )
    if after is not None:
        query = query.where(profiles.c.id > after)
    return [_profile_of(r) for r in await session.execute(query)]


async def recent_profiles(*, session: AsyncSession, limit: int) -> list[StoredProfile]:
    """Return the most recently updated live profiles."""
    rows = await session.execute(
        sa.select(profiles)
        .where(profiles.c.status == "active")
        .order_by(profiles.c.updated_at.desc())
        .limit(limit)
    )
    return [_profile_of(r) for r in rows]


# --- erasure ------------------------------------------------------------------------------------


async def find_by_hash(*, session: AsyncSession, subject_type: str, subject_hash: str) -> str | None:
    """Return the live profile a keyed-hash subject names, following merges."""
    if subject_type == PROFILE_ID:
        found = (
            await session.execute(sa.select(profiles.c.id).where(profiles.c.id_hash == subject_hash))
        ).scalar()
        return None if found is None else await resolve_profile_id(session=session, profile_id=found)
    found = (
        await session.execute(
            sa.select(identifiers.c.profile_id).where(
                identifiers.c.value_hash == subject_hash, identifiers.c.type == subject_type
            )
        )
    ).scalar()
    return None if found is None else await resolve_profile_id(session=session, profile_id=found)


async def merged_away_ids(*, session: AsyncSession, profile_id: str) -> list[str]:
    """Return the ids merged into a profile."""
    rows = await session.execute(
        sa.select(profiles.c.id).where(profiles.c.merged_into == profile_id).order_by(profiles.c.id)
    )
    return list(rows.scalars())


async def erase_profiles(
    *, session: AsyncSession, profile_ids: Sequence[str], request_id: str
) -> dict[str, int]:
    """Delete everything held about these profiles, keeping keyed-hash tombstones of their identifiers."""
    ids = list(profile_ids)
    hashes = set(
        (
            await session.execute(
                sa.select(identifiers.c.value_hash).where(identifiers.c.profile_id.in_(ids))
            )
        ).scalars()
    )
    hashes |= set(
        (await session.execute(sa.select(profiles.c.id_hash).where(profiles.c.id.in_(ids)))).scalars()
    )
    if hashes:
        await session.execute(
            postgresql.insert(tombstones)
            .values([{"value_hash": h, "request_id": request_id} for h in sorted(hashes)])
            .on_conflict_do_nothing()
        )
    counts: dict[str, int] = {}
    for name, statement in (
        ("events", events.delete().where(events.c.profile_id.in_(ids))),
        ("computed_values", computed_values.delete().where(computed_values.c.profile_id.in_(ids))),
        ("identifiers", identifiers.delete().where(identifiers.c.profile_id.in_(ids))),
        ("identifier_links", identifier_links.delete().where(identifier_links.c.profile_id.in_(ids))),
        (
            "merges",
            merges.delete().where(sa.or_(merges.c.survivor_id.in_(ids), merges.c.absorbed_id.in_(ids))),
        ),
        ("profiles", profiles.delete().where(profiles.c.id.in_(ids))),
    ):
        result = await session.execute(statement)
        counts[name] = int(result.rowcount or 0)  # type: ignore[attr-defined]
    # Messages already relayed or still waiting carry the person's data in clear.
    await session.execute(sa.text("DELETE FROM outbox WHERE key = ANY(CAST(:ids AS text[]))"), {"ids": ids})
    counts["tombstones"] = len(hashes)
    return counts


def profile_document(profile: StoredProfile) -> dict[str, Any]:
    """Return the API form of a profile."""
    return {
        "id": profile.id,
        "version": profile.version,
        "traits": {name: trait.value for name, trait in profile.traits.items()},
        "common_traits": common_traits(profile.traits),
        "computed_traits": profile.computed,
        "identifiers": [{"type": k.type, "value": k.value} for k in profile.identifiers],
        "created_at": profile.created_at.isoformat(),
        "updated_at": profile.updated_at.isoformat(),
    }
