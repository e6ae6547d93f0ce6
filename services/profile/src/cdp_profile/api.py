"""HTTP routes of the profile service."""

from __future__ import annotations

from typing import Annotated, Any

from cdp_common.auth import Principal, require_scope
from cdp_common.deps import SessionDep
from cdp_common.privacy import access_router
from cdp_common.web import ApiError
from fastapi import APIRouter, Depends, Path

from cdp_profile import handlers, store
from cdp_profile.domain.identity import parse_ref

router = APIRouter(prefix="/v1/profiles", tags=["profiles"])

ProfileReader = Annotated[Principal, Depends(require_scope("profiles:read"))]
ProfileRef = Annotated[str, Path(min_length=1, max_length=1100, description="a profile id or type:value")]


async def _load(session: SessionDep, ref: str) -> store.StoredProfile:
    profile_id = await store.resolve_ref(session=session, key=parse_ref(ref), ref=ref)
    profile = None if profile_id is None else await store.load_profile(session=session, profile_id=profile_id)
    if profile is None:
        raise ApiError(status=404, code="profile_not_found", message="no profile matches this reference")
    return profile


@router.get("/{ref}")
async def get_profile(ref: ProfileRef, session: SessionDep, _: ProfileReader) -> dict[str, Any]:
    """Return a profile by id or by `type:value`."""
    return store.profile_document(await _load(session, ref))


@router.get("/{ref}/traits")
async def get_traits(ref: ProfileRef, session: SessionDep, _: ProfileReader) -> dict[str, Any]:
    """Return a profile's traits with their provenance."""
    profile = await _load(session, ref)
    return {"traits": {name: trait.to_json() for name, trait in profile.traits.items()}}


routers = [router, access_router(service=handlers.SERVICE, export=handlers.export_profile)]
