"""Initial schema of the profile service: identity graph, ledger, profiles, event store, computed traits.

Revision ID: 0001
"""

import sqlalchemy as sa
from alembic import op
from cdp_common.migrations import create_platform_tables
from sqlalchemy.dialects import postgresql

revision = "0001"
down_revision = None

JSONB_EMPTY = sa.text("'{}'::jsonb")


def upgrade() -> None:
    create_platform_tables()
    op.create_table(
        "profiles",
        sa.Column("id", sa.Text, primary_key=True),
        sa.Column("id_hash", sa.Text, nullable=False),
        sa.Column("version", sa.BigInteger, nullable=False),
        sa.Column("status", sa.Text, nullable=False, server_default="active"),
        sa.Column("merged_into", sa.Text),
        sa.Column("traits", postgresql.JSONB, nullable=False, server_default=JSONB_EMPTY),
        sa.Column("aggregates", postgresql.JSONB, nullable=False, server_default=JSONB_EMPTY),
        sa.Column("computed", postgresql.JSONB, nullable=False, server_default=JSONB_EMPTY),
        sa.Column("created_at", sa.DateTime(timezone=True), nullable=False, server_default=sa.func.now()),
        sa.Column("updated_at", sa.DateTime(timezone=True), nullable=False, server_default=sa.func.now()),
    )
    op.create_index("profiles_id_hash", "profiles", ["id_hash"])
    op.create_index("profiles_merged_into", "profiles", ["merged_into"])
    op.create_index("profiles_updated", "profiles", ["updated_at", "id"])
    op.create_index(
        "profiles_traits",
        "profiles",
        ["traits"],
        postgresql_using="gin",
        postgresql_ops={"traits": "jsonb_path_ops"},
    )
    op.create_table(
        "identifiers",
        sa.Column("type", sa.Text, primary_key=True),
        sa.Column("value", sa.Text, primary_key=True),
        sa.Column("value_hash", sa.Text, nullable=False),
        sa.Column("profile_id", sa.Text, sa.ForeignKey("profiles.id"), nullable=False),
        sa.Column("event_id", sa.Text),
        sa.Column("quarantined_at", sa.DateTime(timezone=True)),
        sa.Column("first_seen_at", sa.DateTime(timezone=True), nullable=False, server_default=sa.func.now()),
    )
    op.create_index("identifiers_profile_id", "identifiers", ["profile_id"])
    op.create_index("identifiers_value_hash", "identifiers", ["value_hash"])
    op.create_index(
        "identifiers_quarantined",
        "identifiers",
        ["quarantined_at"],
        postgresql_where=sa.text("quarantined_at IS NOT NULL"),
    )
    op.create_table(
        "identifier_links",
        sa.Column("type", sa.Text, primary_key=True),
        sa.Column("value_hash", sa.Text, primary_key=True),
        sa.Column("profile_id", sa.Text, primary_key=True),
    )
    op.create_index("identifier_links_profile_id", "identifier_links", ["profile_id"])
    op.create_table(
        "merges",
        sa.Column("seq", sa.BigInteger, sa.Identity(), primary_key=True),
        sa.Column("merge_id", sa.Text, nullable=False),
        sa.Column("kind", sa.Text, nullable=False),
        sa.Column("survivor_id", sa.Text, nullable=False),
        sa.Column("absorbed_id", sa.Text, nullable=False),
        sa.Column("rule", sa.Text, nullable=False),
        sa.Column("reason", postgresql.JSONB, nullable=False, server_default=JSONB_EMPTY),
        sa.Column("event_id", sa.Text),
        sa.Column("identifiers", postgresql.JSONB, nullable=False, server_default=sa.text("'[]'::jsonb")),
        sa.Column("at", sa.DateTime(timezone=True), nullable=False, server_default=sa.func.now()),
    )
    op.create_index("merges_survivor", "merges", ["survivor_id", "seq"])
    op.create_index("merges_absorbed", "merges", ["absorbed_id", "seq"])
    op.create_index("merges_merge_id", "merges", ["merge_id"])
    # The event store. Every query names a profile, so the indexes lead with profile_id and
    # keep one profile's events together; at tens of millions of rows the table can be
    # hash-partitioned by profile_id without changing a query.
    op.create_table(
        "events",
        sa.Column("seq", sa.BigInteger, sa.Identity(), primary_key=True),
        sa.Column("event_id", sa.Text, nullable=False, unique=True),
        sa.Column("profile_id", sa.Text, nullable=False),
        sa.Column("origin_profile_id", sa.Text, nullable=False),
        sa.Column("type", sa.Text, nullable=False),
        sa.Column("name", sa.Text),
        sa.Column("timestamp", sa.DateTime(timezone=True), nullable=False),
        sa.Column("received_at", sa.DateTime(timezone=True), nullable=False),
        sa.Column("source_id", sa.Text, nullable=False),
        sa.Column("properties", postgresql.JSONB, nullable=False, server_default=JSONB_EMPTY),
        sa.Column("traits", postgresql.JSONB, nullable=False, server_default=JSONB_EMPTY),
        sa.Column("identifiers", postgresql.JSONB, nullable=False, server_default=sa.text("'[]'::jsonb")),
    )
    op.create_index("events_profile_time", "events", ["profile_id", "timestamp", "seq"])
    op.create_index("events_profile_name_time", "events", ["profile_id", "name", "timestamp"])
    op.create_index("events_profile_type_time", "events", ["profile_id", "type", "timestamp"])
    op.create_index("events_origin", "events", ["origin_profile_id"])
    op.create_table(
        "computed_definitions",
        sa.Column("key", sa.Text, primary_key=True),
        sa.Column("definition", postgresql.JSONB, nullable=False),
        sa.Column("created_at", sa.DateTime(timezone=True), nullable=False, server_default=sa.func.now()),
        sa.Column("backfilled_profiles", sa.BigInteger, nullable=False, server_default="0"),
    )
    op.create_table(
        "computed_values",
        sa.Column("profile_id", sa.Text, primary_key=True),
        sa.Column("key", sa.Text, primary_key=True),
        sa.Column("state", postgresql.JSONB, nullable=False, server_default=JSONB_EMPTY),
        sa.Column("next_change_at", sa.DateTime(timezone=True)),
    )
    op.create_index(
        "computed_values_due",
        "computed_values",
        ["next_change_at"],
        postgresql_where=sa.text("next_change_at IS NOT NULL"),
    )
    op.create_index("computed_values_key", "computed_values", ["key"])
    op.create_table(
        "tombstones",
        sa.Column("value_hash", sa.Text, primary_key=True),
        sa.Column("request_id", sa.Text, nullable=False),
        sa.Column("erased_at", sa.DateTime(timezone=True), nullable=False, server_default=sa.func.now()),
    )
    op.create_table(
        "identity_rules",
        sa.Column("id", sa.Integer, primary_key=True),
        sa.Column("rules", postgresql.JSONB, nullable=False),
        sa.Column("updated_at", sa.DateTime(timezone=True), nullable=False, server_default=sa.func.now()),
    )
