"""The duplicate queue kept current as profiles change: a trigger notes in `duplicate_changes`
every profile created with, or changed in, a trait the duplicate scoring reads (names, e-mail,
phone, address, company, birthday) or in its status (merged away, restored); the queue's
periodic job compares those profiles and removes the notes. Candidates also keep the postal
code and the birthday, which their blocks and scores now use; every candidate already held is
noted, so its blocks are computed again.

Revision ID: 0010
"""

from alembic import op

revision = "0010"
down_revision = "0009"


def upgrade() -> None:
    op.execute("ALTER TABLE duplicate_candidates ADD COLUMN postal_code text, ADD COLUMN birthday text")
    op.execute(
        """
        CREATE TABLE duplicate_changes (
            seq bigint GENERATED ALWAYS AS IDENTITY PRIMARY KEY,
            profile_id text NOT NULL
        )
        """
    )
    # The functions keep the schema they were made in, whatever the search path of the writer
    # (a bulk load names its tables with their schema). Profiles created in bulk (a COPY, the
    # event flow's batches) are noted once per statement; the traits are those a candidate is
    # made of (cdp_profile.duplicates_store reads the same ones).
    op.execute(
        """
        CREATE FUNCTION duplicate_note_created() RETURNS trigger LANGUAGE plpgsql
        SET search_path FROM CURRENT AS $$
        BEGIN
            INSERT INTO duplicate_changes (profile_id)
            SELECT id FROM created_profiles
             WHERE traits ?| ARRAY['first_name', 'firstName', 'last_name', 'lastName', 'name', 'email', 'phone', 'address', 'company', 'birthday'];
            RETURN NULL;
        END $$
        """
    )
    op.execute(
        """
        CREATE TRIGGER duplicate_profile_created AFTER INSERT ON profiles
        REFERENCING NEW TABLE AS created_profiles
        FOR EACH STATEMENT EXECUTE FUNCTION duplicate_note_created()
        """
    )
    op.execute(
        """
        CREATE FUNCTION duplicate_note_changed() RETURNS trigger LANGUAGE plpgsql
        SET search_path FROM CURRENT AS $$
        BEGIN
            INSERT INTO duplicate_changes (profile_id) VALUES (NEW.id);
            RETURN NULL;
        END $$
        """
    )
    op.execute(
        """
        CREATE TRIGGER duplicate_profile_changed AFTER UPDATE OF traits, status ON profiles
        FOR EACH ROW
        WHEN (
            OLD.status IS DISTINCT FROM NEW.status
            OR ROW(
                OLD.traits -> 'first_name' -> 'value',
                OLD.traits -> 'firstName' -> 'value',
                OLD.traits -> 'last_name' -> 'value',
                OLD.traits -> 'lastName' -> 'value',
                OLD.traits -> 'name' -> 'value',
                OLD.traits -> 'email' -> 'value',
                OLD.traits -> 'phone' -> 'value',
                OLD.traits -> 'address' -> 'value',
                OLD.traits -> 'company' -> 'value',
                OLD.traits -> 'birthday' -> 'value'
            ) IS DISTINCT FROM ROW(
                NEW.traits -> 'first_name' -> 'value',
                NEW.traits -> 'firstName' -> 'value',
                NEW.traits -> 'last_name' -> 'value',
                NEW.traits -> 'lastName' -> 'value',
                NEW.traits -> 'name' -> 'value',
                NEW.traits -> 'email' -> 'value',
                NEW.traits -> 'phone' -> 'value',
                NEW.traits -> 'address' -> 'value',
                NEW.traits -> 'company' -> 'value',
                NEW.traits -> 'birthday' -> 'value'
            )
        )
        EXECUTE FUNCTION duplicate_note_changed()
        """
    )
    op.execute("INSERT INTO duplicate_changes (profile_id) SELECT profile_id FROM duplicate_candidates")


def downgrade() -> None:
    op.execute("DROP TRIGGER duplicate_profile_changed ON profiles")
    op.execute("DROP TRIGGER duplicate_profile_created ON profiles")
    op.execute("DROP FUNCTION duplicate_note_changed()")
    op.execute("DROP FUNCTION duplicate_note_created()")
    op.execute("DROP TABLE duplicate_changes")
    op.execute("ALTER TABLE duplicate_candidates DROP COLUMN postal_code, DROP COLUMN birthday")
