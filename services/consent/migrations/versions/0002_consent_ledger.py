"""Consent ledger (append-only), the state derived from it, contact hashes, suppression list, merges.

Revision ID: 0002
"""

from alembic import op

revision = "0002"
down_revision = "0001"

# The ledger is append-only: a trigger refuses updates; erasure deletes entries.


STATEMENTS = [
    """
    CREATE TABLE consent_ledger (
        id bigint GENERATED ALWAYS AS IDENTITY PRIMARY KEY,
        profile_id text NOT NULL,
        purpose text NOT NULL,
        channel text NOT NULL,
        status text NOT NULL CHECK (status IN ('granted', 'denied', 'withdrawn')),
        at timestamptz NOT NULL,
        recorded_at timestamptz NOT NULL DEFAULT now(),
        source text NOT NULL,
        legal_basis text,
        wording text,
        wording_version text,
        evidence jsonb NOT NULL DEFAULT '{}'::jsonb,
        event_id text
    )
    """,
    """
    CREATE INDEX consent_ledger_profile ON consent_ledger (profile_id, id)
    """,
    """
    CREATE FUNCTION consent_ledger_refuse_update() RETURNS trigger LANGUAGE plpgsql AS $$
    BEGIN
        RAISE EXCEPTION 'the consent ledger is append-only';
    END $$
    """,
    """
    CREATE TRIGGER consent_ledger_append_only BEFORE UPDATE ON consent_ledger
    FOR EACH ROW EXECUTE FUNCTION consent_ledger_refuse_update()
    """,
    """
    CREATE TABLE consent_state (
        profile_id text NOT NULL,
        purpose text NOT NULL,
        channel text NOT NULL,
        status text NOT NULL,
        at timestamptz NOT NULL,
        ledger_id bigint NOT NULL,
        PRIMARY KEY (profile_id, purpose, channel)
    )
    """,
    """
    CREATE TABLE profile_contacts (
        profile_id text NOT NULL,
        kind text NOT NULL,
        hash text NOT NULL,
        PRIMARY KEY (profile_id, hash)
    )
    """,
    """
    CREATE INDEX profile_contacts_hash ON profile_contacts (hash)
    """,
    """
    CREATE TABLE suppressions (
        hash text PRIMARY KEY,
        kind text NOT NULL,
        reason text NOT NULL,
        created_at timestamptz NOT NULL DEFAULT now()
    )
    """,
    """
    CREATE TABLE merges_applied (
        merge_id text PRIMARY KEY,
        profile_id text NOT NULL,
        absorbed_profile_id text NOT NULL,
        conflicts integer NOT NULL,
        applied_at timestamptz NOT NULL DEFAULT now()
    )
    """,
    """
    CREATE INDEX merges_applied_profiles ON merges_applied (profile_id)
    """,
    """
    CREATE INDEX merges_applied_absorbed ON merges_applied (absorbed_profile_id)
    """,
]


def upgrade() -> None:
    for statement in STATEMENTS:
        op.execute(statement)
