"""Settings of the segment service."""

from __future__ import annotations

from cdp_common.settings import PlatformSettings
from pydantic import Field


class Settings(PlatformSettings):
    """The segment service's settings: the platform's plus its own."""

    port: int = Field(default=8003, validation_alias="CDP_SEGMENT_PORT")
    profile_url: str = Field(default="http://127.0.0.1:8002", validation_alias="CDP_PROFILE_URL")
    lifecycle_new_days: int = Field(default=30, ge=1)
    lifecycle_active_days: int = Field(default=90, ge=1)
    lifecycle_churn_days: int = Field(default=180, ge=2)
    scheduler_interval_s: float = Field(default=60.0, gt=0)
    models_interval_s: float = Field(default=3600.0, gt=0)
    computed_traits_retry_s: float = Field(default=10.0, gt=0)
    cluster_count: int = Field(default=4, ge=2, le=12)
    clv_horizon_days: int = Field(default=365, ge=30)
    preview_sample_size: int = Field(default=10, ge=0, le=100)
    # Jobs: profiles one step of a segment's evaluation looks at, values one step copies from
    # profile, and how often a building segment asks profile about its computed traits.
    segment_build_batch: int = Field(default=10_000, ge=1)
    computed_trait_page: int = Field(default=5_000, ge=1, le=10_000)
    computed_trait_poll_s: float = Field(default=1.0, gt=0)
    # Model runs: profiles one step reads or scores, and the most customers k-means and BG/NBD are
    # fitted on (RFM's quintiles are exact over the whole base).
    model_batch: int = Field(default=20_000, ge=1)
    model_fit_sample: int = Field(default=10_000, ge=100)
    # A preview's count runs at most this long; past it the answer is an estimate from a sample.
    preview_timeout_s: float = Field(default=3.0, gt=0)
