"""The profile service's consumers: tracking events in, profile changes out through the outbox."""

from __future__ import annotations

from typing import Any

from cdp_common.envelope import Envelope
from cdp_common.events import TrackingEventReceived
from cdp_common.service import ConsumerSpec
from cdp_common.settings import PlatformSettings
from cdp_common.topics import TopicName
from sqlalchemy.ext.asyncio import AsyncSession

from cdp_profile import handlers

SERVICE = handlers.SERVICE


def consumer_specs(settings: PlatformSettings) -> list[ConsumerSpec]:
    """Return the consumer groups of the service."""
    profiles_topic = settings.topic(TopicName.PROFILES)

    async def on_tracking_event(*, session: AsyncSession, envelope: Envelope[Any]) -> None:
        await handlers.resolve_event(session=session, envelope=envelope, profiles_topic=profiles_topic)

    return [
        ConsumerSpec(
            purpose="events", topics=[TopicName.EVENTS], handlers={TrackingEventReceived: on_tracking_event}
        )
    ]
