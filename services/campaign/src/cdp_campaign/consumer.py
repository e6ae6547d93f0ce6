"""The campaign service's consumers: which topics it reads and which handler takes each event type."""

from __future__ import annotations

from cdp_common.replica import profiles_consumer_handlers
from cdp_common.service import ConsumerSpec
from cdp_common.settings import PlatformSettings
from cdp_common.topics import TopicName

from cdp_campaign import store

SERVICE = "campaign"


def consumer_specs(settings: PlatformSettings) -> list[ConsumerSpec]:
    """Return the consumer groups of the service."""
    handlers = profiles_consumer_handlers(
        service=SERVICE,
        privacy_topic=settings.topic(TopicName.PRIVACY),
        table=store.known_profiles,
        erase=store.erase_profiles,
    )
    return [ConsumerSpec(purpose="profiles", topics=[TopicName.PROFILES], handlers=handlers)]
