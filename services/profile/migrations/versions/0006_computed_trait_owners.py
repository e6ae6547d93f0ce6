"""Owners of computed traits, and the deletions whose values are still being removed.

An owner (`segment:<key>`, `campaign:<id>`) is a caller that relies on a definition; a
definition is deleted only when it has none. A deleted definition is gone at once; its states
are removed by a job in short steps, and the key stays taken until that job has finished.

Revision ID: 0006
"""

import sqlalchemy as sa
from alembic import op

revision = "0006"
down_revision = "0005"


def upgrade() -> None:
    op.create_table(
        "computed_trait_owners",
        sa.Column(
            "key", sa.Text, sa.ForeignKey("computed_definitions.key", ondelete="CASCADE"), primary_key=True
        ),
        sa.Column("owner", sa.Text, primary_key=True),
        sa.Column("created_at", sa.DateTime(timezone=True), nullable=False, server_default=sa.func.now()),
    )
    op.create_table(
        "computed_trait_purges",
        sa.Column("key", sa.Text, primary_key=True),
        sa.Column("job_id", sa.Text, nullable=False),
        sa.Column("created_at", sa.DateTime(timezone=True), nullable=False, server_default=sa.func.now()),
    )


def downgrade() -> None:
    op.drop_table("computed_trait_purges")
    op.drop_table("computed_trait_owners")
