"""Event handlers of the profile service."""

from __future__ import annotations

import logging
import uuid
from typing import Any

from cdp_common.envelope import Envelope
from cdp_common.events import Identifier, ProfileCreated, ProfileUpdated, TrackingEventReceived, make_envelope
from cdp_common.outbox import add_to_outbox
from sqlalchemy.ext.asyncio import AsyncSession

from cdp_profile import store
from cdp_profile.domain.identity import identifiers_of, traits_of
from cdp_profile.domain.traits import apply_traits
from cdp_profile.metrics import EVENTS_RESOLVED, PROFILES_CREATED

logger = logging.getLogger(__name__)

SERVICE = "profile"


async def resolve_event(*, session: AsyncSession, envelope: Envelope[Any], profiles_topic: str) -> str | None:
    """Attach a tracking event to its person's profile, creating it if needed, and publish the change."""
    event: TrackingEventReceived = envelope.data
    keys = identifiers_of(event)
    if not keys:
        logger.warning("event has no identifier", extra={"event_id": envelope.id})
        return None
    owners = await store.find_profile_ids(session=session, keys=keys)
    created = False
    if owners:
        # The most trusted identifier's profile takes the event.
        profile_id = next(owners[k] for k in keys if k in owners)
    else:
        profile_id = str(uuid.uuid4())
        await store.create_profile(session=session, profile_id=profile_id)
        created = True
    await store.attach_identifiers(
        session=session, profile_id=profile_id, keys=[k for k in keys if k not in owners]
    )
    profile = await store.load_profile(session=session, profile_id=profile_id, for_update=True)
    assert profile is not None
    changed = apply_traits(
        profile.traits,
        traits_of(event),
        source=event.sourceId,
        event_id=envelope.id,
        timestamp=event.timestamp,
    )
    version = await store.save_profile_change(session=session, profile_id=profile_id, changed_traits=changed)
    payload_cls = ProfileCreated if created else ProfileUpdated
    payload = payload_cls(
        profile_id=profile_id,
        version=version,
        event_id=envelope.id,
        event=event,
        identifiers=[Identifier(type=k.type, value=k.value) for k in keys],
        changed_traits={name: trait.value for name, trait in changed.items()},
    )
    await add_to_outbox(
        session=session,
        topic=profiles_topic,
        envelope=make_envelope(
            payload=payload, source=SERVICE, subject=profile_id, id=f"{profile_id}:v{version}"
        ),
    )
    if created:
        PROFILES_CREATED.inc()
    EVENTS_RESOLVED.labels(event.type).inc()
    logger.info(
        "event resolved", extra={"event_id": envelope.id, "profile_id": profile_id, "version": version}
    )
    return profile_id


async def export_profile(*, session: AsyncSession, profile_id: str) -> dict[str, Any] | None:
    """Return everything the profile service holds about one profile, for an access request."""
    profile = await store.load_profile(session=session, profile_id=profile_id)
    if profile is None:
        return None
    return {
        "profile": store.profile_document(profile),
        "traits": {name: trait.to_json() for name, trait in profile.traits.items()},
    }
