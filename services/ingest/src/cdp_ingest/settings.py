"""Settings of the ingest service."""

from __future__ import annotations

import ipaddress
from datetime import timedelta

from cdp_common.settings import PlatformSettings
from pydantic import Field, SecretStr

from cdp_ingest.domain.calls import Limits


class Settings(PlatformSettings):
    """The ingest service's settings: the platform's plus its own (all `CDP_*` variables)."""

    port: int = Field(default=8001, validation_alias="CDP_INGEST_PORT")
    default_write_key: SecretStr = SecretStr("")
    # Where browsers reach this service, as analytics.js's settings document names it
    # (e.g. https://track.example.com); empty: the host the settings were asked from.
    ingest_public_url: str = ""
    # Comma-separated addresses or networks of reverse proxies whose X-Forwarded-For is believed.
    trusted_proxies: str = ""
    max_event_bytes: int = Field(default=32 * 1024, ge=1024)
    max_batch_bytes: int = Field(default=500 * 1024, ge=1024)
    max_batch_events: int = Field(default=2500, ge=1)
    max_depth: int = Field(default=16, ge=2)
    max_string_length: int = Field(default=8192, ge=16)
    max_keys_per_object: int = Field(default=250, ge=1)
    max_array_length: int = Field(default=1000, ge=1)
    future_tolerance_s: float = Field(default=24 * 3600, ge=0)
    past_tolerance_s: float = Field(default=2 * 365 * 24 * 3600, ge=0)
    rate_limit_per_s: float = Field(default=1000.0, gt=0)
    rate_limit_burst: int = Field(default=2000, ge=1)
    produce_timeout_s: float = Field(default=10.0, gt=0)
    # The largest record batch of the tracking producer (below the broker's message.max.bytes, 1 MiB by default).
    produce_batch_bytes: int = Field(default=1_000_000, ge=16_384, le=1_000_000)
    write_key_cache_s: float = Field(default=10.0, ge=0)

    def limits(self) -> Limits:
        """Return the limits every tracking call is held to."""
        return Limits(
            max_event_bytes=self.max_event_bytes,
            max_depth=self.max_depth,
            max_string_length=self.max_string_length,
            max_keys_per_object=self.max_keys_per_object,
            max_array_length=self.max_array_length,
            future_tolerance=timedelta(seconds=self.future_tolerance_s),
            past_tolerance=timedelta(seconds=self.past_tolerance_s),
        )

    def proxy_networks(self) -> list[ipaddress.IPv4Network | ipaddress.IPv6Network]:
        """Return the trusted proxies as networks."""
        return [
            ipaddress.ip_network(part.strip(), strict=False)
            for part in self.trusted_proxies.split(",")
            if part.strip()
        ]
