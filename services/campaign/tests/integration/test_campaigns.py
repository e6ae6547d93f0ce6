"""Campaigns through the API, the real broker and database, a real SMTP server, and fakes for
the consent service and ingest: broadcasts, triggers, send-time rules, tracking, KPIs, privacy."""

from __future__ import annotations

import asyncio
import dataclasses
import secrets
from typing import Any

import httpx
import pytest
import sqlalchemy as sa
from cdp_campaign import store
from cdp_campaign.delivery import deliver_sends
from cdp_campaign.gateways import ProcessComposer
from cdp_common.events import PrivacyReceipt, ProfileErased, ProfileUpdated, SegmentEntered
from cdp_common.testing import read_topic, wait_for
from cdp_common.topics import TopicName

from ..conftest import CampaignUnderTest, email_campaign

pytestmark = pytest.mark.integration


class NeverStarting(ProcessComposer):
    """Composing workers that never come up in time."""

    STARTUP_TIMEOUT_S = 0.000001


def pid(label: str = "p") -> str:
    return f"{label}-{secrets.token_hex(5)}"


async def people(campaign: CampaignUnderTest, segment: str, traits: dict[str, dict[str, Any]]) -> None:
    """Publish profiles with traits and their entry into a segment; wait until the service has them."""
    await campaign.publish_many(
        TopicName.PROFILES,
        [(ProfileUpdated(profile_id=p, version=1, changed_traits=t), p) for p, t in traits.items()],
    )
    at = campaign.clock.now()
    await campaign.publish_many(
        TopicName.SEGMENTS,
        [(SegmentEntered(profile_id=p, segment_key=segment, segment_version=1, at=at), p) for p in traits],
    )
    await wait_for(
        lambda: _all_members(campaign, segment, list(traits)),
        timeout=30,
        what="the service to learn the members",
    )


async def _all_members(campaign: CampaignUnderTest, segment: str, profile_ids: list[str]) -> bool:
    async with campaign.ctx.session_factory() as session:
        members = set(await store.segment_members(session=session, segment_key=segment))
        known = await store.contacts_of(session=session, profile_ids=profile_ids)
    return members >= set(profile_ids) and len(known) == len(profile_ids)


async def create(http: httpx.AsyncClient, body: dict[str, Any]) -> dict[str, Any]:
    response = await http.post("/v1/campaigns", json=body)
    assert response.status_code == 201, response.text
    result: dict[str, Any] = response.json()
    return result


# --- the API ------------------------------------------------------------------------------------------


async def test_crud_and_status_transitions(http: httpx.AsyncClient) -> None:
    created = await create(http, email_campaign(schedule={"type": "at", "at": "2030-01-01T09:00:00Z"}))
    cid = created["id"]
    assert created["status"] == "draft"
    patched = await http.patch(f"/v1/campaigns/{cid}", json={"name": "Renamed", "holdout_percent": 20})
    assert patched.status_code == 200
    assert patched.json()["name"] == "Renamed"
    assert patched.json()["holdout_percent"] == 20
    assert (await http.post(f"/v1/campaigns/{cid}/resume")).status_code == 409  # a draft is not paused
    scheduled = await http.post(f"/v1/campaigns/{cid}/schedule")
    assert scheduled.json()["status"] == "scheduled"
    again = await http.post(f"/v1/campaigns/{cid}/schedule")
    assert again.status_code == 409
    assert again.json()["error"]["code"] == "invalid_transition"
    assert (await http.post(f"/v1/campaigns/{cid}/pause")).json()["status"] == "paused"
    assert (await http.post(f"/v1/campaigns/{cid}/resume")).json()["status"] == "scheduled"
    assert (await http.post(f"/v1/campaigns/{cid}/complete")).json()["status"] == "completed"
    assert (await http.patch(f"/v1/campaigns/{cid}", json={"name": "x"})).status_code == 409
    assert (await http.delete(f"/v1/campaigns/{cid}")).status_code == 409

    draft = await create(http, email_campaign())
    assert (await http.delete(f"/v1/campaigns/{draft['id']}")).status_code == 204
    assert (await http.get(f"/v1/campaigns/{draft['id']}")).status_code == 404
    listed = await http.get("/v1/campaigns", params={"limit": 1})
    assert len(listed.json()["items"]) == 1
    assert listed.json()["next"]


async def test_bad_input_gets_a_clear_4xx(http: httpx.AsyncClient, campaign: CampaignUnderTest) -> None:
    raw = await http.post("/v1/campaigns", content=b"{not json", headers={"Content-Type": "application/json"})
    assert raw.status_code == 422
    assert raw.json()["error"]["code"] == "invalid_request"
    assert (await http.post("/v1/campaigns", json=email_campaign(extra=1))).status_code == 422
    assert (await http.post("/v1/campaigns", json=email_campaign(name="x" * 1000))).status_code == 422
    too_big = email_campaign(variants=[{"key": "a", "subject": "s", "body": "x" * 300_000}])
    assert (await http.post("/v1/campaigns", json=too_big)).status_code == 422
    broken = await http.post(
        "/v1/campaigns", json=email_campaign(variants=[{"key": "a", "subject": "{% if %}", "body": "b"}])
    )
    assert broken.status_code == 422
    assert broken.json()["error"]["code"] == "invalid_template"
    for url in (
        "http://169.254.169.254/latest",
        "http://127.0.0.1:9/x",
        "http://10.0.0.8/x",
        "ftp://example.com/x",
    ):
        refused = await http.post("/v1/campaigns", json=email_campaign(channel="webhook", webhook_url=url))
        assert refused.status_code == 422, url
    assert (await http.get("/v1/campaigns", params={"cursor": "%%%"})).status_code == 400
    assert (await http.get("/v1/campaigns/nope")).status_code == 404
    async with httpx.AsyncClient(base_url=campaign.url) as anonymous:
        assert (await anonymous.get("/v1/campaigns")).status_code == 401
        assert (await anonymous.get("/v1/t/open/forged.token")).status_code == 404


# --- a broadcast to a segment ----------------------------------------------------------------------------


async def test_broadcast_skips_people_without_consent_and_counts_why(
    http: httpx.AsyncClient, campaign: CampaignUnderTest
) -> None:
    segment = "seg-" + secrets.token_hex(4)
    ada, bob, cy, dan, eve, fay = (pid(n) for n in ("ada", "bob", "cy", "dan", "eve", "fay"))
    tag = secrets.token_hex(3)
    await people(
        campaign,
        segment,
        {
            ada: {"email": f"ada-{tag}@example.com", "first_name": "Ada"},
            bob: {"email": f"bob-{tag}@example.com"},
            cy: {"email": f"cy-{tag}@example.com", "first_name": "Cy"},  # no consent
            dan: {"email": f"dan-{tag}@example.com"},  # suppressed
            eve: {"first_name": "Eve"},  # no address
            fay: {"email": f"fay-{tag}@bounce.test"},  # the server refuses
        },
    )
    campaign.consent.granted |= {ada, bob, dan, eve, fay}
    campaign.consent.suppressed_profiles.add(dan)
    created = await create(http, email_campaign(audience={"type": "segment", "segment_key": segment}))
    started = await http.post(f"/v1/campaigns/{created['id']}/schedule")
    assert started.json()["status"] == "running"

    sends = await campaign.settled(http, created["id"], [ada, bob, cy, dan, eve, fay])
    assert {p: s["status"] for p, s in sends.items()} == {
        ada: "sent",
        bob: "sent",
        cy: "skipped",
        dan: "skipped",
        eve: "skipped",
        fay: "bounced",
    }
    assert sends[cy]["reason"] == "no_consent:no_record"
    assert sends[dan]["reason"] == "suppressed"
    assert sends[eve]["reason"] == "no_contact_address"

    [mail] = campaign.mailbox.to(f"ada-{tag}@example.com")
    assert mail["Subject"] == "Hello Ada"
    assert mail["List-Unsubscribe-Post"] == "List-Unsubscribe=One-Click"
    assert campaign.mailbox.to(f"bob-{tag}@example.com")[0]["Subject"] == "Hello there"
    assert campaign.mailbox.to(f"cy-{tag}@example.com") == []

    report = (await http.get(f"/v1/campaigns/{created['id']}/report")).json()
    variant = report["variants"]["a"]
    assert variant["sent"] == 2
    assert variant["bounced"] == 1
    assert variant["skipped_by_reason"] == {
        "no_consent:no_record": 1,
        "suppressed": 1,
        "no_contact_address": 1,
    }
    await campaign.tick()
    assert (await http.get(f"/v1/campaigns/{created['id']}")).json()["status"] == "completed"


async def test_nobody_is_contacted_when_the_consent_service_is_down(
    http: httpx.AsyncClient, campaign: CampaignUnderTest
) -> None:
    segment = "seg-" + secrets.token_hex(4)
    ada = pid("ada")
    await people(campaign, segment, {ada: {"email": f"{ada}@example.com"}})
    campaign.consent.granted.add(ada)
    campaign.consent.down = True
    try:
        created = await create(http, email_campaign(audience={"type": "segment", "segment_key": segment}))
        await http.post(f"/v1/campaigns/{created['id']}/schedule")
        sends = await campaign.settled(http, created["id"], [ada])
    finally:
        campaign.consent.down = False
    assert sends[ada]["status"] == "skipped"
    assert sends[ada]["reason"] == "consent_service_unavailable"
    assert campaign.mailbox.to(f"{ada}@example.com") == []


async def test_entering_a_segment_triggers_a_send_within_seconds(
    http: httpx.AsyncClient, campaign: CampaignUnderTest
) -> None:
    segment = "seg-" + secrets.token_hex(4)
    created = await create(http, email_campaign(audience={"type": "segment_entered", "segment_key": segment}))
    assert (await http.post(f"/v1/campaigns/{created['id']}/schedule")).json()["status"] == "running"
    ada = pid("ada")
    campaign.consent.granted.add(ada)
    await campaign.profile(ada, {"email": f"{ada}@example.com", "first_name": "Ada"})
    # The profile and the entry travel on different topics; wait for the address to be known first.
    await wait_for(lambda: _known(campaign, ada), what="the profile's address")
    loop = asyncio.get_running_loop()
    started = loop.time()
    await campaign.enter(ada, segment)
    await wait_for(lambda: _mail_to(campaign, f"{ada}@example.com"), timeout=10, what="the triggered e-mail")
    assert loop.time() - started < 10
    await campaign.enter(ada, segment)  # entering again does not send again
    await campaign.tick()
    assert len(await campaign.sends(http, created["id"], ada)) == 1


async def _known(campaign: CampaignUnderTest, profile_id: str) -> bool:
    async with campaign.ctx.session_factory() as session:
        return bool(await store.contacts_of(session=session, profile_ids=[profile_id]))


async def _mail_to(campaign: CampaignUnderTest, address: str) -> bool:
    return bool(campaign.mailbox.to(address))


async def test_frequency_caps_and_quiet_hours(http: httpx.AsyncClient, campaign: CampaignUnderTest) -> None:
    segment = "seg-" + secrets.token_hex(4)
    busy, tokyo = pid("busy"), pid("tokyo")
    await people(
        campaign,
        segment,
        {
            busy: {"email": f"{busy}@example.com"},
            tokyo: {"email": f"{tokyo}@example.com", "timezone": "Asia/Tokyo"},
        },
    )
    campaign.consent.granted |= {busy, tokyo}
    cap = campaign.settings.campaign_frequency_cap
    results = []
    for _ in range(cap + 1):
        created = await create(http, email_campaign(audience={"type": "segment", "segment_key": segment}))
        await http.post(f"/v1/campaigns/{created['id']}/schedule")
        results.append((created["id"], await campaign.settled(http, created["id"], [busy, tokyo])))
    assert [r[busy]["status"] for _, r in results] == ["sent"] * cap + ["skipped"]
    assert results[-1][1][busy]["reason"] == "frequency_cap"
    # 12:00 UTC is 21:00 in Tokyo: deferred to 08:00 there, then sent when the clock gets there,
    # still within the cap across the four campaigns.
    assert {r[tokyo]["status"] for _, r in results} == {"deferred"}
    assert {r[tokyo]["reason"] for _, r in results} == {"quiet_hours"}
    campaign.clock.advance(hours=11)
    try:
        await campaign.tick()
        after = [(await campaign.settled(http, cid, [tokyo]))[tokyo] for cid, _ in results]
    finally:
        campaign.clock.advance(hours=-11)
    assert sorted(s["status"] for s in after) == ["sent"] * cap + ["skipped"]
    assert [s["reason"] for s in after if s["status"] == "skipped"] == ["frequency_cap"]


async def test_two_jobs_at_once_for_one_person_never_pass_the_frequency_cap_together(
    http: httpx.AsyncClient, campaign: CampaignUnderTest
) -> None:
    # Two replicas (here two concurrent jobs) sending different campaigns to the same person.
    person = pid("both")
    await people(campaign, "seg-" + secrets.token_hex(4), {person: {"email": f"{person}@example.com"}})
    campaign.consent.granted.add(person)
    campaign_ids = []
    for _ in range(2):
        created = await create(http, email_campaign())  # an empty audience: nothing is queued
        assert (await http.post(f"/v1/campaigns/{created['id']}/schedule")).json()["status"] == "running"
        campaign_ids.append(created["id"])
    async with campaign.ctx.session_factory() as session, session.begin():
        send_ids = [
            (
                await store.insert_sends(
                    session=session,
                    rows=[
                        {
                            "id": store.send_id_for(
                                source="campaign", source_id=cid, step=None, run_key="race", profile_id=person
                            ),
                            "source": "campaign",
                            "source_id": cid,
                            "profile_id": person,
                            "profile_hash": person,
                            "variant": "a",
                            "channel": "email",
                            "status": "queued",
                            "created_at": campaign.clock.now(),
                        }
                    ],
                )
            )[0]
            for cid in campaign_ids
        ]
    capped = dataclasses.replace(
        campaign.ctx, settings=campaign.settings.model_copy(update={"campaign_frequency_cap": 1})
    )
    outcomes = await asyncio.gather(*(deliver_sends(ctx=capped, send_ids=[s]) for s in send_ids))
    assert sorted(sorted((k, n) for k, n in o.items() if n) for o in outcomes) == [
        [("sent", 1)],
        [("skipped", 1)],
    ]
    assert len(campaign.mailbox.to(f"{person}@example.com")) == 1
    async with campaign.ctx.session_factory() as session:
        statuses = await session.execute(
            sa.select(store.sends.c.status, store.sends.c.reason).where(store.sends.c.id.in_(send_ids))
        )
        assert sorted(statuses.all()) == [("sent", None), ("skipped", "frequency_cap")]


# --- tracking: the closed loop -------------------------------------------------------------------------------


async def test_open_click_and_unsubscribe_come_back_and_withdraw_consent(
    http: httpx.AsyncClient, campaign: CampaignUnderTest
) -> None:
    segment = "seg-" + secrets.token_hex(4)
    ada = pid("ada")
    await people(campaign, segment, {ada: {"email": f"{ada}@example.com"}})
    campaign.consent.granted.add(ada)
    created = await create(http, email_campaign(audience={"type": "segment", "segment_key": segment}))
    await http.post(f"/v1/campaigns/{created['id']}/schedule")
    await campaign.settled(http, created["id"], [ada])
    [mail] = campaign.mailbox.to(f"{ada}@example.com")
    html = mail.get_body(preferencelist=("html",)).get_content()  # type: ignore[union-attr]
    pixel = html.split('<img src="')[1].split('"')[0]
    click = html.split('href="')[1].split('"')[0]
    unsubscribe = mail["List-Unsubscribe"].strip("<>")

    async with httpx.AsyncClient() as browser:
        proxy = await browser.get(pixel, headers={"User-Agent": "Mozilla/5.0"})
        assert proxy.status_code == 200
        assert proxy.headers["content-type"] == "image/gif"
        await browser.get(pixel, headers={"User-Agent": "Mozilla/5.0 (Macintosh) AppleWebKit/605.1.15"})
        redirected = await browser.get(click)
        assert redirected.status_code == 302
        assert redirected.headers["location"] == "https://shop.example/sale"
        tampered = await browser.get(click[:-3] + "abc")
        assert tampered.status_code == 404
        page = await browser.get(unsubscribe)
        assert page.status_code == 200  # a GET only shows the button
        assert campaign.consent.withdrawals == [] or ada not in [w[0] for w in campaign.consent.withdrawals]
        campaign.consent.down = True
        try:
            unavailable = await browser.post(unsubscribe, content=b"List-Unsubscribe=One-Click")
        finally:
            campaign.consent.down = False
        assert unavailable.status_code == 503  # the person is told to try again; nothing half-done
        one_click = await browser.post(unsubscribe, content=b"List-Unsubscribe=One-Click")
        assert one_click.status_code == 200
        again = await browser.post(unsubscribe, content=b"List-Unsubscribe=One-Click")
        assert again.status_code == 200

    assert (ada, "email_marketing", "email") in campaign.consent.withdrawals
    events = [e for e in campaign.tracker.events if e["profile_id"] == ada]
    assert [e["event"] for e in events] == [
        "Email Opened",
        "Email Opened",
        "Email Link Clicked",
        "Unsubscribed",
    ]
    assert events[0]["properties"]["privacy_proxy"] is True
    assert events[2]["properties"]["url"] == "https://shop.example/sale"
    report = (await http.get(f"/v1/campaigns/{created['id']}/report")).json()["variants"]["a"]
    assert report["opened"] == 1
    assert report["opened_privacy_proxy"] == 1
    assert report["clicked"] == 1
    assert report["unsubscribed"] == 1


# --- KPIs and uplift on a synthetic campaign whose effect is known ---------------------------------------------


async def test_kpis_and_uplift_recover_a_known_effect(
    http: httpx.AsyncClient, campaign: CampaignUnderTest
) -> None:
    segment = "seg-" + secrets.token_hex(4)
    members = {pid("u"): {"email": f"u{i}-{secrets.token_hex(3)}@example.com"} for i in range(200)}
    await people(campaign, segment, members)
    campaign.consent.granted |= set(members)
    body = email_campaign(
        audience={"type": "segment", "segment_key": segment},
        holdout_percent=25,
        cost=100.0,
        variants=[{"key": "a", "subject": "A", "body": "a"}, {"key": "b", "subject": "B", "body": "b"}],
    )
    created = await create(http, body)
    await http.post(f"/v1/campaigns/{created['id']}/schedule")
    sends = await wait_for(
        lambda: _all_decided(http, campaign, created["id"]), timeout=60, what="the campaign to finish"
    )
    groups = {p: s["variant"] for p, s in sends.items()}
    # True effect: the treated convert at 50%, the holdout at 10%; each order is worth 20.
    treated = [p for p, g in groups.items() if g != "holdout"]
    holdout = [p for p, g in groups.items() if g == "holdout"]
    converting = treated[: len(treated) // 2] + holdout[: len(holdout) // 10]
    orders = [
        ProfileUpdated(
            profile_id=profile_id,
            version=2,
            event=campaign.track_event(
                "Order Completed", {"revenue": 20.0, "order_id": secrets.token_hex(4)}
            ),
        )
        for profile_id in converting
    ]
    await campaign.publish_many(TopicName.PROFILES, [(o, o.profile_id) for o in orders])
    late = campaign.track_event(
        "Order Completed", {"revenue": 999.0}, at=campaign.clock.now().replace(year=2027)
    )
    await campaign.profile(treated[-1], {}, version=999, event=late)  # outside the window: not counted

    async def converted() -> dict[str, Any] | None:
        report = (await http.get(f"/v1/campaigns/{created['id']}/report")).json()
        total = sum(v["converted"] for v in report["variants"].values()) + report["holdout"]["converted"]
        return report if total == len(converting) else None

    report = await wait_for(converted, timeout=30, what="the conversions to be counted")
    assert report["holdout"]["assigned"] == len(holdout)
    assert sum(v["assigned"] for v in report["variants"].values()) == len(treated)
    assert sum(v["sent"] for v in report["variants"].values()) == len(treated)
    assert set(report["variants"]) == {"a", "b"}
    expected = len(treated) // 2 / len(treated) - len(holdout) // 10 / len(holdout)
    low, high = report["uplift"]["ci95"]
    assert report["uplift"]["absolute"] == pytest.approx(expected)
    assert low < 0.4 < high
    assert low > 0
    revenue = sum(v["revenue"] for v in report["variants"].values())
    assert revenue == pytest.approx(20.0 * (len(treated) // 2))
    assert report["uplift"]["roi"] == pytest.approx((report["uplift"]["incremental_revenue"] - 100) / 100)


async def _all_decided(
    http: httpx.AsyncClient, campaign: CampaignUnderTest, campaign_id: str
) -> dict[str, dict[str, Any]] | None:
    report = (await http.get(f"/v1/campaigns/{campaign_id}/report")).json()
    if not report["variants"] or sum(v["queued"] + v["in_flight"] for v in report["variants"].values()):
        return None
    async with campaign.ctx.session_factory() as session:
        rows = await session.execute(sa.select(store.sends).where(store.sends.c.source_id == campaign_id))
        return {r["profile_id"]: dict(r) for r in rows.mappings()}


# --- channels, test sends, privacy --------------------------------------------------------------------------------


async def test_webhooks_to_internal_addresses_are_refused_at_send_time(
    http: httpx.AsyncClient, campaign: CampaignUnderTest
) -> None:
    segment = "seg-" + secrets.token_hex(4)
    ada = pid("ada")
    await people(campaign, segment, {ada: {"first_name": "Ada"}})
    campaign.consent.granted.add(ada)
    body = email_campaign(
        channel="webhook",
        webhook_url="http://localhost:9/hook",  # a name that resolves to loopback
        audience={"type": "segment", "segment_key": segment},
        variants=[{"key": "a", "body": '{"hello": "{{ profile.first_name }}"}'}],
    )
    created = await create(http, body)
    await http.post(f"/v1/campaigns/{created['id']}/schedule")
    sends = await campaign.settled(http, created["id"], [ada])
    assert sends[ada]["status"] == "failed"
    assert sends[ada]["error"].startswith("webhook_address_not_allowed")


async def test_sms_goes_through_the_provider(http: httpx.AsyncClient, campaign: CampaignUnderTest) -> None:
    segment = "seg-" + secrets.token_hex(4)
    ada, bad = pid("ada"), pid("bad")
    await people(
        campaign,
        segment,
        {ada: {"phone": "+4915112345678", "first_name": "Ada"}, bad: {"phone": "+4915110000000"}},
    )
    campaign.consent.granted |= {ada, bad}
    body = email_campaign(
        channel="sms",
        audience={"type": "segment", "segment_key": segment},
        variants=[{"key": "a", "body": "Hi {{ profile.first_name }}, 20% off today"}],
    )
    created = await create(http, body)
    await http.post(f"/v1/campaigns/{created['id']}/schedule")
    sends = await campaign.settled(http, created["id"], [ada, bad])
    assert sends[ada]["status"] == "sent"
    assert sends[bad]["status"] == "bounced"
    assert ("+4915112345678", "Hi Ada, 20% off today") in campaign.sms.sent


async def test_a_test_send_reaches_the_given_address(
    http: httpx.AsyncClient, campaign: CampaignUnderTest
) -> None:
    created = await create(http, email_campaign())
    address = f"qa-{secrets.token_hex(3)}@example.com"
    response = await http.post(f"/v1/campaigns/{created['id']}/test-send", json={"address": address})
    assert response.status_code == 200, response.text
    [mail] = campaign.mailbox.to(address)
    assert mail["Subject"] == "[TEST] Hello there"
    campaign.consent.suppressed_addresses.add("blocked@example.com")
    refused = await http.post(
        f"/v1/campaigns/{created['id']}/test-send", json={"address": "Blocked@example.com"}
    )
    assert refused.status_code == 409
    assert (
        await http.post(f"/v1/campaigns/{created['id']}/test-send", json={"address": "not-an-address"})
    ).status_code == 422
    # An address the mail server refuses is the caller's to fix: a 4xx, never a 5xx.
    bounced = await http.post(f"/v1/campaigns/{created['id']}/test-send", json={"address": "qa@bounce.test"})
    assert bounced.status_code == 422, bounced.text
    assert bounced.json()["error"]["code"] == "address_rejected"
    # Composing workers that cannot start: a 503 that says so, not a 500.
    working = campaign.ctx.composer
    campaign.ctx.composer = NeverStarting(processes=1, timeout_s=5)
    try:
        unavailable = await http.post(f"/v1/campaigns/{created['id']}/test-send", json={"address": address})
    finally:
        campaign.ctx.composer = working
    assert unavailable.status_code == 503, unavailable.text
    assert unavailable.json()["error"]["code"] == "composing_unavailable"


async def test_erasure_removes_the_person_but_keeps_the_counts(
    http: httpx.AsyncClient, campaign: CampaignUnderTest
) -> None:
    segment = "seg-" + secrets.token_hex(4)
    ada = pid("ada")
    await campaign.publish(
        TopicName.PROFILES,
        payload=__import__("cdp_common.events", fromlist=["ProfileCreated"]).ProfileCreated(
            profile_id=ada, version=1
        ),
        subject=ada,
    )
    await people(campaign, segment, {ada: {"email": f"{ada}@example.com"}})
    campaign.consent.granted.add(ada)
    created = await create(http, email_campaign(audience={"type": "segment", "segment_key": segment}))
    await http.post(f"/v1/campaigns/{created['id']}/schedule")
    await campaign.settled(http, created["id"], [ada])
    export = await http.get(f"/v1/privacy/profiles/{ada}")
    assert export.status_code == 200
    data = export.json()["data"]
    assert data["contact"]["email"] == f"{ada}@example.com"
    assert [s["status"] for s in data["sends"]] == ["sent"]

    request_id = "pr-" + secrets.token_hex(4)
    await campaign.publish(
        TopicName.PROFILES,
        payload=ProfileErased(profile_id=ada, version=99, request_id=request_id),
        subject=ada,
    )

    def receipt_in(envelopes: list[Any]) -> bool:
        return any(isinstance(e.data, PrivacyReceipt) and e.data.request_id == request_id for e in envelopes)

    read = await read_topic(
        bootstrap=campaign.settings.kafka_bootstrap,
        topic=campaign.settings.topic(TopicName.PRIVACY),
        until=receipt_in,
    )
    [receipt] = [
        e.data for e in read if isinstance(e.data, PrivacyReceipt) and e.data.request_id == request_id
    ]
    assert receipt.details["contacts"] == 1
    assert receipt.details["sends_anonymised"] == 1
    assert (await http.get(f"/v1/privacy/profiles/{ada}")).status_code == 404
    assert await campaign.sends(http, created["id"], ada) == []
    report = (await http.get(f"/v1/campaigns/{created['id']}/report")).json()
    assert report["variants"]["a"]["sent"] == 1


async def test_a_birthday_campaign_speaks_the_locale_and_recommends_from_purchases(
    http: httpx.AsyncClient, campaign: CampaignUnderTest
) -> None:
    ada, bob, carl = pid("ada"), pid("bob"), pid("carl")
    today = campaign.clock.now().strftime("%m-%d")
    await campaign.publish_many(
        TopicName.PROFILES,
        [
            (
                ProfileUpdated(
                    profile_id=ada,
                    version=1,
                    changed_traits={
                        "email": f"{ada}@example.com",
                        "birthday": f"1990-{today}",
                        "locale": "de-DE",
                        "first_name": "Ada",
                    },
                ),
                ada,
            ),
            (
                ProfileUpdated(
                    profile_id=bob,
                    version=1,
                    changed_traits={"email": f"{bob}@example.com", "birthday": "1985-02-30"},
                ),
                bob,
            ),
        ],
    )
    tag = secrets.token_hex(3)

    def order(profile_id: str, *products: tuple[str, str, int]) -> ProfileUpdated:
        lines = [
            {
                "product_id": f"{p}-{tag}",
                "name": p.upper(),
                "category": f"{c}-{tag}",
                "quantity": q,
                "price": 5,
            }
            for p, c, q in products
        ]
        event = campaign.track_event(
            "Order Completed", {"order_id": secrets.token_hex(4), "products": lines, "revenue": 10}
        )
        return ProfileUpdated(profile_id=profile_id, version=2, event=event)

    await campaign.publish_many(
        TopicName.PROFILES,
        [
            (order(ada, ("earl", "tea", 1)), ada),
            (order(carl, ("earl", "tea", 1), ("mug", "kitchen", 1)), carl),
            (order(carl, ("sencha", "tea", 9)), carl),
            (order(carl, ("rooibos", "tea", 2)), carl),
        ],
    )
    campaign.consent.granted |= {ada, bob}

    async def purchases_known() -> bool:
        async with campaign.ctx.session_factory() as session:
            return len(await store.purchase_history(session=session, profile_id=carl)) == 4

    await wait_for(purchases_known, what="the purchases")
    await wait_for(lambda: _known(campaign, bob), what="bob")
    body = email_campaign(
        audience={"type": "date_trait", "trait": "birthday"},
        variants=[
            {
                "key": "a",
                "subject": "Happy birthday",
                "body": "<p>Happy birthday</p>",
                "locales": {
                    "de": {
                        "subject": "Alles Gute, {{ profile.first_name }}",
                        "body": "<p>{% for p in recommendations %}{{ p.name }};{% endfor %}</p>",
                    }
                },
            }
        ],
    )
    created = await create(http, body)
    assert (await http.post(f"/v1/campaigns/{created['id']}/schedule")).json()["status"] == "running"
    sends = await campaign.settled(http, created["id"], [ada])
    assert sends[ada]["status"] == "sent"
    assert await campaign.sends(http, created["id"], bob) == []
    [mail] = campaign.mailbox.to(f"{ada}@example.com")
    assert mail["Subject"] == "Alles Gute, Ada"
    html = mail.get_body(preferencelist=("html",)).get_content()  # type: ignore[union-attr]
    assert "SENCHA;ROOIBOS;MUG;" in html  # the favourite category's best sellers, then what goes with it
    nxt = (await http.get(f"/v1/campaigns/{created['id']}")).json()["next_run_at"]
    assert nxt.startswith(campaign.clock.now().date().isoformat()[:8])
