"""The basis each gated consent purpose rested on when segment last started, so a change (a purpose
switched to opt-in, or the first start with consent purposes enforced) rebuilds every segment.

Revision ID: 0007
"""

from alembic import op

revision = "0007"
down_revision = "0006"


def upgrade() -> None:
    op.execute(
        """
        CREATE TABLE purpose_bases (
          purpose text PRIMARY KEY,
          basis text NOT NULL,
          since timestamptz NOT NULL DEFAULT now()
        )
        """
    )


def downgrade() -> None:
    op.execute("DROP TABLE purpose_bases")
