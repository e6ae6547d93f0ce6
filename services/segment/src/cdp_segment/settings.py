"""Settings of the segment service."""

from __future__ import annotations

from cdp_common.settings import PlatformSettings
from pydantic import Field


class Settings(PlatformSettings):
    """The segment service's settings: the platform's plus its own."""

    port: int = Field(default=8003, validation_alias="CDP_SEGMENT_PORT")
