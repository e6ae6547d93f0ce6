"""Stored campaign and journey definitions are parsed once per distinct content."""

from __future__ import annotations

import copy

from cdp_campaign.context import parsed_campaign, parsed_journey

CAMPAIGN = {
    "name": "Spring sale",
    "audience": {"type": "segment", "segment_key": "vip"},
    "variants": [{"key": "a", "subject": "Hi", "body": "<p>Hello</p>"}],
}
JOURNEY = {
    "name": "Welcome",
    "trigger": {"type": "segment_entered", "segment_key": "new"},
    "steps": [{"type": "send", "content": {"key": "w1", "subject": "Welcome", "body": "<p>Hi</p>"}}],
}


def test_the_same_definition_is_parsed_once_and_a_changed_one_anew() -> None:
    first = parsed_campaign(CAMPAIGN)
    assert parsed_campaign(copy.deepcopy(CAMPAIGN)) is first
    changed = {**copy.deepcopy(CAMPAIGN), "name": "Summer sale"}
    assert parsed_campaign(changed).name == "Summer sale"
    assert parsed_campaign(CAMPAIGN).name == "Spring sale"


def test_journeys_and_campaigns_do_not_share_parsed_definitions() -> None:
    journey = parsed_journey(JOURNEY)
    assert journey.name == "Welcome"
    assert parsed_journey(copy.deepcopy(JOURNEY)) is journey
