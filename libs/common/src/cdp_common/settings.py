"""Settings every service shares; a service's Settings class extends PlatformSettings."""

from __future__ import annotations

from pydantic import Field, SecretStr, field_validator
from pydantic_settings import BaseSettings, SettingsConfigDict

from cdp_common.purposes import PurposeSettings
from cdp_common.topics import Topic


class PlatformSettings(PurposeSettings, BaseSettings):
    """Connection and platform-wide settings, read from `CDP_*` environment variables.

    The basis of the gated consent purposes (`CDP_OPT_IN_PURPOSES`) comes from `PurposeSettings`.
    """

    model_config = SettingsConfigDict(env_prefix="CDP_", extra="ignore", frozen=True, populate_by_name=True)

    env: str = Field(default="dev", pattern=r"^[a-z][a-z0-9_-]{0,30}$")
    kafka_bootstrap: str = "127.0.0.1:9092"
    database_url: str = "postgresql://cdp:cdp@127.0.0.1:5432/cdp_dev"
    admin_token: SecretStr = SecretStr("")
    hash_key: SecretStr = SecretStr("dev-only-hash-key")
    host: str = "127.0.0.1"

    topic_partitions: int = Field(default=6, ge=1)
    topic_replication_factor: int = Field(default=1, ge=1)
    topic_min_insync_replicas: int = Field(default=1, ge=1)
    events_retention_ms: int = Field(default=7 * 24 * 3600 * 1000, ge=60_000)
    personal_retention_ms: int = Field(default=7 * 24 * 3600 * 1000, ge=60_000)

    consumer_max_retries: int = Field(default=3, ge=0)
    consumer_retry_backoff_s: float = Field(default=0.2, ge=0)
    consumer_poll_timeout_s: float = Field(default=0.5, gt=0)
    consumer_batch_size: int = Field(default=500, ge=1)
    # After a poll returns records, how long one more poll may wait for what arrived meanwhile:
    # the fetcher asks the broker again only once fetched records are taken, so without it
    # whatever arrived during the last transaction waits a whole extra poll. 0 turns it off.
    consumer_gather_s: float = Field(default=0.005, ge=0)
    # Handled offsets are committed at most this often (0: after every poll). Each commit is a
    # request the broker writes down; what a crash leaves uncommitted is read again and
    # skipped through the processed-event record.
    consumer_commit_interval_s: float = Field(default=0.25, ge=0)
    # A consumer that has completed no poll and finished no message for this long makes /readyz
    # answer 503 naming it; an idle consumer completes an empty poll every consumer_poll_timeout_s.
    consumer_stall_s: float = Field(default=60.0, gt=0)
    # How often each consumer asks the broker for its group's committed offsets and the log end
    # offsets of its partitions, for cdp_consumer_lag_messages.
    consumer_lag_interval_s: float = Field(default=5.0, gt=0)
    # An unpublished outbox row older than this makes /readyz answer 503 (the relay is stuck).
    outbox_stall_s: float = Field(default=60.0, gt=0)
    # Commits wake the relay through NOTIFY; the poll only backs that up.
    outbox_poll_interval_s: float = Field(default=1.0, gt=0)
    outbox_batch_size: int = Field(default=500, ge=1)
    migrate_on_start: bool = True
    # Jobs (backfills, recomputes, model fits): how many run at once in one process (enough that a
    # short job is not kept waiting behind long ones), and a
    # pause between two steps of one job that leaves the database to the event flow.
    job_workers: int = Field(default=4, ge=1)
    job_step_pause_s: float = Field(default=0.0, ge=0)
    db_pool_size: int = Field(default=10, ge=1)
    # The largest request body any route reads (413 payload_too_large past it); the tracking
    # routes keep their own, smaller limits.
    max_body_bytes: int = Field(default=1024 * 1024, ge=1024)
    # The record of processed events (consumers' idempotency) is kept this long, never less than
    # the 7 days the topics keep a message, and pruned every interval.
    processed_events_keep_days: float = Field(default=8.0, ge=7.0)
    processed_events_prune_interval_s: float = Field(default=600.0, gt=0)
    # At a stop, how long a periodic job's run in flight may take to finish before it is cancelled.
    periodic_stop_grace_s: float = Field(default=20.0, ge=0)
    log_level: str = "INFO"
    # A warning or error repeated (same logger, message and exception type) is written once per
    # this interval, the next one written saying how many were held back.
    log_repeat_interval_s: float = Field(default=60.0, gt=0)

    @field_validator("database_url")
    @classmethod
    def _use_asyncpg(cls, value: str) -> str:
        """Accept plain postgresql:// URLs and use the asyncpg driver."""
        for prefix in ("postgresql://", "postgres://"):
            if value.startswith(prefix):
                return "postgresql+asyncpg://" + value[len(prefix) :]
        return value

    def topic(self, name: Topic) -> str:
        """Return the environment's name for a platform topic."""
        return f"{self.env}.{name.value}"

    def dlq_topic(self, name: Topic) -> str:
        """Return the environment's dead-letter topic for a platform topic."""
        return f"{self.env}.{name.dlq}"

    def group_id(self, service: str, purpose: str) -> str:
        """Return the environment's consumer group id for one consumer of a service."""
        return f"{self.env}.{service}.{purpose}"
