"""The person's account in templates: `{{ account.name }}` renders the company profile's change
messages name, and follows when the account changes."""

from __future__ import annotations

import secrets

import httpx
import pytest
from cdp_campaign import store
from cdp_common.events import AccountOfProfile, ProfileUpdated
from cdp_common.testing import wait_for
from cdp_common.topics import TopicName

from ..conftest import CampaignUnderTest, email_campaign
from .test_campaigns import create, people, pid
from .test_personalisation import html_of

pytestmark = pytest.mark.integration

VARIANT = {
    "key": "a",
    "subject": "News for {{ account.name | default('your company') }}",
    "body": "<p>{% for a in accounts %}{{ a.group_id }}:{{ a.industry }};{% endfor %}</p>",
}


async def test_a_template_renders_the_name_of_the_persons_account(
    http: httpx.AsyncClient, campaign: CampaignUnderTest
) -> None:
    segment = "seg-" + secrets.token_hex(4)
    buyer, loner = pid("buyer"), pid("loner")
    await people(campaign, segment, {p: {"email": f"{p}@example.com"} for p in (buyer, loner)})
    acme = AccountOfProfile(group_id="acme", traits={"name": "Acme", "industry": "Retail"})
    older = AccountOfProfile(group_id="initech", traits={"name": "Initech", "industry": "Software"})
    await campaign.publish(
        TopicName.PROFILES,
        payload=ProfileUpdated(profile_id=buyer, version=2, accounts=[acme, older]),
        subject=buyer,
    )

    async def accounts_known() -> bool:
        async with campaign.ctx.session_factory() as session:
            held = await store.contacts_of(session=session, profile_ids=[buyer])
        return bool(held[buyer]["accounts"])

    await wait_for(accounts_known, timeout=30, what="the service to learn the person's accounts")
    campaign.consent.granted |= {buyer, loner}
    created = await create(
        http, email_campaign(audience={"type": "segment", "segment_key": segment}, variants=[VARIANT])
    )
    assert (await http.post(f"/v1/campaigns/{created['id']}/schedule")).json()["status"] == "running"
    sends = await campaign.settled(http, created["id"], [buyer, loner])
    assert {s["status"] for s in sends.values()} == {"sent"}
    [mail] = campaign.mailbox.to(f"{buyer}@example.com")
    assert mail["Subject"] == "News for Acme"
    assert "acme:Retail;initech:Software;" in html_of(mail)
    [other] = campaign.mailbox.to(f"{loner}@example.com")
    assert other["Subject"] == "News for your company"


async def test_the_account_follows_the_persons_latest_message(campaign: CampaignUnderTest) -> None:
    person = pid("member")
    renamed = AccountOfProfile(group_id="acme", traits={"name": "Acme Group", "industry": "Wholesale"})
    for version, accounts in (
        (1, [AccountOfProfile(group_id="acme", traits={"name": "Acme"})]),
        (3, [renamed]),
    ):
        await campaign.publish(
            TopicName.PROFILES,
            payload=ProfileUpdated(profile_id=person, version=version, accounts=accounts),
            subject=person,
        )
    # An older message arriving late changes nothing; a change that carries no accounts keeps them.
    late: list[tuple[int, list[AccountOfProfile] | None]] = [(2, []), (4, None)]
    for version, carried in late:
        await campaign.publish(
            TopicName.PROFILES,
            payload=ProfileUpdated(
                profile_id=person, version=version, accounts=carried, changed_traits={"plan": "pro"}
            ),
            subject=person,
        )

    async def latest_held() -> bool:
        async with campaign.ctx.session_factory() as session:
            held = await store.contacts_of(session=session, profile_ids=[person])
        return person in held and held[person]["version"] == 4

    await wait_for(latest_held, timeout=30, what="the latest message")
    async with campaign.ctx.session_factory() as session:
        held = await store.contacts_of(session=session, profile_ids=[person])
    assert held[person]["accounts"] == [renamed.model_dump()]
