"""Fixtures of the end-to-end tests: the session's services come from the cdp_common plugin."""

from __future__ import annotations

from collections.abc import AsyncIterator

import httpx
import pytest
from cdp_common.testing import SERVICES, Stack

__all__ = ["SERVICES", "Stack"]


@pytest.fixture
async def http() -> AsyncIterator[httpx.AsyncClient]:
    async with httpx.AsyncClient(timeout=15) as client:
        yield client
