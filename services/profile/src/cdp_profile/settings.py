"""Settings of the profile service."""

from __future__ import annotations

from cdp_common.settings import PlatformSettings
from pydantic import Field


class Settings(PlatformSettings):
    """The profile service's settings: the platform's plus its own."""

    port: int = Field(default=8002, validation_alias="CDP_PROFILE_PORT")
    # The one currency money figures are reported in; orders keep their own and are valued in
    # this one at the reference rate of their day.
    reporting_currency: str = Field(
        default="EUR", pattern=r"^[A-Z]{3}$", validation_alias="CDP_REPORTING_CURRENCY"
    )
    phone_default_region: str = Field(
        default="DE", pattern=r"^[A-Z]{2}$", validation_alias="CDP_PROFILE_PHONE_DEFAULT_REGION"
    )
    window_check_interval_s: float = Field(
        default=30.0, gt=0, validation_alias="CDP_PROFILE_WINDOW_CHECK_INTERVAL_S"
    )
    # How often the duplicate queue's job compares the profiles changed since its last run.
    duplicates_interval_s: float = Field(
        default=2.0, gt=0, validation_alias="CDP_PROFILE_DUPLICATES_INTERVAL_S"
    )
    # Profiles one step of a computed trait's backfill goes through: one short transaction
    # under the writers' lock, so the event flow waits at most one step. A step starts at the
    # smaller size and grows (up to the larger) while steps take under a quarter second.
    backfill_batch_size: int = Field(
        default=5000, ge=1, le=100_000, validation_alias="CDP_PROFILE_BACKFILL_BATCH_SIZE"
    )
    backfill_max_batch_size: int = Field(
        default=200_000, ge=1, le=1_000_000, validation_alias="CDP_PROFILE_BACKFILL_MAX_BATCH_SIZE"
    )
