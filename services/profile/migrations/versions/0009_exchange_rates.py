"""Daily reference exchange rates: units of each currency for one unit of the day's base (the ECB
publishes euro-based rates), so an order is valued in the reporting currency at its day's rate.

Revision ID: 0009
"""

import sqlalchemy as sa
from alembic import op

revision = "0009"
down_revision = "0008"


def upgrade() -> None:
    op.create_table(
        "exchange_rates",
        sa.Column("currency", sa.Text, primary_key=True),
        sa.Column("day", sa.Date, primary_key=True),
        sa.Column("base", sa.Text, primary_key=True),
        sa.Column("rate", sa.Numeric, nullable=False),
        sa.Column("loaded_at", sa.DateTime(timezone=True), nullable=False, server_default=sa.func.now()),
        sa.CheckConstraint("rate > 0", name="exchange_rates_positive"),
    )


def downgrade() -> None:
    op.drop_table("exchange_rates")
