"""The ingest service's consumers: none beyond the token replica every service runs."""

from __future__ import annotations

from cdp_common.service import ConsumerSpec
from cdp_common.settings import PlatformSettings

SERVICE = "ingest"


def consumer_specs(settings: PlatformSettings) -> list[ConsumerSpec]:
    """Return the consumer groups of the service."""
    return []
