"""Tables and queries of the campaign service, in its own schema."""

from __future__ import annotations

from typing import Any

import sqlalchemy as sa
from cdp_common.replica import erase_known_profiles, export_known_profile, known_profiles_table
from sqlalchemy.ext.asyncio import AsyncSession

metadata = sa.MetaData()
known_profiles = known_profiles_table(metadata)


async def erase_profiles(*, session: AsyncSession, profile_ids: list[str]) -> dict[str, int]:
    """Delete everything held about these profiles; return the rows removed per table."""
    return {
        "known_profiles": await erase_known_profiles(
            session=session, table=known_profiles, profile_ids=profile_ids
        )
    }


async def export_profile(*, session: AsyncSession, profile_id: str) -> dict[str, Any] | None:
    """Return everything held about one profile, or None."""
    known = await export_known_profile(session=session, table=known_profiles, profile_id=profile_id)
    return None if known is None else {"known_profile": known}
