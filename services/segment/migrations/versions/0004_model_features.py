"""The features a model run extracts from the profile copy, kept between its fit and its scoring.

Revision ID: 0004
"""

from alembic import op

revision = "0004"
down_revision = "0003"

SCHEMA = """
        CREATE TABLE model_features (
          model text NOT NULL,
          profile_id text NOT NULL,
          recency_days double precision NOT NULL,
          orders bigint NOT NULL,
          revenue double precision NOT NULL,
          tenure_days double precision NOT NULL,
          span_days double precision NOT NULL,
          PRIMARY KEY (model, profile_id)
        )
        """


def upgrade() -> None:
    op.execute(SCHEMA)
