"""Settings of the ingest service."""

from __future__ import annotations

from cdp_common.settings import PlatformSettings
from pydantic import Field, SecretStr


class Settings(PlatformSettings):
    """The ingest service's settings: the platform's plus its own."""

    port: int = Field(default=8001, validation_alias="CDP_INGEST_PORT")
    default_write_key: SecretStr = SecretStr("")
    max_event_bytes: int = Field(default=32 * 1024, ge=1024)
    max_batch_bytes: int = Field(default=500 * 1024, ge=1024)
    max_batch_events: int = Field(default=2500, ge=1)
    produce_timeout_s: float = Field(default=10.0, gt=0)
    write_key_cache_s: float = Field(default=10.0, ge=0)
