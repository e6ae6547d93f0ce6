"""The accounts (companies, from `group` calls) of each person beside their contact points, each with
its traits as profile's last change carried them, for `account` in templates.

Revision ID: 0004
"""

from alembic import op

revision = "0004"
down_revision = "0003"


def upgrade() -> None:
    op.execute("ALTER TABLE contacts ADD COLUMN accounts jsonb NOT NULL DEFAULT '[]'")


def downgrade() -> None:
    op.execute("ALTER TABLE contacts DROP COLUMN accounts")
