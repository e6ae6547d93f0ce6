"""Profiles an operator split are kept apart: events no longer merge them again.

Revision ID: 0002
"""

import sqlalchemy as sa
from alembic import op

revision = "0002"
down_revision = "0001"


def upgrade() -> None:
    # One row per direction, so "who is kept apart from these profiles" is one index scan.
    op.create_table(
        "kept_apart",
        sa.Column("profile_id", sa.Text, primary_key=True),
        sa.Column("other_id", sa.Text, primary_key=True),
        sa.Column("merge_id", sa.Text, nullable=False),
        sa.Column("at", sa.DateTime(timezone=True), nullable=False, server_default=sa.func.now()),
    )


def downgrade() -> None:
    op.drop_table("kept_apart")
