"""Settings of the profile service."""

from __future__ import annotations

from cdp_common.settings import PlatformSettings
from pydantic import Field


class Settings(PlatformSettings):
    """The profile service's settings: the platform's plus its own."""

    port: int = Field(default=8002, validation_alias="CDP_PROFILE_PORT")
