"""The consent service's consumers: which topics it reads and which handler takes each event type."""

from __future__ import annotations

from functools import partial

from cdp_common.events import PrivacyReceipt, ProfileCreated, ProfileMerged, ProfileUpdated
from cdp_common.kafka import BatchHandler, Handler
from cdp_common.replica import profiles_consumer_handlers
from cdp_common.service import ConsumerSpec
from cdp_common.topics import TopicName

from cdp_consent import handlers, store
from cdp_consent.settings import Settings

SERVICE = handlers.SERVICE


def consumer_specs(settings: Settings) -> list[ConsumerSpec]:
    """Return the consumer groups of the service."""
    context = handlers.ConsentContext.from_settings(
        settings, consents_topic=settings.topic(TopicName.CONSENTS)
    )
    profile_handlers = profiles_consumer_handlers(
        service=SERVICE,
        privacy_topic=settings.topic(TopicName.PRIVACY),
        table=store.known_profiles,
        erase=store.erase_profiles,
    )
    on_changed: Handler = partial(handlers.apply_profile_changed, context=context)
    on_merged: Handler = partial(handlers.apply_profile_merged, context=context)
    profile_handlers.update(
        {ProfileCreated: on_changed, ProfileUpdated: on_changed, ProfileMerged: on_merged}
    )
    # Receipts only: the request_opened and request_completed events are this service's own.
    on_receipt: Handler = partial(
        handlers.apply_privacy_receipt, privacy_topic=settings.topic(TopicName.PRIVACY)
    )
    on_changed_together: BatchHandler = partial(handlers.apply_profiles_changed, context=context)
    return [
        ConsumerSpec(
            purpose="profiles",
            topics=[TopicName.PROFILES],
            handlers=profile_handlers,
            batch_handlers={ProfileCreated: on_changed_together, ProfileUpdated: on_changed_together},
        ),
        ConsumerSpec(purpose="privacy", topics=[TopicName.PRIVACY], handlers={PrivacyReceipt: on_receipt}),
    ]
