"""The privacy hook every service uses: erase on profile.erased and publish a receipt."""

from __future__ import annotations

from collections.abc import Awaitable
from typing import Any, Protocol

from sqlalchemy.ext.asyncio import AsyncSession

from cdp_common.envelope import Envelope
from cdp_common.events import PrivacyReceipt, ProfileErased, make_envelope
from cdp_common.kafka import Handler
from cdp_common.outbox import add_to_outbox


class EraseProfiles(Protocol):
    """A service's own erase function: removes what it holds and says how much."""

    def __call__(self, *, session: AsyncSession, profile_ids: list[str]) -> Awaitable[dict[str, int]]: ...


def erasure_handler(*, service: str, privacy_topic: str, erase: EraseProfiles) -> Handler:
    """Return the handler that erases a person's data and writes the service's receipt."""

    async def handle_profile_erased(*, session: AsyncSession, envelope: Envelope[Any]) -> None:
        data: ProfileErased = envelope.data
        profile_ids = [data.profile_id, *data.merged_profile_ids]
        details = await erase(session=session, profile_ids=profile_ids)
        receipt = make_envelope(
            payload=PrivacyReceipt(
                request_id=data.request_id, service=service, profile_ids=profile_ids, details=details
            ),
            source=service,
            subject=data.request_id,
            id=f"{data.request_id}:{service}:receipt",
        )
        await add_to_outbox(session=session, topic=privacy_topic, envelope=receipt)

    return handle_profile_erased
