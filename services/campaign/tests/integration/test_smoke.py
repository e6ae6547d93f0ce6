"""Smoke: the service starts, and a campaign can be created and read back."""

from __future__ import annotations

import httpx
import pytest

from ..conftest import email_campaign

pytestmark = pytest.mark.integration


async def test_create_and_read(http: httpx.AsyncClient) -> None:
    created = await http.post("/v1/campaigns", json=email_campaign())
    assert created.status_code == 201, created.text
    got = await http.get(f"/v1/campaigns/{created.json()['id']}")
    assert got.json()["status"] == "draft"
