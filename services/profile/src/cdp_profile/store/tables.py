"""The profile store: tables."""

from __future__ import annotations

from dataclasses import dataclass, field
from datetime import datetime
from typing import Any

import sqlalchemy as sa
from sqlalchemy.dialects import postgresql

from cdp_profile.domain.identity import IdentifierKey
from cdp_profile.domain.traits import TraitValue

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
