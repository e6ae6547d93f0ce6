"""Accounts (companies) from `group` calls: each account's traits with their provenance, and who
belongs to it. A link is kept per account and the profile its group call was first resolved to
(`origin_profile_id`), so a merge carries it to the survivor and a split gives it back, as events are.

Accounts are company data and stay when a member is erased; the member's links go.

Revision ID: 0008
"""

import sqlalchemy as sa
from alembic import op
from sqlalchemy.dialects import postgresql

revision = "0008"
down_revision = "0007"


def upgrade() -> None:
    op.create_table(
        "accounts",
        sa.Column("group_id", sa.Text, primary_key=True),
        sa.Column("traits", postgresql.JSONB, nullable=False, server_default=sa.text("'{}'::jsonb")),
        sa.Column("version", sa.BigInteger, nullable=False),
        sa.Column("created_at", sa.DateTime(timezone=True), nullable=False, server_default=sa.func.now()),
        sa.Column("updated_at", sa.DateTime(timezone=True), nullable=False, server_default=sa.func.now()),
    )
    op.create_table(
        "account_members",
        sa.Column("group_id", sa.Text, sa.ForeignKey("accounts.group_id"), primary_key=True),
        sa.Column("origin_profile_id", sa.Text, primary_key=True),
        sa.Column("profile_id", sa.Text, sa.ForeignKey("profiles.id", ondelete="CASCADE"), nullable=False),
        sa.Column("event_id", sa.Text, nullable=False),
        sa.Column("linked_at", sa.DateTime(timezone=True), nullable=False),
    )
    op.create_index("account_members_profile", "account_members", ["profile_id", "group_id"])
    op.create_index("account_members_group", "account_members", ["group_id", "profile_id"])


def downgrade() -> None:
    op.drop_table("account_members")
    op.drop_table("accounts")
