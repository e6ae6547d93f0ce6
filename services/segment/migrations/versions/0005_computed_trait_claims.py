"""Which segment relies on which computed trait, so profile knows every owner of a trait
(`segment:<key>`) and a deleted segment releases its claims.

A claim is `claimed` once profile has recorded the owner, and `released` once the segment no
longer uses the trait; it is forgotten when profile has let go of the owner.

Revision ID: 0005
"""

from alembic import op

revision = "0005"
down_revision = "0004"

SCHEMA = """
        CREATE TABLE computed_trait_claims (
          key text NOT NULL,
          segment_key text NOT NULL,
          claimed boolean NOT NULL DEFAULT false,
          released boolean NOT NULL DEFAULT false,
          error text,
          PRIMARY KEY (key, segment_key)
        )
        """


def upgrade() -> None:
    op.execute(SCHEMA)
    op.execute(
        "CREATE INDEX computed_trait_claims_unsettled ON computed_trait_claims (key) WHERE released OR NOT claimed"
    )


def downgrade() -> None:
    op.execute("DROP TABLE computed_trait_claims")
