"""The segment service's consumers: which topics it reads and which handler takes each event type."""

from __future__ import annotations

from cdp_common.envelope import Payload
from cdp_common.events import ConsentDenied, ConsentGranted, ConsentWithdrawn
from cdp_common.kafka import Handler
from cdp_common.replica import profiles_consumer_handlers
from cdp_common.service import ConsumerSpec
from cdp_common.settings import PlatformSettings
from cdp_common.topics import TopicName

from cdp_segment import store
from cdp_segment.handlers import SegmentContext, consent_handler, profile_batch_handlers, profile_handlers

SERVICE = "segment"


def consumer_specs(settings: PlatformSettings, context: SegmentContext) -> list[ConsumerSpec]:
    """Return the consumer groups of the service."""
    handlers = profiles_consumer_handlers(
        service=SERVICE,
        privacy_topic=settings.topic(TopicName.PRIVACY),
        table=store.known_profiles,
        erase=store.erase_profiles,
    )
    # Segment's own handlers keep the known-profile record as the replica's do, and
    # also the traits, memberships and their events; the erasure receipt is the replica's.
    handlers.update(profile_handlers(context))
    on_consent = consent_handler(context)
    consents: dict[type[Payload], Handler] = {
        ConsentGranted: on_consent,
        ConsentDenied: on_consent,
        ConsentWithdrawn: on_consent,
    }
    return [
        ConsumerSpec(
            purpose="profiles",
            topics=[TopicName.PROFILES],
            handlers=handlers,
            batch_handlers=profile_batch_handlers(context),
        ),
        ConsumerSpec(purpose="consents", topics=[TopicName.CONSENTS], handlers=consents),
    ]
