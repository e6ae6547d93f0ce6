"""The main chain of the platform, end to end; the test to read first.

Two people are identified and tracked through ingest, as a website would. A product view makes
both enter a segment built on an event condition within a one-day window ("viewed a product
today"). A segment-triggered campaign and a broadcast on that segment send to the person who
granted e-mail consent (the mail arrives at the SMTP server with her name in it) and record the
other as skipped for lack of consent. When the view leaves its window, both leave the segment.

Every step goes through the services' HTTP APIs and the real Kafka and PostgreSQL, exactly as
a user would; the five services run as processes of this test.
"""

from __future__ import annotations

import secrets
from collections.abc import AsyncIterator
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import httpx
import pytest
from cdp_common.testing import (
    Mailbox,
    PlatformUnderTest,
    Stack,
    private_database,
    service_processes,
    start_services,
    unique_env,
    wait_for,
)

# Generous: the five services start inside this test, and the window needs a minute to pass.
pytestmark = [pytest.mark.e2e, pytest.mark.timeout(600)]

# The segment's rule: at least one product view within the last day.
VIEWED_TODAY = {"event": "Product Viewed", "op": "gte", "value": 1, "within_days": 1}

# The tracked views are dated so that they leave their one-day window this long after they are
# sent: time enough to enter the segment and be sent to, short enough to see them leave.
TIME_LEFT_IN_WINDOW = timedelta(seconds=30)

# Sends still on their way; any other status is the campaign's decision.
UNDECIDED = ("queued", "handing_over")


@pytest.fixture
async def chain(platform: PlatformUnderTest, mailbox: Mailbox, tmp_path: Path) -> AsyncIterator[Stack]:
    """The five services in an environment and a database of their own, sending mail to the
    test's SMTP server, with every scheduler running each second."""
    write_key = "wk_" + secrets.token_hex(12)
    async with private_database(platform, "main_chain") as database_url:
        environ = {
            **platform.environ(),
            "CDP_ENV": unique_env(platform),
            "CDP_DATABASE_URL": database_url,
            "CDP_DEFAULT_WRITE_KEY": write_key,
            "CDP_SMTP_URL": f"smtp://127.0.0.1:{mailbox.port}",
            # Profile's check for windows that moved on, segment's and consent's schedulers,
            # and campaign's scheduler.
            "CDP_PROFILE_WINDOW_CHECK_INTERVAL_S": "1",
            "CDP_SCHEDULER_INTERVAL_S": "1",
            "CDP_CAMPAIGN_SCHEDULER_INTERVAL_S": "1",
            # No quiet hours, so the sends do not depend on the time of day the test runs at.
            "CDP_CAMPAIGN_QUIET_START": "00:00",
            "CDP_CAMPAIGN_QUIET_END": "00:00",
        }
        services = service_processes(environ, logs=tmp_path)
        try:
            await start_services(services)
            yield Stack(services, platform.admin_token, write_key)
        finally:
            for service in services.values():
                service.stop()


async def test_main_chain(chain: Stack, mailbox: Mailbox) -> None:
    tag = secrets.token_hex(4)
    ada_email, bob_email = f"ada-{tag}@example.com", f"bob-{tag}@example.com"
    segment_key = f"viewed_today_{tag}"
    async with httpx.AsyncClient(timeout=15, headers=chain.admin()) as http:
        # 1. A website identifies two people through ingest, with its write key.
        ada = await identify(
            http, chain, user_id=f"ada-{tag}", traits={"email": ada_email, "first_name": "Ada"}
        )
        bob = await identify(
            http, chain, user_id=f"bob-{tag}", traits={"email": bob_email, "first_name": "Bob"}
        )

        # 2. Ada agrees to receive marketing e-mail; Bob never does.
        granted = await http.post(
            f"{chain.url('consent')}/v1/consents",
            json={
                "profile_id": ada,
                "purpose": "email_marketing",
                "channel": "email",
                "status": "granted",
                "source": "signup-form",
            },
        )
        assert granted.status_code == 201, granted.text

        # 3. A marketer defines the segment "viewed a product today". Segment asks profile to
        # keep the count of views as a computed trait; the segment is ready once it has it.
        created = await http.post(
            f"{chain.url('segment')}/v1/segments",
            json={"key": segment_key, "name": "Viewed a product today", "rule": VIEWED_TODAY},
        )
        assert created.status_code == 201, created.text
        await wait_for(
            lambda: segment_is_ready(http, chain, segment_key), timeout=120, what="the segment to be ready"
        )

        # 4. A campaign greets everyone who enters the segment from now on.
        greeting = await start_campaign(
            http,
            chain,
            name="Welcome back",
            audience={"type": "segment_entered", "segment_key": segment_key},
            subject="Hello {{ profile.first_name }}, welcome back",
        )

        # 5. Both view a product. The views are dated so that they leave the one-day window
        # shortly after they are sent.
        viewed_at = datetime.now(UTC) - timedelta(days=1) + TIME_LEFT_IN_WINDOW
        window_edge = viewed_at + timedelta(days=1)
        for user_id in (f"ada-{tag}", f"bob-{tag}"):
            tracked = await http.post(
                f"{chain.url('ingest')}/v1/track",
                json={"userId": user_id, "event": "Product Viewed", "timestamp": viewed_at.isoformat()},
                auth=(chain.write_key, ""),
            )
            assert tracked.status_code == 200, tracked.text
            assert tracked.json() == {"success": True}

        # 6. The views reach profile, which updates the computed trait; segment sees the change
        # and both enter.
        await wait_for(
            lambda: members_are(http, chain, segment_key, {ada, bob}),
            timeout=60,
            what="both to enter the segment",
        )

        # 7. A broadcast goes out to the segment's members as they are now.
        broadcast = await start_campaign(
            http,
            chain,
            name="This week's picks",
            audience={"type": "segment", "segment_key": segment_key},
            subject="Hello {{ profile.first_name }}, this week's picks",
        )

        # 8. Each campaign checks consent with the consent service before sending: Ada's mail
        # goes out, Bob's send is recorded as skipped for lack of consent.
        for campaign in (greeting, broadcast):
            to_ada = await decided_send(http, chain, campaign, ada)
            assert to_ada["status"] == "sent", to_ada
            to_bob = await decided_send(http, chain, campaign, bob)
            assert to_bob["status"] == "skipped", to_bob
            assert to_bob["reason"] == "no_consent:no_record"

        # 9. Both mails arrive at the SMTP server, greeting Ada by name; none goes to Bob.
        mails = await wait_for(
            lambda: mails_to(mailbox, ada_email, count=2), timeout=30, what="Ada's two e-mails"
        )
        assert sorted(str(mail["Subject"]) for mail in mails) == [
            "Hello Ada, this week's picks",
            "Hello Ada, welcome back",
        ]
        assert mailbox.to(bob_email) == []

        # 10. Once the views leave their window, profile's scheduler counts them no longer and
        # both leave the segment (windows are checked each second here and expire within a
        # minute of their edge).
        await wait_for(
            lambda: members_are(http, chain, segment_key, set()),
            timeout=120,
            interval=1.0,
            what="both to leave the segment when the window passes",
        )
        for person in (ada, bob):
            last_change = await newest_change(http, chain, segment_key, person)
            assert last_change["change"] == "exited"
            assert datetime.fromisoformat(last_change["at"]) >= window_edge


async def identify(http: httpx.AsyncClient, stack: Stack, *, user_id: str, traits: dict[str, Any]) -> str:
    """Identify a person through ingest; return their profile id once campaign has their address."""
    response = await http.post(
        f"{stack.url('ingest')}/v1/identify",
        json={"userId": user_id, "traits": traits},
        auth=(stack.write_key, ""),
    )
    assert response.status_code == 200, response.text

    async def known_to_campaign() -> str | None:
        profile = await http.get(f"{stack.url('profile')}/v1/profiles/user_id:{user_id}")
        if profile.status_code != 200:
            return None
        profile_id: str = profile.json()["id"]
        # Campaign keeps each person's contact points, learnt from profile's messages.
        held = await http.get(f"{stack.url('campaign')}/v1/privacy/profiles/{profile_id}")
        if held.status_code != 200 or not (held.json()["data"]["contact"] or {}).get("email"):
            return None
        return profile_id

    return await wait_for(known_to_campaign, timeout=60, what=f"campaign to learn {user_id}'s address")


async def segment_is_ready(http: httpx.AsyncClient, stack: Stack, key: str) -> bool:
    response = await http.get(f"{stack.url('segment')}/v1/segments/{key}")
    assert response.status_code == 200, response.text
    return bool(response.json()["status"] == "ready")


async def members_are(http: httpx.AsyncClient, stack: Stack, key: str, expected: set[str]) -> bool:
    response = await http.get(f"{stack.url('segment')}/v1/segments/{key}/members")
    assert response.status_code == 200, response.text
    return {item["profile_id"] for item in response.json()["items"]} == expected


async def newest_change(http: httpx.AsyncClient, stack: Stack, key: str, profile_id: str) -> dict[str, Any]:
    """Return a person's latest entry into or exit from a segment."""
    response = await http.get(
        f"{stack.url('segment')}/v1/segments/{key}/history", params={"profile_id": profile_id, "limit": 1}
    )
    assert response.status_code == 200, response.text
    newest: dict[str, Any] = response.json()["items"][0]
    return newest


async def start_campaign(
    http: httpx.AsyncClient, stack: Stack, *, name: str, audience: dict[str, Any], subject: str
) -> str:
    """Create an e-mail campaign without a holdout group, start it, and return its id."""
    created = await http.post(
        f"{stack.url('campaign')}/v1/campaigns",
        json={
            "name": name,
            "channel": "email",
            "audience": audience,
            "variants": [
                {
                    "key": "a",
                    "subject": subject,
                    "body": '<p>Hi {{ profile.first_name }}</p><a href="https://shop.example/">Shop</a>',
                }
            ],
            "holdout_percent": 0,
        },
    )
    assert created.status_code == 201, created.text
    campaign_id: str = created.json()["id"]
    started = await http.post(f"{stack.url('campaign')}/v1/campaigns/{campaign_id}/schedule")
    assert started.status_code == 200, started.text
    assert started.json()["status"] == "running"
    return campaign_id


async def decided_send(
    http: httpx.AsyncClient, stack: Stack, campaign_id: str, profile_id: str
) -> dict[str, Any]:
    """Wait until a campaign has decided its send to a person; return that send."""

    async def decided() -> dict[str, Any] | None:
        response = await http.get(
            f"{stack.url('campaign')}/v1/campaigns/{campaign_id}/recipients/{profile_id}"
        )
        assert response.status_code == 200, response.text
        sends: list[dict[str, Any]] = response.json()["sends"]
        if not sends or sends[-1]["status"] in UNDECIDED:
            return None
        return sends[-1]

    return await wait_for(decided, timeout=60, what=f"the send of {campaign_id} to {profile_id}")


async def mails_to(mailbox: Mailbox, address: str, *, count: int) -> list[Any] | None:
    found = mailbox.to(address)
    return found if len(found) >= count else None
