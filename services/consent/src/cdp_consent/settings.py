"""Settings of the consent service."""

from __future__ import annotations

from cdp_common.settings import PlatformSettings
from pydantic import Field, model_validator

DEFAULT_PURPOSES = [
    "email_marketing",
    "sms_marketing",
    "personalisation",
    "analytics",
    "profiling_segmentation",
    "third_party_sharing",
]
DEFAULT_CHANNELS = ["email", "sms", "push", "postal", "phone"]
# Segment's categoryPreferences names → "purpose:channel" ("*" = every configured channel).
DEFAULT_CATEGORY_PURPOSES = {
    "Marketing": ["email_marketing:email", "sms_marketing:sms"],
    "Advertising": ["profiling_segmentation:*"],
    "Analytics": ["analytics:*"],
    "Personalization": ["personalisation:*"],
    "DataSharing": ["third_party_sharing:*"],
}


class Settings(PlatformSettings):
    """The consent service's settings: the platform's plus its own."""

    port: int = Field(default=8005, validation_alias="CDP_CONSENT_PORT")
    purposes: list[str] = Field(default_factory=lambda: list(DEFAULT_PURPOSES), min_length=1)
    channels: list[str] = Field(default_factory=lambda: list(DEFAULT_CHANNELS), min_length=1)
    category_purposes: dict[str, list[str]] = Field(default_factory=lambda: dict(DEFAULT_CATEGORY_PURPOSES))
    # Grants that a tracking event alone cannot give: they need a confirmed double opt-in.
    opt_in_only_grants: list[str] = Field(default_factory=lambda: ["email_marketing:email"])
    max_check_ids: int = Field(default=10_000, ge=1)

    smtp_url: str = "smtp://127.0.0.1:1025"
    smtp_timeout_s: float = Field(default=10.0, gt=0)
    mail_from: str = "CDP <no-reply@cdp.localhost>"
    public_url: str | None = None  # base of the confirmation link; the consent URL when unset
    opt_in_ttl_s: int = Field(default=48 * 3600, ge=1)

    privacy_deadline_days: int = Field(default=30, ge=1)
    privacy_deadline_warning_days: int = Field(default=7, ge=1)
    bundle_retention_days: int = Field(default=30, ge=1)
    ingest_url: str = "http://127.0.0.1:8001"
    profile_url: str = "http://127.0.0.1:8002"
    segment_url: str = "http://127.0.0.1:8003"
    campaign_url: str = "http://127.0.0.1:8004"
    consent_url: str = "http://127.0.0.1:8005"
    assembly_max_attempts: int = Field(default=8, ge=1)
    assembly_retry_s: float = Field(default=2.0, gt=0)
    fetch_timeout_s: float = Field(default=10.0, gt=0)
    scheduler_interval_s: float = Field(default=0.5, gt=0)

    @model_validator(mode="after")
    def _mapping_names_known_purposes(self) -> Settings:
        """Refuse a category mapping or opt-in rule that names an unknown purpose or channel."""
        for pair in [p for pairs in self.category_purposes.values() for p in pairs] + self.opt_in_only_grants:
            purpose, _, channel = pair.partition(":")
            if purpose not in self.purposes or (channel != "*" and channel not in self.channels):
                raise ValueError(f"{pair!r} names an unknown purpose or channel")
        return self

    def confirmation_base(self) -> str:
        """Return the public base URL the confirmation link starts with."""
        return (self.public_url or self.consent_url).rstrip("/")

    def service_urls(self) -> dict[str, str]:
        """Return the base URL of every service, by name."""
        return {
            "ingest": self.ingest_url,
            "profile": self.profile_url,
            "segment": self.segment_url,
            "campaign": self.campaign_url,
            "consent": self.consent_url,
        }
