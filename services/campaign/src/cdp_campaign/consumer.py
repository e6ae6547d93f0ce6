"""The campaign service's consumers: which topics it reads and which handler takes each event type."""

from __future__ import annotations

import functools
from typing import Any

from cdp_common.events import (
    CampaignSendsRequested,
    OrderRecorded,
    ProfileCreated,
    ProfileUpdated,
    SegmentEntered,
    SegmentExited,
)
from cdp_common.kafka import BatchHandler, Handler
from cdp_common.replica import profiles_consumer_handlers
from cdp_common.service import ConsumerSpec
from cdp_common.settings import PlatformSettings
from cdp_common.topics import TopicName

from cdp_campaign import handlers, jobs, store
from cdp_campaign.context import SENDS_TOPIC, SERVICE, CampaignContext

__all__ = ["SENDS_TOPIC", "SERVICE", "consumer_specs"]


def _bound(handler: Any, ctx: CampaignContext) -> Handler:
    bound: Handler = functools.partial(handler, ctx=ctx)
    return bound


def consumer_specs(settings: PlatformSettings, ctx: CampaignContext | None = None) -> list[ConsumerSpec]:
    """Return the consumer groups of the service."""
    profile_handlers = profiles_consumer_handlers(
        service=SERVICE,
        privacy_topic=settings.topic(TopicName.PRIVACY),
        table=store.known_profiles,
        erase=store.erase_profiles,
    )
    if ctx is None:
        return [ConsumerSpec(purpose="profiles", topics=[TopicName.PROFILES], handlers=profile_handlers)]
    on_changed = _bound(handlers.on_profile_changed, ctx)
    on_changed_together: BatchHandler = functools.partial(handlers.on_profiles_changed, ctx=ctx)
    profile_handlers.update(
        {
            ProfileCreated: on_changed,
            ProfileUpdated: on_changed,
            OrderRecorded: _bound(handlers.on_order_recorded, ctx),
        }
    )
    return [
        ConsumerSpec(
            purpose="profiles",
            topics=[TopicName.PROFILES],
            handlers=profile_handlers,
            batch_handlers={ProfileCreated: on_changed_together, ProfileUpdated: on_changed_together},
        ),
        ConsumerSpec(
            purpose="segments",
            topics=[TopicName.SEGMENTS],
            handlers={
                SegmentEntered: _bound(handlers.on_segment_entered, ctx),
                SegmentExited: _bound(handlers.on_segment_exited, ctx),
            },
            batch_handlers={
                SegmentEntered: functools.partial(handlers.on_segments_entered, ctx=ctx),
                SegmentExited: functools.partial(handlers.on_segments_exited, ctx=ctx),
            },
        ),
        ConsumerSpec(
            purpose="sends",
            topics=[SENDS_TOPIC],
            handlers={CampaignSendsRequested: _bound(jobs.on_sends_requested, ctx)},
            batch_handlers={
                CampaignSendsRequested: functools.partial(jobs.on_sends_requested_together, ctx=ctx)
            },
        ),
    ]
