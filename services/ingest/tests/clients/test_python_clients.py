"""The official Python clients, unchanged, with only the host and write key set:
segment-analytics-python and RudderStack's rudder-sdk-python."""

from __future__ import annotations

import asyncio
import secrets
from typing import Any

import pytest
from cdp_common.testing import PlatformUnderTest
from rudderstack.analytics import Client as RudderClient  # type: ignore[import-untyped]
from segment.analytics import Client as SegmentClient  # type: ignore[import-untyped]

from ..conftest import Ingest, read_events_where

pytestmark = pytest.mark.e2e


def drive(client: Any, user_id: str, anonymous_id: str) -> None:
    """Make every kind of call a site makes, then flush."""
    client.identify(user_id, {"email": f"{user_id}@example.com", "plan": "pro"}, anonymous_id=anonymous_id)
    client.track(
        user_id,
        "Order Completed",
        {
            "order_id": "o-" + user_id,
            "total": 27.5,
            "currency": "EUR",
            "products": [{"sku": "s", "price": 27.5, "quantity": 1}],
        },
        anonymous_id=anonymous_id,
        context={
            "externalIds": [
                {"id": "crm-" + user_id, "type": "crm_id", "collection": "users", "encoding": "none"}
            ]
        },
    )
    client.page(user_id, category="Docs", name="Home", properties={"path": "/"}, anonymous_id=anonymous_id)
    client.screen(user_id, name="Settings", anonymous_id=anonymous_id)
    client.group(user_id, "acme", {"name": "ACME"}, anonymous_id=anonymous_id)
    client.alias(anonymous_id, user_id)
    client.flush()


async def check_delivered(platform: PlatformUnderTest, user_id: str, library: str) -> None:
    events = await read_events_where(platform, lambda d: d.userId == user_id, 6)
    assert sorted(e.data.type for e in events) == ["alias", "group", "identify", "page", "screen", "track"]
    by_type = {e.data.type: e.data for e in events}
    assert by_type["identify"].traits["plan"] == "pro"
    assert by_type["track"].properties["total"] == 27.5
    assert by_type["track"].context["externalIds"][0]["type"] == "crm_id"
    assert by_type["group"].groupId == "acme"
    assert by_type["page"].name == "Home"
    assert by_type["track"].sentAt is not None
    assert all(library in str(e.data.context.get("library", {}).get("name", "")) for e in events)


@pytest.mark.parametrize("gzip", [False, True])
async def test_segment_analytics_python_delivers_every_call(
    ingest: Ingest, platform: PlatformUnderTest, gzip: bool
) -> None:
    errors: list[Exception] = []
    client = SegmentClient(
        write_key=ingest.write_key,
        host=ingest.url,
        gzip=gzip,
        sync_mode=True,
        on_error=lambda e, _: errors.append(e),
    )
    user_id = "seg-py-" + secrets.token_hex(4)
    await asyncio.to_thread(drive, client, user_id, "anon-" + user_id)
    assert errors == []
    await check_delivered(platform, user_id, "analytics-python")


async def test_rudder_sdk_python_delivers_every_call(ingest: Ingest, platform: PlatformUnderTest) -> None:
    errors: list[Exception] = []
    client = RudderClient(
        write_key=ingest.write_key, host=ingest.url, sync_mode=True, on_error=lambda e, _: errors.append(e)
    )
    user_id = "rudder-py-" + secrets.token_hex(4)
    await asyncio.to_thread(drive, client, user_id, "anon-" + user_id)
    assert errors == []
    await check_delivered(platform, user_id, "analytics-python")
