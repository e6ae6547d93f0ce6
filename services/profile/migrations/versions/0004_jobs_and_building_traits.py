"""Jobs, and computed traits that are built by a job: the job's id on the definition, and
the values of one trait readable in profile order.

A definition being built carries `"building": true` in its stored form until its backfill
job has been through every profile.

Revision ID: 0004
"""

import sqlalchemy as sa
from alembic import op
from cdp_common.migrations import create_jobs_table

revision = "0004"
down_revision = "0003"


def upgrade() -> None:
    create_jobs_table()
    op.add_column("computed_definitions", sa.Column("job_id", sa.Text))
    op.create_index("computed_values_key_profile", "computed_values", ["key", "profile_id"])
    op.drop_index("computed_values_key", table_name="computed_values")


def downgrade() -> None:
    op.create_index("computed_values_key", "computed_values", ["key"])
    op.drop_index("computed_values_key_profile", table_name="computed_values")
    op.drop_column("computed_definitions", "job_id")
    op.drop_table("jobs")
