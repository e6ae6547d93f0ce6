"""The campaign store: its tables, and the pieces of statements every part of the store uses."""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import sqlalchemy as sa
from cdp_common.replica import known_profiles_table
from sqlalchemy.dialects import postgresql

metadata = sa.MetaData()
known_profiles = known_profiles_table(metadata)


def _any_of(column: sa.ColumnElement[Any], values: Sequence[str]) -> sa.ColumnElement[bool]:
    # One array parameter instead of an IN list: the statement stays the same for any number of ids.
    return column == sa.any_(sa.bindparam(None, list(values), type_=postgresql.ARRAY(sa.Text)))


def _dicts(result: sa.Result[Any]) -> list[dict[str, Any]]:
    keys = list(result.keys())
    return [dict(zip(keys, row, strict=True)) for row in result]


def _now_column(name: str) -> sa.Column[Any]:
    return sa.Column(name, sa.DateTime(timezone=True), nullable=False, server_default=sa.func.now())


campaigns = sa.Table(
    "campaigns",
    metadata,
    sa.Column("id", sa.Text, primary_key=True),
    sa.Column("name", sa.Text, nullable=False),
    sa.Column("status", sa.Text, nullable=False),
    sa.Column("spec", postgresql.JSONB, nullable=False),
    sa.Column("next_run_at", sa.DateTime(timezone=True)),
    sa.Column("runs", sa.Integer, nullable=False, server_default="0"),
    _now_column("created_at"),
    _now_column("updated_at"),
)

journeys = sa.Table(
    "journeys",
    metadata,
    sa.Column("id", sa.Text, primary_key=True),
    sa.Column("name", sa.Text, nullable=False),
    sa.Column("status", sa.Text, nullable=False),
    sa.Column("spec", postgresql.JSONB, nullable=False),
    _now_column("created_at"),
    _now_column("updated_at"),
)

journey_positions = sa.Table(
    "journey_positions",
    metadata,
    sa.Column("journey_id", sa.Text, primary_key=True),
    sa.Column("profile_id", sa.Text, primary_key=True),
    sa.Column("step", sa.Integer, nullable=False),
    sa.Column("state", sa.Text, nullable=False),
    sa.Column("wake_at", sa.DateTime(timezone=True)),
    sa.Column("waiting_for", sa.Text),
    sa.Column("step_started_at", sa.DateTime(timezone=True)),
    sa.Column("entered_at", sa.DateTime(timezone=True), nullable=False),
    _now_column("updated_at"),
)
sa.Index(
    "journey_positions_due",
    journey_positions.c.wake_at,
    postgresql_where=journey_positions.c.state == "waiting",
)

contacts = sa.Table(
    "contacts",
    metadata,
    sa.Column("profile_id", sa.Text, primary_key=True),
    sa.Column("version", sa.BigInteger, nullable=False),
    sa.Column("email", sa.Text),
    sa.Column("phone", sa.Text),
    sa.Column("locale", sa.Text),
    sa.Column("timezone", sa.Text),
    sa.Column("traits", postgresql.JSONB, nullable=False, server_default="{}"),
    sa.Column("computed", postgresql.JSONB, nullable=False, server_default="{}"),
    _now_column("updated_at"),
    # The person's accounts, each {"group_id", "traits"}, most recently linked first (migration 0004).
    sa.Column("accounts", postgresql.JSONB, nullable=False, server_default="[]"),
)

memberships = sa.Table(
    "memberships",
    metadata,
    sa.Column("segment_key", sa.Text, primary_key=True),
    sa.Column("profile_id", sa.Text, primary_key=True),
    sa.Column("entered_at", sa.DateTime(timezone=True), nullable=False),
)
sa.Index("memberships_profile", memberships.c.profile_id)

profile_events = sa.Table(
    "profile_events",
    metadata,
    sa.Column("event_id", sa.Text, primary_key=True),
    sa.Column("profile_id", sa.Text, nullable=False),
    sa.Column("event", sa.Text, nullable=False),
    sa.Column("at", sa.DateTime(timezone=True), nullable=False),
    sa.Column("revenue", sa.Float),
)
sa.Index("profile_events_lookup", profile_events.c.profile_id, profile_events.c.event, profile_events.c.at)

purchases = sa.Table(
    "purchases",
    metadata,
    sa.Column("event_id", sa.Text, primary_key=True),
    sa.Column("line", sa.Integer, primary_key=True),
    sa.Column("profile_id", sa.Text, nullable=False),
    sa.Column("order_id", sa.Text, nullable=False),
    sa.Column("product_id", sa.Text, nullable=False),
    sa.Column("name", sa.Text),
    sa.Column("category", sa.Text),
    sa.Column("price", sa.Float),
    sa.Column("quantity", sa.Integer, nullable=False),
    sa.Column("at", sa.DateTime(timezone=True), nullable=False),
)
sa.Index("purchases_profile", purchases.c.profile_id)
sa.Index("purchases_category", purchases.c.category)

sends = sa.Table(
    "sends",
    metadata,
    sa.Column("id", sa.Text, primary_key=True),
    sa.Column("source", sa.Text, nullable=False),
    sa.Column("source_id", sa.Text, nullable=False),
    sa.Column("step", sa.Integer),
    sa.Column("profile_id", sa.Text),
    sa.Column("profile_hash", sa.Text, nullable=False),
    sa.Column("variant", sa.Text, nullable=False),
    sa.Column("channel", sa.Text, nullable=False),
    sa.Column("status", sa.Text, nullable=False),
    sa.Column("reason", sa.Text),
    sa.Column("address", sa.Text),
    sa.Column("not_before", sa.DateTime(timezone=True)),
    sa.Column("claimed_at", sa.DateTime(timezone=True)),
    sa.Column("handed_at", sa.DateTime(timezone=True)),
    sa.Column("attempts", sa.Integer, nullable=False, server_default="0"),
    sa.Column("error", sa.Text),
    sa.Column("created_at", sa.DateTime(timezone=True), nullable=False),
    _now_column("updated_at"),
)
sa.Index("sends_source", sends.c.source, sends.c.source_id, sends.c.status)
sa.Index("sends_profile", sends.c.profile_id, sends.c.channel, sends.c.handed_at)
sa.Index("sends_deferred", sends.c.not_before, postgresql_where=sends.c.status == "deferred")

engagements = sa.Table(
    "engagements",
    metadata,
    sa.Column("id", sa.BigInteger, sa.Identity(), primary_key=True),
    sa.Column("send_id", sa.Text, nullable=False),
    sa.Column("kind", sa.Text, nullable=False),
    sa.Column("at", sa.DateTime(timezone=True), nullable=False),
    sa.Column("url", sa.Text),
    sa.Column("revenue", sa.Float),
    sa.Column("dedupe_key", sa.Text),
)
sa.Index("engagements_send", engagements.c.send_id, engagements.c.kind)
sa.Index(
    "engagements_dedupe", engagements.c.send_id, engagements.c.kind, engagements.c.dedupe_key, unique=True
)
