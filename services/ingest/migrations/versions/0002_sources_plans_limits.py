"""Rate limits per source, tracking plans and their recorded violations.

Revision ID: 0002
"""

import sqlalchemy as sa
from alembic import op
from sqlalchemy.dialects import postgresql

revision = "0002"
down_revision = "0001"


def upgrade() -> None:
    op.add_column("sources", sa.Column("rate_limit_per_s", sa.Float))
    op.add_column("sources", sa.Column("rate_limit_burst", sa.Integer))
    op.add_column("sources", sa.Column("rotated_at", sa.DateTime(timezone=True)))
    op.create_table(
        "tracking_plans",
        sa.Column("source_id", sa.Text, sa.ForeignKey("sources.id", ondelete="CASCADE"), primary_key=True),
        sa.Column("document", postgresql.JSONB, nullable=False),
        sa.Column("updated_at", sa.DateTime(timezone=True), nullable=False, server_default=sa.func.now()),
    )
    op.create_table(
        "plan_violations",
        sa.Column("id", sa.BigInteger, sa.Identity(), primary_key=True),
        sa.Column("source_id", sa.Text, nullable=False),
        sa.Column("kind", sa.Text, nullable=False),
        sa.Column("event_type", sa.Text, nullable=False),
        sa.Column("event_name", sa.Text),
        sa.Column("path", sa.Text),
        sa.Column("rule", sa.Text, nullable=False),
        sa.Column("message_id", sa.Text, nullable=False),
        sa.Column("refused", sa.Boolean, nullable=False),
        sa.Column("created_at", sa.DateTime(timezone=True), nullable=False, server_default=sa.func.now()),
    )
    op.create_index("plan_violations_by_source", "plan_violations", ["source_id", "id"])
