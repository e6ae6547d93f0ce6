"""Personalisation consent in campaign sends, with the consent service's answers faked by the platform's
rule: opt-in, recommendations and test sends."""

from __future__ import annotations

import secrets
from email.message import EmailMessage

import httpx
import pytest
from cdp_campaign import store
from cdp_common.events import ProfileUpdated
from cdp_common.purposes import PERSONALISATION
from cdp_common.testing import wait_for
from cdp_common.topics import TopicName

from ..conftest import CampaignUnderTest, email_campaign
from .test_campaigns import create, people, pid

pytestmark = pytest.mark.integration

VARIANT = {
    "key": "a",
    "subject": "Hello {{ profile.first_name | default('there') }}",
    "body": "<p>Hi {{ profile.first_name | default('there') }}</p>"
    "<p>{% for p in recommendations %}{{ p.name }};{% endfor %}{% for s in segments %}[{{ s }}]{% endfor %}</p>",
}


def html_of(mail: EmailMessage) -> str:
    body = mail.get_body(preferencelist=("html",))
    assert body is not None
    return str(body.get_content())


async def broadcast(
    http: httpx.AsyncClient, campaign: CampaignUnderTest, segment: str, people_: list[str]
) -> None:
    created = await create(
        http, email_campaign(audience={"type": "segment", "segment_key": segment}, variants=[VARIANT])
    )
    assert (await http.post(f"/v1/campaigns/{created['id']}/schedule")).json()["status"] == "running"
    sends = await campaign.settled(http, created["id"], people_)
    assert {s["status"] for s in sends.values()} == {"sent"}


async def test_under_opt_in_only_who_granted_personalisation_gets_their_name(
    http: httpx.AsyncClient, campaign: CampaignUnderTest
) -> None:
    segment = "seg-" + secrets.token_hex(4)
    granted, silent, refused = pid("granted"), pid("silent"), pid("refused")
    await people(
        campaign,
        segment,
        {
            p: {"email": f"{p}@example.com", "first_name": p.split("-")[0].title()}
            for p in (granted, silent, refused)
        },
    )
    campaign.consent.granted |= {granted, silent, refused}
    campaign.consent.decisions.update(
        {
            granted: {"personalisation:email": "granted"},
            refused: {"personalisation:push": "granted", "personalisation:email": "withdrawn"},
        }
    )
    campaign.consent.opt_in = frozenset({PERSONALISATION})
    try:
        await broadcast(http, campaign, segment, [granted, silent, refused])
    finally:
        campaign.consent.opt_in = frozenset()
    assert [m["Subject"] for m in campaign.mailbox.to(f"{granted}@example.com")] == ["Hello Granted"]
    for person in (silent, refused):
        [mail] = campaign.mailbox.to(f"{person}@example.com")
        assert mail["Subject"] == "Hello there"
        assert segment not in html_of(mail)
    assert f"[{segment}]" in html_of(campaign.mailbox.to(f"{granted}@example.com")[0])


async def test_no_recommendations_for_a_person_excluded_from_personalisation(
    http: httpx.AsyncClient, campaign: CampaignUnderTest
) -> None:
    segment = "seg-" + secrets.token_hex(4)
    tag = secrets.token_hex(3)
    buyer, objector = pid("buyer"), pid("objector")
    await people(
        campaign, segment, {p: {"email": f"{p}@example.com", "first_name": "Sam"} for p in (buyer, objector)}
    )
    lines = [
        {
            "product_id": f"tea-{tag}",
            "name": f"TEA-{tag}",
            "category": f"tea-{tag}",
            "quantity": 1,
            "price": 5,
        }
    ]
    lines_other = [
        {
            "product_id": f"pot-{tag}",
            "name": f"POT-{tag}",
            "category": f"tea-{tag}",
            "quantity": 3,
            "price": 9,
        }
    ]
    for person, products in ((buyer, lines), (objector, lines), (pid("shop"), lines_other)):
        event = campaign.track_event(
            "Order Completed", {"order_id": secrets.token_hex(4), "products": products}
        )
        await campaign.publish(
            TopicName.PROFILES,
            payload=ProfileUpdated(profile_id=person, version=2, event=event),
            subject=person,
        )
    campaign.consent.granted |= {buyer, objector}
    campaign.consent.decisions[objector] = {"personalisation:email": "denied"}

    async def purchases_known() -> bool:
        async with campaign.ctx.session_factory() as session:
            sales = await store.catalogue_sales(session=session)
        return (
            any(s["product_id"] == f"pot-{tag}" for s in sales)
            and sum(s["product_id"] == f"tea-{tag}" for s in sales) == 2
        )

    await wait_for(purchases_known, what="the purchases")
    await broadcast(http, campaign, segment, [buyer, objector])
    assert f"POT-{tag};" in html_of(campaign.mailbox.to(f"{buyer}@example.com")[0])
    objector_html = html_of(campaign.mailbox.to(f"{objector}@example.com")[0])
    assert f"POT-{tag}" not in objector_html
    assert "Hi there" in objector_html


async def test_a_test_send_rendered_for_an_excluded_person_is_not_personal(
    http: httpx.AsyncClient, campaign: CampaignUnderTest
) -> None:
    ada = pid("ada")
    await campaign.profile(ada, {"email": f"{ada}@example.com", "first_name": "Ada"})
    created = await create(http, email_campaign())
    campaign.consent.decisions[ada] = {"personalisation:email": "withdrawn"}

    async def test_send(address: str) -> str:
        response = await http.post(
            f"/v1/campaigns/{created['id']}/test-send", json={"address": address, "profile_id": ada}
        )
        assert response.status_code == 200, response.text
        return str(campaign.mailbox.to(address)[-1]["Subject"])

    async def known() -> bool:
        async with campaign.ctx.session_factory() as session:
            return bool(await store.contacts_of(session=session, profile_ids=[ada]))

    await wait_for(known, what="campaign to learn ada")
    assert await test_send(f"qa-{secrets.token_hex(3)}@example.com") == "[TEST] Hello there"
    campaign.consent.decisions[ada] = {"personalisation:email": "granted"}
    assert await test_send(f"qa-{secrets.token_hex(3)}@example.com") == "[TEST] Hello Ada"
