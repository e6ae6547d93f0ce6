"""Settings of the consent service."""

from __future__ import annotations

from cdp_common.settings import PlatformSettings
from pydantic import Field


class Settings(PlatformSettings):
    """The consent service's settings: the platform's plus its own."""

    port: int = Field(default=8005, validation_alias="CDP_CONSENT_PORT")
