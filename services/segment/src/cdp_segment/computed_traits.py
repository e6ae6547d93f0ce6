"""The client segment uses to ask profile to maintain computed traits (event conditions).

main.py passes a `ComputedTraitsClient`; tests pass their own fake through the same
seam. Requests are recorded first and pushed after the transaction, and retried
until profile confirms, so a definition never waits for profile to be up.
"""

from __future__ import annotations

import logging
from typing import Any, Protocol

import httpx
from sqlalchemy.ext.asyncio import AsyncSession, async_sessionmaker

from cdp_segment import store

logger = logging.getLogger(__name__)


class ComputedTraitRefused(Exception):
    """Profile answered that a computed-trait definition is not valid (a 4xx other than 409)."""


class ComputedTraitsClient(Protocol):
    """Defines computed traits in profile."""

    async def define(self, spec: dict[str, Any]) -> None: ...


class HttpComputedTraitsClient:
    """Defines computed traits through profile's `POST /v1/computed-traits`."""

    def __init__(self, *, base_url: str, admin_token: str, timeout_s: float = 5.0) -> None:
        self._base_url = base_url.rstrip("/")
        self._headers = {"Authorization": f"Bearer {admin_token}"}
        self._timeout_s = timeout_s

    async def define(self, spec: dict[str, Any]) -> None:
        """Create the computed trait; one that already exists with this key counts as done."""
        async with httpx.AsyncClient(timeout=self._timeout_s) as client:
            response = await client.post(
                f"{self._base_url}/v1/computed-traits", json=spec, headers=self._headers
            )
        if response.status_code in (200, 201, 202, 409):
            return
        # 404 and 405: profile does not serve the endpoint yet; try again later.
        if 400 <= response.status_code < 500 and response.status_code not in (404, 405):
            raise ComputedTraitRefused(f"{response.status_code}: {response.text[:500]}")
        raise httpx.HTTPStatusError(
            f"profile answered {response.status_code}", request=response.request, response=response
        )


async def push_pending(
    *, session_factory: async_sessionmaker[AsyncSession], client: ComputedTraitsClient
) -> int:
    """Send every computed trait profile has not confirmed; return how many are confirmed now."""
    async with session_factory() as session, session.begin():
        pending = await store.pending_computed_traits(session=session)
    confirmed = 0
    for spec in pending:
        status, error = "defined", None
        try:
            await client.define(spec)
            confirmed += 1
        except ComputedTraitRefused as exc:
            status, error = "refused", str(exc)
            logger.error("profile refused a computed trait", extra={"key": spec["key"], "error": error})
        except (httpx.HTTPError, OSError) as exc:
            status, error = "pending", f"{type(exc).__name__}: {exc}"[:500]
        async with session_factory() as session, session.begin():
            await store.mark_computed_trait(session=session, key=spec["key"], status=status, error=error)
    return confirmed
