"""The event store loses its index on the original profile, which no query reads.

Splits find a family's events by the survivor's profile id first (the profile indexes)
and filter on the original profile among them, so the index only cost every insert.

Revision ID: 0003
"""

from alembic import op

revision = "0003"
down_revision = "0002"


def upgrade() -> None:
    op.drop_index("events_origin", table_name="events")


def downgrade() -> None:
    op.create_index("events_origin", "events", ["origin_profile_id"])
