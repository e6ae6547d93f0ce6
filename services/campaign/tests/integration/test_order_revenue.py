"""A campaign's conversion revenue follows the order as profile records it: the same order sent by the
web tag and the POS converts once, and a refund lowers the revenue to what the order is now worth."""

from __future__ import annotations

import secrets
from typing import Any

import httpx
import pytest
from cdp_common.events import OrderLine, OrderRecorded, ProfileUpdated
from cdp_common.testing import wait_for
from cdp_common.topics import TopicName

from ..conftest import CampaignUnderTest, email_campaign
from .test_campaigns import _all_decided, create, people, pid

pytestmark = [pytest.mark.integration, pytest.mark.timeout(120)]


def recorded(
    campaign: CampaignUnderTest, profile_id: str, order_id: str, *, version: int, state: str, net: float
) -> OrderRecorded:
    """The order as profile publishes it, in EUR (the reporting currency)."""
    return OrderRecorded(
        profile_id=profile_id,
        version=version,
        order_id=order_id,
        state=state,
        time=campaign.clock.now(),
        currency="EUR",
        total=100.0,
        refunded=100.0 - net,
        net=net,
        value=net,
        reporting_currency="EUR",
        lines=[
            OrderLine(sku="TEA-1", price=70.0),
            OrderLine(sku="CUP-2", price=30.0, returned=int(net < 100)),
        ],
    )


async def test_one_order_from_two_sources_converts_once_at_what_it_is_worth(
    http: httpx.AsyncClient, campaign: CampaignUnderTest
) -> None:
    segment = "seg-" + secrets.token_hex(4)
    buyer = pid("buyer")
    await people(campaign, segment, {buyer: {"email": f"{buyer}@example.com"}})
    campaign.consent.granted.add(buyer)
    created = await create(http, email_campaign(audience={"type": "segment", "segment_key": segment}))
    await http.post(f"/v1/campaigns/{created['id']}/schedule")
    await wait_for(lambda: _all_decided(http, campaign, created["id"]), timeout=60, what="the send")

    order_id = "o-" + secrets.token_hex(4)
    properties = {"order_id": order_id, "total": 100.0, "revenue": 100.0, "currency": "EUR"}
    web = campaign.track_event("Order Completed", properties)
    pos = campaign.track_event("Order Completed", {**properties, "channel": "store"}).model_copy(
        update={"sourceId": "src_pos", "messageId": f"txn:purchase:{order_id}"}
    )
    await campaign.publish_many(
        TopicName.PROFILES,
        [
            (ProfileUpdated(profile_id=buyer, version=2, event=web), buyer),
            (recorded(campaign, buyer, order_id, version=2, state="completed", net=100.0), buyer),
            (ProfileUpdated(profile_id=buyer, version=3, event=pos), buyer),
        ],
    )

    async def report_with(revenue: float) -> dict[str, Any] | None:
        report: dict[str, Any] = (await http.get(f"/v1/campaigns/{created['id']}/report")).json()
        variant = report["variants"]["a"]
        return report if variant["converted"] == 1 and variant["revenue"] == pytest.approx(revenue) else None

    await wait_for(lambda: report_with(100.0), timeout=30, what="one conversion worth 100")
    # The POS sale was the same order: still one conversion, still 100 (and not 200).
    await campaign.publish(
        TopicName.PROFILES,
        payload=recorded(campaign, buyer, order_id, version=4, state="partially_refunded", net=70.0),
        subject=buyer,
        source="profile",
    )
    report = await wait_for(lambda: report_with(70.0), timeout=30, what="the refund to lower the revenue")
    assert report["variants"]["a"]["converted"] == 1
