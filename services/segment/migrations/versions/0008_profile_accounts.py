"""The accounts (companies, from `group` calls) of each profile in the copy, each with its traits as
profile's last change carried them, for rules on `account_trait`.

Revision ID: 0008
"""

from alembic import op

revision = "0008"
down_revision = "0007"


def upgrade() -> None:
    op.execute("ALTER TABLE known_profiles ADD COLUMN accounts jsonb NOT NULL DEFAULT '[]'")


def downgrade() -> None:
    op.execute("ALTER TABLE known_profiles DROP COLUMN accounts")
