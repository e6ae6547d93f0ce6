"""Tracking plans in each mode, and the token bucket of the rate limit."""

from __future__ import annotations

from typing import Any

import pytest
from cdp_ingest.domain.plans import InvalidPlan, TrackingPlan, new_plan
from cdp_ingest.domain.ratelimit import RateLimiter, retry_after_header

SCHEMA = {
    "type": "object",
    "properties": {"order_id": {"type": "string"}, "total": {"type": "number", "minimum": 0}},
    "required": ["order_id"],
}


def plan(mode: Any) -> TrackingPlan:
    return TrackingPlan(
        mode=mode,
        events={"Order Completed": SCHEMA},
        identify={
            "type": "object",
            "properties": {"email": {"type": "string"}},
            "additionalProperties": False,
        },
    )


def track(name: str, properties: dict[str, Any]) -> dict[str, Any]:
    return {"type": "track", "event": name, "properties": properties, "messageId": "m"}


def test_allow_passes_everything() -> None:
    verdict = plan("allow").evaluate(track("Anything", {"x": 1}))
    assert verdict.event is not None
    assert verdict.violations == []


def test_flag_accepts_and_names_each_violation_without_values() -> None:
    verdict = plan("flag").evaluate(track("Order Completed", {"total": "secret@example.com"}))
    assert verdict.event is not None
    assert {(v.kind, v.path) for v in verdict.violations} == {
        ("schema", "properties.total"),
        ("schema", "properties"),
    }
    assert all("secret" not in v.rule for v in verdict.violations)
    unplanned = plan("flag").evaluate(track("Mystery", {}))
    assert unplanned.event is not None
    assert [v.kind for v in unplanned.violations] == ["unplanned_event"]


def test_omit_drops_unplanned_properties() -> None:
    verdict = plan("omit").evaluate(track("Order Completed", {"order_id": "o", "total": 3, "debug": True}))
    assert verdict.event is not None
    assert verdict.event["properties"] == {"order_id": "o", "total": 3}
    assert verdict.violations == []


def test_block_refuses_unplanned_events_and_schema_violations() -> None:
    unplanned = plan("block").evaluate(track("Mystery", {}))
    assert unplanned.event is None
    assert unplanned.refusal is not None
    assert unplanned.refusal.code == "unplanned_event"
    broken = plan("block").evaluate(track("Order Completed", {"total": -1, "order_id": "o"}))
    assert broken.refusal is not None
    assert (broken.refusal.code, broken.refusal.field) == ("tracking_plan_violation", "properties.total")
    assert plan("block").evaluate(track("Order Completed", {"order_id": "o"})).event is not None


def test_identify_traits_are_checked_and_other_calls_pass() -> None:
    verdict = plan("block").evaluate(
        {"type": "identify", "traits": {"email": "a", "age": 3}, "messageId": "m"}
    )
    assert verdict.refusal is not None
    assert plan("block").evaluate({"type": "page", "properties": {}, "messageId": "m"}).event is not None


def test_an_invalid_schema_is_refused() -> None:
    with pytest.raises(InvalidPlan):
        TrackingPlan(mode="flag", events={"X": {"type": "no-such-type"}})


def coupon_plan(pattern: str) -> dict[str, Any]:
    return {
        "mode": "block",
        "events": {
            "Coupon Applied": {
                "type": "object",
                "properties": {"code": {"type": "string", "pattern": pattern}},
            }
        },
    }


def test_a_pattern_checks_values_without_backtracking_on_what_anybody_sends() -> None:
    checked = new_plan(coupon_plan(r"^([A-Z]+-?)+$"))
    assert checked.evaluate(track("Coupon Applied", {"code": "XMAS-SALE"})).event is not None
    # A backtracking engine tries about 2^60 ways to match this before saying no.
    hostile = checked.evaluate(track("Coupon Applied", {"code": "A" * 60 + "!"}))
    assert hostile.refusal is not None
    assert hostile.refusal.field == "properties.code"
    assert all("AAAA" not in v.rule for v in hostile.violations), "the rule names the pattern, not the value"


@pytest.mark.parametrize(
    ("schema", "reason", "value"),
    [
        ({"type": "string", "pattern": r"^(?!test-)"}, "not a valid RE2 pattern", "fine"),
        (
            {"type": "object", "patternProperties": {"^x_": {"type": "string"}}},
            "patternProperties",
            {"x_a": "b"},
        ),
    ],
)
def test_new_plans_with_backtracking_patterns_are_refused(
    schema: dict[str, Any], reason: str, value: Any
) -> None:
    with pytest.raises(InvalidPlan, match=reason):
        new_plan({"mode": "flag", "events": {"X": {"type": "object", "properties": {"p": schema}}}})
    # A plan stored before still loads and checks as it was written.
    stored = TrackingPlan(mode="block", events={"X": {"type": "object", "properties": {"p": schema}}})
    assert stored.evaluate(track("X", {"p": value})).event is not None
    assert stored.evaluate(track("X", {"p": "test-1" if value == "fine" else {"x_a": 1}})).refusal is not None


def test_a_pattern_inside_a_constant_is_data_not_a_keyword() -> None:
    document = {"mode": "flag", "events": {"X": {"const": {"pattern": "(?!x)"}}}}
    assert new_plan(document).mode == "flag"


def test_the_token_bucket_allows_a_burst_then_the_rate() -> None:
    limiter = RateLimiter()
    waits = [limiter.wait_time(key="s", rate_per_s=2, burst=3, now=100.0) for _ in range(4)]
    assert waits[:3] == [0, 0, 0]
    assert waits[3] == pytest.approx(0.5)
    assert limiter.wait_time(key="s", rate_per_s=2, burst=3, now=100.5) == 0
    assert limiter.wait_time(key="other", rate_per_s=2, burst=3, now=100.5) == 0
    assert retry_after_header(0.2) == "1"
    assert retry_after_header(2.1) == "3"
