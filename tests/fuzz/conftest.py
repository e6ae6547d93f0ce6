"""Fixtures of the API-document tests: the session's five services (from the cdp_common plugin),
their OpenAPI documents, and a token that holds only one scope, known to every service."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator
from typing import Any

import httpx
import pytest
from cdp_common.testing import SERVICES, Stack, wait_for

__all__ = ["SERVICES", "Stack"]

# The one scope of the narrow token: every service has routes it does not open.
NARROW_SCOPE = "consents:read"


@pytest.fixture
async def http() -> AsyncIterator[httpx.AsyncClient]:
    async with httpx.AsyncClient(timeout=30) as client:
        yield client


@pytest.fixture(scope="session")
def documents(stack: Stack) -> dict[str, dict[str, Any]]:
    """Each service's OpenAPI document, as it serves it."""
    with httpx.Client(timeout=30) as client:
        return {name: client.get(f"{stack.url(name)}/openapi.json").json() for name in SERVICES}


@pytest.fixture(scope="session")
def narrow_token(stack: Stack) -> str:
    """A token with only NARROW_SCOPE, once every service has its replica (403, not 401)."""

    async def create() -> str:
        async with httpx.AsyncClient(timeout=30) as client:
            created = await client.post(
                f"{stack.url('ingest')}/v1/tokens",
                json={"name": "narrow", "scopes": [NARROW_SCOPE]},
                headers=stack.admin(),
            )
            assert created.status_code == 201, created.text
            token: str = created.json()["token"]
            headers = {"Authorization": f"Bearer {token}"}

            async def known_everywhere() -> bool:
                answers = await asyncio.gather(
                    *(
                        client.get(f"{stack.url(name)}/v1/privacy/profiles/p-1", headers=headers)
                        for name in SERVICES
                    )
                )
                return all(answer.status_code == 403 for answer in answers)

            await wait_for(known_everywhere, timeout=60, what="every service to know the narrow token")
            return token

    return asyncio.run(create())
