"""Segment definitions, the profile copy segments evaluate, memberships, history and model results.

Revision ID: 0002
"""

from alembic import op

revision = "0002"
down_revision = "0001"

# Mirrors cdp_segment.domain.rules.ISO_REGEX: both paths read the same strings as instants.
ISO_REGEX = (
    r"^[0-9]{4}-[0-9]{2}-[0-9]{2}"
    r"([T ][0-9]{2}:[0-9]{2}(:[0-9]{2}(\.[0-9]{1,6})?)?(Z|[+-][0-9]{2}:[0-9]{2})?)?$"
)

SCHEMA = """
        ALTER TABLE known_profiles
          ADD COLUMN traits jsonb NOT NULL DEFAULT '{}',
          ADD COLUMN computed jsonb NOT NULL DEFAULT '{}',
          ADD COLUMN model jsonb NOT NULL DEFAULT '{}',
          ADD COLUMN consents jsonb NOT NULL DEFAULT '{}';
        CREATE INDEX known_profiles_traits ON known_profiles USING gin (traits jsonb_path_ops);
        CREATE INDEX known_profiles_computed ON known_profiles USING gin (computed jsonb_path_ops);
        CREATE INDEX known_profiles_model ON known_profiles USING gin (model jsonb_path_ops);

        CREATE TABLE segments (
          id text PRIMARY KEY,
          key text NOT NULL UNIQUE,
          name text NOT NULL,
          description text NOT NULL DEFAULT '',
          rule jsonb NOT NULL,
          version integer NOT NULL,
          builtin boolean NOT NULL DEFAULT false,
          dependencies text[] NOT NULL,
          uses_clock boolean NOT NULL,
          deleted_at timestamptz,
          created_at timestamptz NOT NULL DEFAULT clock_timestamp(),
          updated_at timestamptz NOT NULL DEFAULT clock_timestamp()
        );
        CREATE INDEX segments_dependencies ON segments USING gin (dependencies);

        CREATE TABLE segment_versions (
          segment_id text NOT NULL REFERENCES segments (id),
          version integer NOT NULL,
          rule jsonb NOT NULL,
          created_at timestamptz NOT NULL DEFAULT clock_timestamp(),
          PRIMARY KEY (segment_id, version)
        );

        CREATE TABLE memberships (
          segment_id text NOT NULL REFERENCES segments (id),
          profile_id text NOT NULL,
          entered_at timestamptz NOT NULL,
          PRIMARY KEY (segment_id, profile_id)
        );
        CREATE INDEX memberships_profile ON memberships (profile_id);

        CREATE TABLE membership_history (
          id bigint GENERATED ALWAYS AS IDENTITY PRIMARY KEY,
          segment_id text NOT NULL REFERENCES segments (id),
          profile_id text NOT NULL,
          change text NOT NULL CHECK (change IN ('entered', 'exited')),
          segment_version integer NOT NULL,
          at timestamptz NOT NULL,
          event_id text NOT NULL,
          reason jsonb NOT NULL
        );
        CREATE INDEX membership_history_profile ON membership_history (profile_id, segment_id, id);
        CREATE INDEX membership_history_segment ON membership_history (segment_id, id);

        CREATE TABLE computed_trait_requests (
          key text PRIMARY KEY,
          spec jsonb NOT NULL,
          status text NOT NULL DEFAULT 'pending',
          error text,
          updated_at timestamptz NOT NULL DEFAULT clock_timestamp()
        );

        CREATE TABLE model_runs (
          model text PRIMARY KEY,
          ran_at timestamptz NOT NULL,
          parameters jsonb NOT NULL,
          summary jsonb NOT NULL
        );
        """


def upgrade() -> None:
    for statement in SCHEMA.split(";"):
        if statement.strip():
            op.execute(statement)
    op.execute(
        f"""
        CREATE FUNCTION segment_ts(value text) RETURNS timestamptz
        LANGUAGE plpgsql IMMUTABLE STRICT PARALLEL SAFE SET timezone = 'UTC' AS $$
        BEGIN
          IF value !~ '{ISO_REGEX}' THEN
            RETURN NULL;
          END IF;
          RETURN value::timestamptz;
        EXCEPTION WHEN others THEN
          RETURN NULL;
        END
        $$;
        """
    )
