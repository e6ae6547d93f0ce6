"""Jobs, the building state of segments and the readiness of computed traits in segment's copy.

Revision ID: 0003
"""

from alembic import op
from cdp_common.migrations import create_jobs_table

revision = "0003"
down_revision = "0002"

SCHEMA = """
        ALTER TABLE segments
          ADD COLUMN status text NOT NULL DEFAULT 'ready' CHECK (status IN ('building', 'ready')),
          ADD COLUMN job_id text,
          ADD COLUMN awaiting_data boolean NOT NULL DEFAULT false;
        ALTER TABLE computed_trait_requests
          ADD COLUMN profile_job_id text,
          ADD COLUMN fill_job_id text,
          ADD COLUMN ready_at timestamptz
        """


def upgrade() -> None:
    create_jobs_table()
    for statement in SCHEMA.split(";"):
        if statement.strip():
            op.execute(statement)
