"""Orders: one row per `order_id` in the workspace, whatever source or path sent it, on the profile
that holds its first event, amended by the order events that follow (updates, cancellations,
refunds, returns). `value` is the net in `reporting_currency` at the rate of the order's day, null
when its currency has no rate (flagged: left out of money figures, never converted at 1).

Orders are a person's data and go with their profile when it is erased. When the event store
already holds order events, the job that builds their orders (`orders_from_events`) is queued.

Revision ID: 0011
"""

import sqlalchemy as sa
from alembic import op
from sqlalchemy.dialects import postgresql

revision = "0011"
down_revision = "0010"


def upgrade() -> None:
    op.create_table(
        "orders",
        sa.Column("order_id", sa.Text, primary_key=True),
        sa.Column("profile_id", sa.Text, sa.ForeignKey("profiles.id", ondelete="CASCADE"), nullable=False),
        sa.Column("state", sa.Text, nullable=False),
        sa.Column("currency", sa.Text, nullable=False),
        sa.Column("total", sa.Numeric),
        sa.Column("refunded", sa.Numeric, nullable=False),
        sa.Column("net", sa.Numeric, nullable=False),
        sa.Column("value", sa.Numeric),
        sa.Column("reporting_currency", sa.Text, nullable=False),
        sa.Column("coupon", sa.Text),
        sa.Column("payment_method", sa.Text),
        sa.Column("lines", postgresql.JSONB, nullable=False),
        sa.Column("detail", postgresql.JSONB, nullable=False),
        sa.Column("sources", postgresql.ARRAY(sa.Text), nullable=False),
        sa.Column("first_event_id", sa.Text, nullable=False),
        sa.Column("ordered_at", sa.DateTime(timezone=True), nullable=False),
        sa.Column("updated_at", sa.DateTime(timezone=True), nullable=False),
        sa.Column("recorded_at", sa.DateTime(timezone=True), nullable=False, server_default=sa.func.now()),
        sa.CheckConstraint(
            "state IN ('pending', 'completed', 'partially_refunded', 'refunded', 'cancelled')",
            name="orders_state",
        ),
    )
    op.create_index("orders_profile", "orders", ["profile_id", sa.text("ordered_at DESC"), "order_id"])
    op.create_index(
        "orders_without_rate", "orders", ["currency", "ordered_at"], postgresql_where=sa.text("value IS NULL")
    )
    op.execute(
        """
        INSERT INTO jobs (id, kind, params, state)
        SELECT 'job_orders_from_events', 'orders_from_events', '{}'::jsonb, 'queued'
         WHERE EXISTS (SELECT 1 FROM events WHERE type = 'track'
                          AND name IN ('Order Completed', 'Order Updated', 'Order Cancelled', 'Order Refunded'))
        """
    )


def downgrade() -> None:
    op.execute("DELETE FROM jobs WHERE kind = 'orders_from_events'")
    op.drop_table("orders")
