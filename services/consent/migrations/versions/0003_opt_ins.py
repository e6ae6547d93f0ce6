"""Double opt-in requests: the pending consent, its single-use token (hashed) and its evidence.

Revision ID: 0003
"""

from alembic import op

revision = "0003"
down_revision = "0002"

STATEMENTS = [
    """
    CREATE TABLE opt_ins (
        id text PRIMARY KEY,
        profile_id text NOT NULL,
        purpose text NOT NULL,
        channel text NOT NULL,
        address_hash text NOT NULL,
        token_hash text NOT NULL UNIQUE,
        status text NOT NULL CHECK (status IN ('pending', 'confirmed', 'expired')),
        requested_at timestamptz NOT NULL DEFAULT now(),
        expires_at timestamptz NOT NULL,
        request_evidence jsonb NOT NULL DEFAULT '{}'::jsonb,
        legal_basis text NOT NULL,
        wording text,
        wording_version text,
        confirmed_at timestamptz,
        confirm_evidence jsonb,
        ledger_id bigint
    )
    """,
    """
    CREATE INDEX opt_ins_profile ON opt_ins (profile_id)
    """,
    """
    CREATE INDEX opt_ins_pending_expiry ON opt_ins (expires_at) WHERE status = 'pending'
    """,
]


def upgrade() -> None:
    for statement in STATEMENTS:
        op.execute(statement)
