"""The profile service's consumers: tracking events and privacy requests in, changes out through the outbox."""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

from cdp_common.envelope import Envelope
from cdp_common.events import PrivacyRequestOpened, TrackingEventReceived
from cdp_common.service import ConsumerSpec
from cdp_common.topics import TopicName
from sqlalchemy.ext.asyncio import AsyncSession

from cdp_profile import handlers
from cdp_profile.context import ProfileContext
from cdp_profile.resolution import resolve_events


def consumer_specs(context: ProfileContext) -> list[ConsumerSpec]:
    """Return the consumer groups of the service."""

    async def on_tracking_event(*, session: AsyncSession, envelope: Envelope[Any]) -> None:
        # A poll of one event takes the batch path too (half the round trips): what its view
        # cannot decide still goes through the one-event path, as in a longer poll.
        await resolve_events(session=session, envelopes=[envelope], context=context)

    async def on_tracking_events(*, session: AsyncSession, envelopes: Sequence[Envelope[Any]]) -> None:
        await resolve_events(session=session, envelopes=envelopes, context=context)

    async def on_privacy_request(*, session: AsyncSession, envelope: Envelope[Any]) -> None:
        await handlers.handle_privacy_request(session=session, envelope=envelope, context=context)

    return [
        ConsumerSpec(
            purpose="events",
            topics=[TopicName.EVENTS],
            handlers={TrackingEventReceived: on_tracking_event},
            batch_handlers={TrackingEventReceived: on_tracking_events},
        ),
        ConsumerSpec(
            purpose="privacy", topics=[TopicName.PRIVACY], handlers={PrivacyRequestOpened: on_privacy_request}
        ),
    ]
