"""The duplicate review queue: what the scan knows of each live profile (its candidate, pending
until compared, and its blocks as 64-bit numbers), and the suspected pairs with their state
(open, dismissed, merged), which operators' decisions keep across scans.

Everything here belongs to profiles and goes with them when they are erased.

Revision ID: 0005
"""

import sqlalchemy as sa
from alembic import op
from sqlalchemy.dialects import postgresql

revision = "0005"
down_revision = "0004"


def upgrade() -> None:
    op.create_table(
        "duplicate_candidates",
        sa.Column("profile_id", sa.Text, sa.ForeignKey("profiles.id", ondelete="CASCADE"), primary_key=True),
        sa.Column("name", sa.Text),
        sa.Column("email", sa.Text),
        sa.Column("phone", sa.Text),
        sa.Column("address", sa.Text),
        sa.Column("company", sa.Text),
        sa.Column("keys_version", sa.Integer, nullable=False),
        sa.Column("pending", sa.Boolean, nullable=False),
        sa.Column("updated_at", sa.DateTime(timezone=True), nullable=False, server_default=sa.func.now()),
    )
    op.create_index(
        "duplicate_candidates_pending",
        "duplicate_candidates",
        ["profile_id"],
        postgresql_where=sa.text("pending"),
    )
    op.create_table(
        "duplicate_keys",
        sa.Column("block", sa.BigInteger, primary_key=True),
        sa.Column(
            "profile_id",
            sa.Text,
            sa.ForeignKey("duplicate_candidates.profile_id", ondelete="CASCADE"),
            primary_key=True,
        ),
    )
    op.create_index("duplicate_keys_profile", "duplicate_keys", ["profile_id"])
    op.create_table(
        "duplicate_suspects",
        sa.Column("profile_a", sa.Text, sa.ForeignKey("profiles.id", ondelete="CASCADE"), primary_key=True),
        sa.Column("profile_b", sa.Text, sa.ForeignKey("profiles.id", ondelete="CASCADE"), primary_key=True),
        sa.Column("score", sa.Float, nullable=False),
        sa.Column("reasons", postgresql.JSONB, nullable=False),
        sa.Column("state", sa.Text, nullable=False),
        sa.Column("seen_job", sa.Text),
        sa.Column("decided_by", sa.Text),
        sa.Column("found_at", sa.DateTime(timezone=True), nullable=False, server_default=sa.func.now()),
        sa.Column("updated_at", sa.DateTime(timezone=True), nullable=False, server_default=sa.func.now()),
        sa.CheckConstraint("profile_a < profile_b", name="duplicate_suspects_ordered"),
        sa.CheckConstraint("state IN ('open', 'dismissed', 'merged')", name="duplicate_suspects_state"),
    )
    op.create_index("duplicate_suspects_second", "duplicate_suspects", ["profile_b"])
    op.create_index(
        "duplicate_suspects_open",
        "duplicate_suspects",
        [sa.text("score DESC"), "profile_a", "profile_b"],
        postgresql_where=sa.text("state = 'open'"),
    )


def downgrade() -> None:
    op.drop_table("duplicate_suspects")
    op.drop_table("duplicate_keys")
    op.drop_table("duplicate_candidates")
