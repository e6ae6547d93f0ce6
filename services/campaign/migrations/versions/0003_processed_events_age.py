"""The record of processed events is indexed by age, so records past the retention window are
pruned in bounded batches (cdp_common.retention).

Revision ID: 0003
"""

from alembic import op
from cdp_common.migrations import index_processed_events_by_age

revision = "0003"
down_revision = "0002"


def upgrade() -> None:
    index_processed_events_by_age()


def downgrade() -> None:
    op.execute("DROP INDEX IF EXISTS processed_events_age")
