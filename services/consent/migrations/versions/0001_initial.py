"""Initial schema of the consent service.

Revision ID: 0001
"""

import sqlalchemy as sa
from alembic import op
from cdp_common.migrations import create_platform_tables
from cdp_common.replica import known_profiles_table

revision = "0001"
down_revision = None


def upgrade() -> None:
    create_platform_tables()
    known_profiles_table(sa.MetaData()).create(op.get_bind())
