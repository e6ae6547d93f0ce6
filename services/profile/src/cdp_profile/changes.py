"""A profile's changes as the platform hears of them: the survivor of a merge, the change
message with before and after of what changed, and saving a profile with its message."""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

from cdp_common.envelope import Envelope, Payload
from cdp_common.events import AccountOfProfile, Identifier, ProfileCreated, ProfileUpdated, make_envelope
from cdp_common.outbox import add_to_outbox
from sqlalchemy.ext.asyncio import AsyncSession

from cdp_profile import store
from cdp_profile.context import SERVICE, ProfileContext
from cdp_profile.domain.identity import IdentifierKey


def survivor_order(profile: store.StoredProfile, counts: dict[str, int]) -> tuple[int, str, str, str]:
    """Rank merge candidates: a known customer first, then the earliest first event, then creation."""
    first_seen = profile.aggregates.get("first_seen") or "9999"
    return (0 if counts.get("user_id") else 1, first_seen, profile.created_at.isoformat(), profile.id)


async def publish(
    *, session: AsyncSession, topic: str, payload: Payload, subject: str, event_id: str
) -> None:
    """Add a message of the service to the outbox."""
    await add_to_outbox(
        session=session,
        topic=topic,
        envelope=make_envelope(payload=payload, source=SERVICE, subject=subject, id=event_id),
    )


def _changes(before: dict[str, Any], after: dict[str, Any]) -> tuple[dict[str, Any], dict[str, Any]]:
    changed = {name: value for name, value in after.items() if before.get(name) != value}
    changed.update({name: None for name in before if name not in after})
    return changed, {name: before.get(name) for name in changed}


def update_payload(
    *,
    profile: store.StoredProfile,
    traits_before: dict[str, Any],
    computed_before: dict[str, Any],
    created: bool = False,
    envelope: Envelope[Any] | None = None,
    keys: Sequence[IdentifierKey] = (),
    accounts: Sequence[AccountOfProfile] | None = None,
) -> ProfileCreated | ProfileUpdated:
    """Return the created/updated change of a profile at its current version, before and after
    (with the person's accounts when they changed)."""
    changed_traits, previous_traits = _changes(
        traits_before, {name: trait.value for name, trait in profile.traits.items()}
    )
    changed_computed, previous_computed = _changes(computed_before, profile.computed)
    payload_cls = ProfileCreated if created else ProfileUpdated
    return payload_cls(
        profile_id=profile.id,
        version=profile.version,
        event_id=envelope.id if envelope is not None else None,
        event=envelope.data if envelope is not None else None,
        identifiers=[Identifier(type=k.type, value=k.value) for k in keys],
        changed_traits=changed_traits,
        changed_computed_traits=changed_computed,
        previous_traits=previous_traits,
        previous_computed_traits=previous_computed,
        accounts=None if accounts is None else list(accounts),
    )


def profile_change(payload: ProfileCreated | ProfileUpdated) -> Envelope[Any]:
    """Return the envelope a profile change is published in, with its version in the id."""
    return make_envelope(
        payload=payload,
        source=SERVICE,
        subject=payload.profile_id,
        id=f"{payload.profile_id}:v{payload.version}",
    )


async def publish_update(
    *,
    session: AsyncSession,
    context: ProfileContext,
    profile: store.StoredProfile,
    traits_before: dict[str, Any],
    computed_before: dict[str, Any],
    created: bool = False,
    envelope: Envelope[Any] | None = None,
    keys: Sequence[IdentifierKey] = (),
    accounts: Sequence[AccountOfProfile] | None = None,
) -> int:
    """Save a profile and publish created/updated with before and after of what changed."""
    version = await store.save_profile(session=session, profile=profile)
    payload = update_payload(
        profile=profile,
        traits_before=traits_before,
        computed_before=computed_before,
        created=created,
        envelope=envelope,
        keys=keys,
        accounts=accounts,
    )
    await add_to_outbox(session=session, topic=context.profiles_topic, envelope=profile_change(payload))
    return version
