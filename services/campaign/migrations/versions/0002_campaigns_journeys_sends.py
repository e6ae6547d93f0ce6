"""Campaigns, journeys and positions, profile records, sends and engagement.

Revision ID: 0002
"""

from alembic import op
from cdp_campaign.store import SERVICE_TABLES, metadata

revision = "0002"
down_revision = "0001"


def upgrade() -> None:
    metadata.create_all(bind=op.get_bind(), tables=list(SERVICE_TABLES))
