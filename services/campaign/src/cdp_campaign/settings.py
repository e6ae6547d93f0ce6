"""Settings of the campaign service."""

from __future__ import annotations

from cdp_common.settings import PlatformSettings
from pydantic import Field


class Settings(PlatformSettings):
    """The campaign service's settings: the platform's plus its own."""

    port: int = Field(default=8004, validation_alias="CDP_CAMPAIGN_PORT")
