"""The privacy hook every service uses: erase on profile.erased and publish a receipt."""

from __future__ import annotations

from collections.abc import Awaitable
from typing import Annotated, Any, Protocol

from fastapi import APIRouter, Depends, Path
from sqlalchemy.ext.asyncio import AsyncSession

from cdp_common.auth import Principal, require_scope
from cdp_common.deps import SessionDep
from cdp_common.envelope import Envelope
from cdp_common.events import PrivacyReceipt, ProfileErased, make_envelope
from cdp_common.kafka import Handler
from cdp_common.outbox import add_to_outbox, purge_published
from cdp_common.web import ApiError


class EraseProfiles(Protocol):
    """A service's own erase function: removes what it holds and says how much."""

    def __call__(self, *, session: AsyncSession, profile_ids: list[str]) -> Awaitable[dict[str, int]]: ...


def erasure_handler(*, service: str, privacy_topic: str, erase: EraseProfiles) -> Handler:
    """Return the handler that erases a person's data and writes the service's receipt."""

    async def handle_profile_erased(*, session: AsyncSession, envelope: Envelope[Any]) -> None:
        data: ProfileErased = envelope.data
        profile_ids = [data.profile_id, *data.merged_profile_ids]
        details = await erase(session=session, profile_ids=profile_ids)
        await purge_published(session=session, keys=profile_ids)
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


class ExportProfile(Protocol):
    """A service's own export: what it holds about one profile, or None."""

    def __call__(self, *, session: AsyncSession, profile_id: str) -> Awaitable[dict[str, Any] | None]: ...


def access_router(*, service: str, export: ExportProfile) -> APIRouter:
    """Return the route that serves this service's part of a person's data (GDPR Art. 15)."""
    router = APIRouter(tags=["privacy"])

    @router.get("/v1/privacy/profiles/{profile_id}")
    async def export_profile_data(
        profile_id: Annotated[str, Path(min_length=1, max_length=200)],
        session: SessionDep,
        _: Annotated[Principal, Depends(require_scope("privacy:admin"))],
    ) -> dict[str, Any]:
        data = await export(session=session, profile_id=profile_id)
        if data is None:
            raise ApiError(status=404, code="not_found", message=f"{service} holds nothing for this profile")
        return {"service": service, "profile_id": profile_id, "data": data}

    return router
