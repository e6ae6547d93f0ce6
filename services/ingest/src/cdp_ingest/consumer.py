"""The ingest service's consumers: erasure receipts (ingest keeps nothing per person)."""

from __future__ import annotations

from cdp_common.events import ProfileErased
from cdp_common.privacy import erasure_handler
from cdp_common.service import ConsumerSpec
from cdp_common.settings import PlatformSettings
from cdp_common.topics import TopicName
from sqlalchemy.ext.asyncio import AsyncSession

SERVICE = "ingest"


async def erase_nothing(*, session: AsyncSession, profile_ids: list[str]) -> dict[str, int]:
    """Ingest holds no rows per profile: accepted events live in Kafka and the profile service."""
    return {}


def consumer_specs(settings: PlatformSettings) -> list[ConsumerSpec]:
    """Return the consumer groups of the service."""
    erased = erasure_handler(
        service=SERVICE, privacy_topic=settings.topic(TopicName.PRIVACY), erase=erase_nothing
    )
    return [ConsumerSpec(purpose="profiles", topics=[TopicName.PROFILES], handlers={ProfileErased: erased})]
