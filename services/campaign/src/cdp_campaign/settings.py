"""Settings of the campaign service."""

from __future__ import annotations

from datetime import time

from cdp_common.settings import PlatformSettings
from pydantic import Field, SecretStr


class Settings(PlatformSettings):
    """The campaign service's settings: the platform's plus its own."""

    port: int = Field(default=8004, validation_alias="CDP_CAMPAIGN_PORT")
    ingest_url: str = "http://127.0.0.1:8001"
    consent_url: str = "http://127.0.0.1:8005"
    default_write_key: SecretStr = SecretStr("")
    smtp_url: str = "smtp://127.0.0.1:1025"
    campaign_public_url: str = ""
    campaign_mail_from: str = "CDP <campaigns@example.com>"
    campaign_smtp_connections: int = Field(default=8, ge=1, le=100)
    campaign_smtp_timeout_s: float = Field(default=10.0, gt=0)
    campaign_quiet_start: time = time(21, 0)
    campaign_quiet_end: time = time(8, 0)
    campaign_frequency_cap: int = Field(default=3, ge=0)
    campaign_frequency_window_hours: float = Field(default=24.0, gt=0)
    campaign_send_job_size: int = Field(default=200, ge=1, le=1000)
    # Send jobs one replica works through at once over its SMTP connections. More keeps the
    # connections busier; a worker killed mid-send leaves every claimed job's hand-overs
    # unknown (never repeated), so more jobs at once also means more unknown after a crash.
    campaign_parallel_jobs: int = Field(default=1, ge=1, le=64)
    # Worker processes that render templates and build messages (0: on the event loop itself),
    # the hard limit on composing one message there, and the address space each may use.
    campaign_compose_processes: int = Field(default=1, ge=0, le=32)
    campaign_compose_timeout_s: float = Field(default=2.0, gt=0)
    campaign_compose_memory_mb: int = Field(default=1024, ge=256)
    campaign_send_attempts: int = Field(default=3, ge=1, le=10)
    campaign_retry_backoff_s: float = Field(default=0.2, ge=0)
    campaign_webhook_allowlist: list[str] = Field(default_factory=list)
    campaign_webhook_timeout_s: float = Field(default=5.0, gt=0)
    campaign_sms_url: str = ""
    campaign_sms_token: SecretStr = SecretStr("")
    campaign_scheduler_interval_s: float = Field(default=1.0, gt=0)
    campaign_http_timeout_s: float = Field(default=5.0, gt=0)

    @property
    def public_url(self) -> str:
        """Base URL at which recipients reach the tracking links."""
        return (self.campaign_public_url or f"http://{self.host}:{self.port}").rstrip("/")
