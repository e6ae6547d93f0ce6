"""The rule language: every kind of condition, validation errors that say where, hostile input."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta
from typing import Any

import pytest
from cdp_segment.domain.evaluation import ProfileFacts, evaluate, explain
from cdp_segment.domain.membership import Catalog, SegmentDefinition
from cdp_segment.domain.rules import RuleError, parse_rule

NOW = datetime(2025, 6, 15, 12, 0, tzinfo=UTC)


def matches(rule: dict[str, Any], now: datetime = NOW, **facts: Any) -> bool:
    return evaluate(parse_rule(rule).root, ProfileFacts(**facts), now)


@pytest.mark.parametrize(
    ("op", "value", "actual", "expected"),
    [
        ("eq", "pro", "pro", True),
        ("eq", "pro", "Pro", False),
        ("eq", 1, 1.0, True),
        ("eq", 1, True, False),
        ("neq", "pro", "free", True),
        ("neq", "pro", None, False),
        ("lt", 10, 9.5, True),
        ("lt", 10, "9", False),
        ("lte", 10, 10, True),
        ("gt", 50, 50, False),
        ("gte", 50, 50, True),
        ("between", [18, 30], 30, True),
        ("between", [18, 30], 31, False),
        ("in", ["de", "fr"], "fr", True),
        ("in", ["de", "fr"], "it", False),
        ("not_in", ["de", "fr"], "it", True),
        ("contains", "gmail", "ada@gmail.com", True),
        ("contains", "vip", ["new", "vip"], True),
        ("contains", "vip", ["new"], False),
        ("starts_with", "+49", "+4930123", True),
        ("starts_with", "+49", "+3312", False),
        ("regex", "^ord-[0-9]+$", "ord-123", True),
        ("regex", "^ord-[0-9]+$", "ord-12a", False),
    ],
)
def test_trait_operators(op: str, value: Any, actual: Any, expected: bool) -> None:
    assert matches({"trait": "t", "op": op, "value": value}, traits={"t": actual}) is expected


def test_exists_and_nested_paths() -> None:
    rule = {"trait": "address.city", "op": "exists"}
    assert matches(rule, traits={"address": {"city": "Berlin"}})
    assert not matches(rule, traits={"address": {"city": None}})
    assert not matches(rule, traits={"address": "Berlin"})
    assert matches({"trait": "address.city", "op": "not_exists"}, traits={})


def test_relative_and_absolute_dates() -> None:
    recent = (NOW - timedelta(days=3)).isoformat()
    old = (NOW - timedelta(days=400)).isoformat()
    within = {"trait": "signed_up_at", "op": "within_last", "value": {"days": 30}}
    assert matches(within, traits={"signed_up_at": recent})
    assert not matches(within, traits={"signed_up_at": old})
    assert not matches(within, traits={"signed_up_at": "yesterday"})
    ago = {"trait": "signed_up_at", "op": "more_than_ago", "value": {"days": 365}}
    assert matches(ago, traits={"signed_up_at": old})
    assert matches({"trait": "d", "op": "before", "value": "2025-01-01"}, traits={"d": "2024-12-31"})
    assert matches({"trait": "d", "op": "after", "value": "2025-01-01"}, traits={"d": "2025-01-01T00:00:01Z"})


def test_a_window_that_expires_with_time() -> None:
    rule = {"trait": "last_login", "op": "within_last", "value": {"days": 7}}
    facts: dict[str, Any] = {"traits": {"last_login": "2025-06-10T12:00:00Z"}}
    assert matches(rule, now=NOW, **facts)
    assert not matches(rule, now=NOW + timedelta(days=3), **facts)


def test_event_conditions_become_computed_traits() -> None:
    parsed = parse_rule(
        {
            "event": "Order Completed",
            "op": "gte",
            "value": 2,
            "within_days": 30,
            "where": [{"property": "properties.total", "op": "gt", "value": 50}],
        }
    )
    (spec,) = parsed.computed_traits
    assert spec.as_request_body() == {
        "key": spec.key,
        "aggregation": "count",
        "event_name": "Order Completed",
        "property": None,
        "filters": [{"property": "total", "op": "gt", "value": 50}],
        "window_days": 30,
    }
    assert f"computed:{spec.key}" in parsed.dependencies
    assert evaluate(parsed.root, ProfileFacts(computed={spec.key: 2}), NOW)
    assert not evaluate(parsed.root, ProfileFacts(computed={spec.key: 1}), NOW)


def test_did_not_perform_holds_for_a_profile_profile_never_counted() -> None:
    rule = {"event": "Order Completed", "op": "eq", "value": 0, "within_days": 90}
    assert matches(rule)
    key = parse_rule(rule).computed_traits[0].key
    assert not matches(rule, computed={key: 3})


def test_first_and_last_occurrence() -> None:
    rule = {
        "event": "Order Completed",
        "measure": "first",
        "property": "properties.channel",
        "op": "eq",
        "value": "app",
    }
    key = parse_rule(rule).computed_traits[0].key
    assert matches(rule, computed={key: "app"})
    assert not matches(rule)
    last = {
        "event": "Order Completed",
        "measure": "last",
        "property": "properties.placed_at",
        "op": "within_last",
        "value": {"days": 30},
    }
    last_key = parse_rule(last).computed_traits[0].key
    assert matches(last, computed={last_key: (NOW - timedelta(days=2)).isoformat()})
    assert parse_rule(last).uses_clock
    with pytest.raises(RuleError) as caught:
        parse_rule({"event": "Order Completed", "measure": "last", "op": "exists"})
    assert caught.value.where == "rule.property"


def test_equal_event_conditions_share_one_computed_trait() -> None:
    one = parse_rule({"event": "Order Completed", "within_days": 30})
    other = parse_rule(
        {"any": [{"event": "Order Completed", "within_days": 30}, {"trait": "x", "op": "exists"}]}
    )
    assert one.computed_traits[0].key == other.computed_traits[0].key


def test_consent_geo_demographics_and_membership() -> None:
    facts: dict[str, Any] = {
        "traits": {
            "address": {"country": "DE", "city": "Berlin", "postal_code": "10115"},
            "gender": "Female",
            "birthday": "1990-06-15",
        },
        "consents": {"marketing:email": {"status": "granted"}},
        "segments": frozenset({"vip"}),
    }
    assert matches({"consent": {"purpose": "marketing", "channel": "email"}}, **facts)
    assert not matches({"consent": {"purpose": "marketing", "channel": "sms"}}, **facts)
    assert matches({"geo": {"country": ["de", "at"], "city": "berlin", "postal_code_prefix": "10"}}, **facts)
    assert not matches({"geo": {"postal_code_prefix": "8"}}, **facts)
    assert matches({"gender": "female"}, **facts)
    assert matches({"age": {"op": "eq", "value": 35}}, **facts)
    assert not matches({"age": {"op": "eq", "value": 35}}, now=datetime(2025, 6, 14, tzinfo=UTC), **facts)
    assert matches({"birthday_today": True}, **facts)
    assert matches({"segment": "vip"}, **facts)
    assert not matches({"segment": "churned"}, **facts)


def test_nested_groups() -> None:
    rule = {
        "all": [
            {"trait": "plan", "op": "eq", "value": "pro"},
            {
                "any": [
                    {"trait": "seats", "op": "gt", "value": 10},
                    {"not": {"trait": "trial", "op": "exists"}},
                ]
            },
        ]
    }
    assert matches(rule, traits={"plan": "pro"})
    assert matches(rule, traits={"plan": "pro", "trial": True, "seats": 11})
    assert not matches(rule, traits={"plan": "pro", "trial": True, "seats": 2})
    assert not matches(rule, traits={"plan": "free"})


def test_explain_lists_every_condition_with_its_value() -> None:
    rule = parse_rule(
        {"all": [{"trait": "plan", "op": "eq", "value": "pro"}, {"age": {"op": "gte", "value": 18}}]}
    )
    tree = explain(rule.root, ProfileFacts(traits={"plan": "free", "birthday": "2000-01-01"}), NOW)
    assert tree["result"] is False
    assert tree["conditions"][0] == {
        "type": "trait",
        "label": "plan",
        "path": "plan",
        "op": "eq",
        "expected": "pro",
        "actual": "free",
        "result": False,
    }
    assert tree["conditions"][1]["actual"] == 25
    assert tree["conditions"][1]["result"] is True


@pytest.mark.parametrize(
    ("rule", "where"),
    [
        ([], "rule"),
        ({"trait": "plan"}, "rule.op"),
        (
            {"all": [{"trait": "a", "op": "eq", "value": 1}, {"trait": "b", "op": "gt", "value": "x"}]},
            "rule.all[1].value",
        ),
        ({"all": []}, "rule.all"),
        ({"trait": "a", "op": "eq", "value": 1, "extra": 2}, "rule"),
        ({"trait": "a", "op": "between", "value": [5, 1]}, "rule.value"),
        ({"trait": "a", "op": "regex", "value": "(a)\\1"}, "rule.value"),
        ({"trait": "a", "op": "within_last", "value": 30}, "rule.value"),
        ({"event": "Order Completed", "measure": "sum"}, "rule.property"),
        ({"event": "x", "where": [{"property": "p", "op": "like", "value": 1}]}, "rule.where[0].op"),
        ({"segment": "Not A Key"}, "rule.segment"),
        ({"model": "astrology.sign", "op": "eq", "value": "leo"}, "rule.model"),
        ({"not": {"trait": "a", "op": "eq", "value": float("nan")}}, "rule.not.value"),
        ({"trait": "a", "op": "exists", "value": 1}, "rule.value"),
    ],
)
def test_invalid_rules_say_where(rule: Any, where: str) -> None:
    with pytest.raises(RuleError) as caught:
        parse_rule(rule)
    assert caught.value.where == where


def test_hostile_rules_are_refused() -> None:
    deep: dict[str, Any] = {"trait": "a", "op": "exists"}
    for _ in range(50):
        deep = {"not": deep}
    with pytest.raises(RuleError, match="nest"):
        parse_rule(deep)
    wide = {"any": [{"trait": f"t{i}", "op": "exists"} for i in range(500)]}
    with pytest.raises(RuleError, match="nodes"):
        parse_rule(wide)
    with pytest.raises(RuleError, match="characters"):
        parse_rule({"trait": "a", "op": "eq", "value": "x" * 10_000})


def test_a_catastrophic_pattern_runs_in_linear_time() -> None:
    # (a+)+$ backtracks exponentially in Python's re; RE2 answers at once.
    assert not matches({"trait": "a", "op": "regex", "value": "^(a+)+$"}, traits={"a": "a" * 5000 + "!"})


def test_dependencies_name_what_can_change_the_outcome() -> None:
    parsed = parse_rule(
        {
            "all": [
                {"trait": "address.city", "op": "eq", "value": "Berlin"},
                {"consent": {"purpose": "marketing", "channel": "email"}},
                {"segment": "vip"},
                {"age": {"op": "gt", "value": 18}},
            ]
        }
    )
    assert parsed.dependencies == {
        "trait:address",
        "consent:marketing:email",
        "segment:vip",
        "trait:birthday",
        "clock",
    }
    assert parsed.segment_refs == {"vip"}


def test_a_new_profile_is_evaluated_only_against_the_segments_it_can_be_in() -> None:
    rules = {
        "pro": {"trait": "plan", "op": "eq", "value": "pro"},
        "unseen": {"not": {"trait": "seen", "op": "exists"}},
        "adults": {"age": {"op": "gte", "value": 18}},
        "emailable": {"consent": {"purpose": "marketing", "channel": "email"}},
        "pro_unseen": {"all": [{"segment": "pro"}, {"segment": "unseen"}]},
    }
    catalog = Catalog(
        [SegmentDefinition(id=k, key=k, version=1, parsed=parse_rule(rule)) for k, rule in rules.items()]
    )
    facts = ProfileFacts(traits={"plan": "pro", "birthday": "2000-01-01"})
    assert catalog.affecting_new_profile(facts) == {"pro", "unseen", "adults"}
    now = datetime(2025, 6, 15, tzinfo=UTC)
    decided = {d.segment.key for d in catalog.decide(facts, None, now, new_profile=True)}
    # Equal to evaluating every segment: the skipped ones would not have matched.
    assert decided == {d.segment.key for d in catalog.decide(facts, None, now)} == {
        "pro", "unseen", "adults", "pro_unseen"
    }  # fmt: skip
