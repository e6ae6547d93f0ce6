"""Consent learnt from resolved events on cdp.profiles.v1 (`context.consent.categoryPreferences`)
and the merge policy: the most restrictive state wins and the conflict is recorded."""

from __future__ import annotations

import asyncio
import secrets
from datetime import UTC, datetime, timedelta
from typing import Any

import httpx
import pytest
from cdp_common.events import (
    ConsentWithdrawn,
    ProfileCreated,
    ProfileMerged,
    ProfileUpdated,
    TrackingEventReceived,
    make_envelope,
)
from cdp_common.testing import read_topic, wait_for
from cdp_common.topics import TopicName

from ..conftest import ConsentUnderTest

pytestmark = pytest.mark.integration

ALL_CHANNELS = ("email", "phone", "postal", "push", "sms")


def tracked(at: datetime, preferences: dict[str, Any] | None) -> TrackingEventReceived:
    context: dict[str, Any] = {"ip": "198.51.100.4"}
    if preferences is not None:
        context["consent"] = {"categoryPreferences": preferences}
    return TrackingEventReceived(
        type="track",
        event="Page Viewed",
        messageId="m-" + secrets.token_hex(6),
        sourceId="src_web",
        receivedAt=at,
        timestamp=at,
        userId="u-" + secrets.token_hex(4),
        context=context,
    )


async def send_event(
    consent: ConsentUnderTest, profile_id: str, version: int, event: TrackingEventReceived
) -> None:
    payload_cls = ProfileCreated if version == 1 else ProfileUpdated
    await consent.publish(
        TopicName.PROFILES,
        payload=payload_cls(profile_id=profile_id, version=version, event_id=event.messageId, event=event),
        subject=profile_id,
    )


async def state_of(http: httpx.AsyncClient, profile_id: str) -> dict[tuple[str, str], str]:
    body = (await http.get(f"/v1/consents/{profile_id}")).json()
    return {(c["purpose"], c["channel"]): c["status"] for c in body["consents"]}


async def history_of(http: httpx.AsyncClient, profile_id: str) -> list[dict[str, Any]]:
    items: list[dict[str, Any]] = (
        await http.get(f"/v1/consents/{profile_id}/history", params={"limit": 1000})
    ).json()["items"]
    return items


async def test_category_preferences_become_consents_and_missing_ones_mean_no(
    consent: ConsentUnderTest, http: httpx.AsyncClient
) -> None:
    profile_id = "p-" + secrets.token_hex(6)
    at = datetime.now(UTC) - timedelta(minutes=5)
    await send_event(
        consent, profile_id, 1, tracked(at, {"Analytics": True, "Marketing": True, "Advertising": "yes"})
    )

    async def decided() -> dict[tuple[str, str], str] | None:
        state = await state_of(http, profile_id)
        return state if len(state) >= 21 else None

    state = await wait_for(decided, what="the event's consent to be recorded")
    for channel in ALL_CHANNELS:
        assert state[("analytics", channel)] == "granted"
        assert state[("personalisation", channel)] == "denied", "a missing category means no"
        assert state[("profiling_segmentation", channel)] == "denied", "only true means yes"
        assert state[("third_party_sharing", channel)] == "denied"
    assert state[("sms_marketing", "sms")] == "granted"
    assert ("email_marketing", "email") not in state, "an e-mail grant needs the double opt-in"
    entry = next(e for e in await history_of(http, profile_id) if e["purpose"] == "analytics")
    assert entry["source"] == "event:src_web"
    assert entry["evidence"]["category_preferences"]["Analytics"] is True
    assert entry["at"].startswith(at.strftime("%Y-%m-%dT%H:%M"))


async def test_the_latest_event_wins_and_a_later_no_withdraws(
    consent: ConsentUnderTest, http: httpx.AsyncClient
) -> None:
    profile_id = "p-" + secrets.token_hex(6)
    now = datetime.now(UTC)
    await send_event(consent, profile_id, 1, tracked(now - timedelta(minutes=10), {"Analytics": True}))
    await send_event(consent, profile_id, 2, tracked(now - timedelta(minutes=1), {}))
    # A late event with an older time arrives last: it is recorded but does not win.
    await send_event(consent, profile_id, 3, tracked(now - timedelta(minutes=5), {"Analytics": True}))
    await send_event(consent, profile_id, 4, tracked(now - timedelta(minutes=4), None))

    async def all_recorded() -> bool:
        return len([e for e in await history_of(http, profile_id) if e["purpose"] == "analytics"]) >= 15

    await wait_for(all_recorded, what="three analytics decisions on five channels")
    state = await state_of(http, profile_id)
    assert {state[("analytics", c)] for c in ALL_CHANNELS} == {"withdrawn"}
    analytics_email = [
        e["status"]
        for e in await history_of(http, profile_id)
        if (e["purpose"], e["channel"]) == ("analytics", "email")
    ]
    assert analytics_email == ["granted", "withdrawn", "granted"]

    def withdrawal_published(envelopes: list[Any]) -> bool:
        return any(
            isinstance(e.data, ConsentWithdrawn) and e.data.profile_id == profile_id for e in envelopes
        )

    await read_topic(
        bootstrap=consent.settings.kafka_bootstrap,
        topic=consent.settings.topic(TopicName.CONSENTS),
        until=withdrawal_published,
    )


async def test_merge_takes_the_most_restrictive_state_and_records_the_conflict(
    consent: ConsentUnderTest, http: httpx.AsyncClient
) -> None:
    survivor, absorbed = "p-" + secrets.token_hex(6), "p-" + secrets.token_hex(6)
    base = {"source": "crm", "wording_version": "v1"}
    decisions = [
        (survivor, "email_marketing", "email", "granted"),
        (absorbed, "email_marketing", "email", "withdrawn"),
        (survivor, "sms_marketing", "sms", "denied"),
        (absorbed, "sms_marketing", "sms", "denied"),
        (absorbed, "analytics", "push", "granted"),
    ]
    for profile_id, purpose, channel, status in decisions:
        body = {"profile_id": profile_id, "purpose": purpose, "channel": channel, "status": status, **base}
        assert (await http.post("/v1/consents", json=body)).status_code == 201

    merged = ProfileMerged(
        profile_id=survivor,
        absorbed_profile_id=absorbed,
        version=5,
        merge_id="m-" + secrets.token_hex(4),
        rule="email",
    )
    # Published on both keys, as profile does; it must be applied once.
    await consent.publish(TopicName.PROFILES, payload=merged, subject=survivor)
    await consent.publish(TopicName.PROFILES, payload=merged, subject=absorbed)

    async def merged_state() -> dict[tuple[str, str], str] | None:
        state = await state_of(http, survivor)
        return state if state.get(("email_marketing", "email")) == "withdrawn" else None

    state = await wait_for(merged_state, what="the merge to reach the survivor")
    assert state == {
        ("email_marketing", "email"): "withdrawn",
        ("sms_marketing", "sms"): "denied",
        ("analytics", "push"): "granted",
    }
    check = {"purpose": "email_marketing", "channel": "email", "profile_ids": [survivor, absorbed]}

    async def redirected() -> dict[str, Any] | None:
        answer: dict[str, Any] = (await http.post("/v1/consents/check", json=check)).json()
        return answer if len(answer["refused"]) == 2 else None

    answer = await wait_for(redirected, what="the absorbed id to answer for the survivor")
    assert answer["refused"] == {survivor: "withdrawn", absorbed: "withdrawn"}
    by_absorbed = (await http.get(f"/v1/consents/{absorbed}")).json()
    assert by_absorbed["profile_id"] == survivor

    merge_entries = [e for e in await history_of(http, survivor) if e["source"] == "merge"]
    assert len(merge_entries) == 2, "one entry per changed or conflicting decision, applied once"
    conflict = next(e for e in merge_entries if e["purpose"] == "email_marketing")
    assert conflict["evidence"] == {
        "merge_id": merged.merge_id,
        "absorbed_profile_id": absorbed,
        "survivor_status": "granted",
        "absorbed_status": "withdrawn",
        "conflict": True,
        "rule": "most_restrictive",
    }
    copied = next(e for e in merge_entries if e["purpose"] == "analytics")
    assert copied["evidence"]["conflict"] is False


async def test_a_burst_of_profile_changes_keeps_every_persons_contacts_and_consents(
    consent: ConsentUnderTest, http: httpx.AsyncClient
) -> None:
    # Published without waiting in between, so the consumer takes them in a few polls together.
    people = ["p-" + secrets.token_hex(6) for _ in range(6)]
    addresses = {p: f"{p}@burst.example" for p in people}
    at = datetime.now(UTC) - timedelta(minutes=2)
    sent = []
    for person in people:
        created = ProfileCreated(
            profile_id=person, version=1, identifiers=[{"type": "email", "value": addresses[person]}]
        )
        event = tracked(at, {"Analytics": True})
        updated = ProfileUpdated(profile_id=person, version=2, event_id=event.messageId, event=event)
        for payload in (created, updated):
            envelope = make_envelope(payload=payload, source="profile", subject=person)
            sent.append(
                await consent.producer.send(
                    consent.settings.topic(TopicName.PROFILES), value=envelope.to_bytes(), key=person.encode()
                )
            )
    await asyncio.gather(*sent)

    async def all_granted() -> bool:
        for person in people:
            if (await state_of(http, person)).get(("analytics", "email")) != "granted":
                return False
        return True

    await wait_for(all_granted, what="every person's analytics consent")
    suppressed = people[2]
    added = await http.post("/v1/suppressions", json={"type": "email", "value": addresses[suppressed]})
    assert added.status_code == 201
    check = {"purpose": "analytics", "channel": "email", "profile_ids": people}
    answer = (await http.post("/v1/consents/check", json=check)).json()
    assert answer["refused"] == {suppressed: "suppressed"}
    assert sorted(answer["allowed"]) == sorted(p for p in people if p != suppressed)
