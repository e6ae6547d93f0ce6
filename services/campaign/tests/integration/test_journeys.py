"""A welcome journey driven by a clock the test moves: send, wait, branch on engagement, wait for
an event, exit on the goal; positions are stored and read back through the API."""

from __future__ import annotations

import functools
import secrets
from typing import Any

import httpx
import pytest
from cdp_common.events import ProfileUpdated, SegmentEntered
from cdp_common.testing import wait_for
from cdp_common.topics import TopicName

from ..conftest import CampaignUnderTest

pytestmark = pytest.mark.integration


def welcome(segment: str) -> dict[str, Any]:
    def mail(key: str, subject: str) -> dict[str, Any]:
        return {
            "key": key,
            "subject": subject,
            "body": f"<p>{subject}, {{{{ profile.first_name | default('friend') }}}}</p>",
        }

    return {
        "name": "Welcome series",
        "trigger": {"type": "segment_entered", "segment_key": segment},
        "steps": [
            {"type": "send", "content": mail("welcome", "Welcome")},
            {"type": "wait", "hours": 24},
            {"type": "branch", "engagement": "opened", "then_step": 4, "else_step": 3},
            {"type": "send", "content": mail("reminder", "Did you see this")},
            {"type": "wait", "until_event": "Order Completed", "hours": 72},
            {"type": "send", "content": mail("thanks", "Thank you")},
        ],
        "goal": {"event": "Subscription Started"},
    }


async def position(http: httpx.AsyncClient, journey_id: str, profile_id: str) -> dict[str, Any] | None:
    response = await http.get(f"/v1/journeys/{journey_id}/positions/{profile_id}")
    return response.json() if response.status_code == 200 else None


def subjects(campaign: CampaignUnderTest, address: str) -> list[str]:
    return [str(m["Subject"]) for m in campaign.mailbox.to(address)]


async def test_a_welcome_journey_follows_the_clock_and_the_persons_behaviour(
    http: httpx.AsyncClient, campaign: CampaignUnderTest
) -> None:
    segment = "new-" + secrets.token_hex(4)
    created = await http.post("/v1/journeys", json=welcome(segment))
    assert created.status_code == 201, created.text
    journey_id = created.json()["id"]
    assert (await http.post(f"/v1/journeys/{journey_id}/activate")).json()["status"] == "active"
    assert (await http.put(f"/v1/journeys/{journey_id}", json=welcome(segment))).status_code == 409

    quiet, opener, subscriber = (f"{n}-{secrets.token_hex(4)}" for n in ("quiet", "opener", "subscriber"))
    people = [quiet, opener, subscriber]
    campaign.consent.granted |= set(people)
    await campaign.publish_many(
        TopicName.PROFILES,
        [
            (
                ProfileUpdated(
                    profile_id=p, version=1, changed_traits={"email": f"{p}@example.com", "first_name": p[:5]}
                ),
                p,
            )
            for p in people
        ],
    )
    for p in people:
        await wait_for(functools.partial(_known, campaign, p), what="the profile")
    start = campaign.clock.now()
    await campaign.publish_many(
        TopicName.SEGMENTS,
        [(SegmentEntered(profile_id=p, segment_key=segment, segment_version=1, at=start), p) for p in people],
    )
    for p in people:
        await wait_for(
            functools.partial(_subjects_are, campaign, f"{p}@example.com", ["Welcome"]),
            what="the welcome e-mail",
        )
    stored = await position(http, journey_id, quiet)
    assert stored is not None
    assert stored["state"] == "waiting"
    assert stored["step"] == 1

    # The opener opens the welcome; the subscriber reaches the goal and leaves the journey.
    [welcome_mail] = campaign.mailbox.to(f"{opener}@example.com")
    html = welcome_mail.get_body(preferencelist=("html",)).get_content()  # type: ignore[union-attr]
    async with httpx.AsyncClient() as browser:
        await browser.get(
            html.split('<img src="')[1].split('"')[0], headers={"User-Agent": "Mozilla/5.0 (iPhone)"}
        )
    await campaign.profile(subscriber, {}, version=2, event=campaign.track_event("Subscription Started"))
    await wait_for(lambda: _state_is(http, journey_id, subscriber, "exited"), what="the subscriber to exit")

    campaign.clock.advance(hours=1)
    await campaign.tick()
    assert subjects(campaign, f"{quiet}@example.com") == ["Welcome"]  # an hour is not a day

    campaign.clock.advance(hours=23)
    try:
        await campaign.tick()
        await wait_for(
            lambda: _subjects_are(campaign, f"{quiet}@example.com", ["Welcome", "Did you see this"]),
            what="the reminder",
        )
        opener_position = await wait_for(
            lambda: _state_is(http, journey_id, opener, "waiting"), what="the opener"
        )
        assert opener_position["step"] == 4  # skipped the reminder
        assert opener_position["waiting_for"] == "Order Completed"
        assert subjects(campaign, f"{opener}@example.com") == ["Welcome"]

        await campaign.profile(
            quiet, {}, version=2, event=campaign.track_event("Order Completed", {"revenue": 30})
        )
        await wait_for(
            lambda: _subjects_are(
                campaign, f"{quiet}@example.com", ["Welcome", "Did you see this", "Thank you"]
            ),
            what="the thanks",
        )
        done = await wait_for(lambda: _state_is(http, journey_id, quiet, "done"), what="the journey to end")
        assert [s["variant"] for s in done["sends"]] == ["welcome", "reminder", "thanks"]

        campaign.clock.advance(hours=72)
        await campaign.tick()
        assert (await position(http, journey_id, opener) or {})[
            "state"
        ] == "done"  # waited long enough without buying
        await wait_for(
            lambda: _subjects_are(campaign, f"{opener}@example.com", ["Welcome", "Thank you"]),
            what="the opener's thanks",
        )
        assert subjects(campaign, f"{subscriber}@example.com") == ["Welcome"]
    finally:
        campaign.clock.advance(hours=-96)


async def _known(campaign: CampaignUnderTest, profile_id: str) -> bool:
    from cdp_campaign import store

    async with campaign.ctx.session_factory() as session:
        return bool(await store.contacts_of(session=session, profile_ids=[profile_id]))


async def _subjects_are(campaign: CampaignUnderTest, address: str, expected: list[str]) -> bool:
    return subjects(campaign, address) == expected


async def _state_is(
    http: httpx.AsyncClient, journey_id: str, profile_id: str, state: str
) -> dict[str, Any] | None:
    found = await position(http, journey_id, profile_id)
    return found if found is not None and found["state"] == state else None


async def test_bad_journeys_are_refused(http: httpx.AsyncClient) -> None:
    broken = welcome("x")
    broken["steps"][2]["then_step"] = 1  # backwards
    assert (await http.post("/v1/journeys", json=broken)).status_code == 422
    assert (await http.post("/v1/journeys", json={**welcome("x"), "steps": []})).status_code == 422
    assert (await http.post("/v1/journeys/nope/activate")).status_code == 404
    assert (await http.post("/v1/journeys/nope/explode")).status_code in (404, 422)
