"""Privacy requests (GDPR Art. 15, 17, 20) with the subject as a keyed hash, and receipts per service.

Revision ID: 0004
"""

from alembic import op

revision = "0004"
down_revision = "0003"

STATEMENTS = [
    """
    CREATE TABLE privacy_requests (
        id text PRIMARY KEY,
        type text NOT NULL CHECK (type IN ('access', 'erasure')),
        subject_type text NOT NULL,
        subject_hash text NOT NULL,
        status text NOT NULL CHECK (status IN ('pending', 'in_progress', 'completed', 'failed')),
        opened_at timestamptz NOT NULL DEFAULT now(),
        deadline timestamptz NOT NULL,
        completed_at timestamptz,
        profile_ids jsonb,
        note text,
        bundle jsonb,
        bundle_erased_at timestamptz,
        assembly_due_at timestamptz,
        assembly_attempts integer NOT NULL DEFAULT 0,
        last_error text
    )
    """,
    """
    CREATE INDEX privacy_requests_assembly ON privacy_requests (assembly_due_at)
        WHERE assembly_due_at IS NOT NULL
    """,
    """
    CREATE INDEX privacy_requests_open ON privacy_requests (deadline)
        WHERE status IN ('pending', 'in_progress')
    """,
    """
    CREATE TABLE privacy_receipts (
        request_id text NOT NULL REFERENCES privacy_requests (id) ON DELETE CASCADE,
        service text NOT NULL,
        status text NOT NULL,
        profile_ids jsonb NOT NULL,
        details jsonb NOT NULL,
        received_at timestamptz NOT NULL DEFAULT now(),
        PRIMARY KEY (request_id, service)
    )
    """,
]


def upgrade() -> None:
    for statement in STATEMENTS:
        op.execute(statement)
