"""Pure domain rules: identity planning, trait precedence, computed folds, duplicate scoring."""

from __future__ import annotations

import re
from datetime import UTC, datetime, timedelta

import pytest
from cdp_common.events import TrackingEventReceived
from cdp_common.patterns import compile_linear
from cdp_profile.domain.computed import (
    Definition,
    StoredEvent,
    combine_builtin,
    derive_builtin,
    fold_all,
    fold_builtin,
)
from cdp_profile.domain.duplicates import Candidate, candidate_of, company_key, find_suspects
from cdp_profile.domain.identity import (
    IdentifierKey,
    IdentityRules,
    ProfileHolding,
    identifiers_of,
    plan_resolution,
)
from cdp_profile.domain.traits import TraitValue, apply_traits, derive_traits

T = datetime(2026, 1, 1, tzinfo=UTC)


def event(**fields: object) -> TrackingEventReceived:
    return TrackingEventReceived.model_validate(
        {"type": "track", "messageId": "m", "sourceId": "s", "receivedAt": T, "timestamp": T, **fields}
    )


def test_identifiers_are_normalised_ordered_by_priority_and_blocked() -> None:
    rules = IdentityRules()
    keys, blocked = identifiers_of(
        event(
            userId="42",
            anonymousId="null",
            context={
                "traits": {"email": " A@B.DE ", "phone": "0171 2345678"},
                "externalIds": [{"type": "crm_id", "id": "c-1"}, {"type": "Bad Type", "id": "x"}],
            },
        ),
        rules=rules,
    )
    assert keys == [
        IdentifierKey("user_id", "42"),
        IdentifierKey("email", "a@b.de"),
        IdentifierKey("phone", "+491712345678"),
        IdentifierKey("crm_id", "c-1"),
    ]
    assert blocked == [IdentifierKey("anonymous_id", "null")]


def test_blocked_patterns_ignore_case_and_a_hostile_value_cannot_make_them_backtrack() -> None:
    rules = IdentityRules(blocked_patterns=(r"^(a+)+$", r"^guest-\d+$"))
    assert rules.is_blocked(IdentifierKey("user_id", "GUEST-17"))
    assert rules.is_blocked(IdentifierKey("user_id", "aaaa"))
    # A backtracking engine tries 2^60 ways to match this before saying no.
    assert not rules.is_blocked(IdentifierKey("user_id", "a" * 60 + "!"))
    assert not rules.is_blocked(IdentifierKey("user_id", "guest-x"))


def test_patterns_that_need_backtracking_are_refused_but_stored_ones_keep_working() -> None:
    with pytest.raises(ValueError, match="not a valid RE2 pattern"):
        compile_linear(r"^(?!vip-).*-test$", ignore_case=True)
    stored = IdentityRules(blocked_patterns=(r"^(?!vip-).*-test$",))
    assert stored.is_blocked(IdentifierKey("user_id", "ops-TEST"))
    assert not stored.is_blocked(IdentifierKey("user_id", "vip-test"))
    with pytest.raises(re.error):
        IdentityRules(blocked_patterns=("(unclosed",))


def test_phone_default_region_is_configurable() -> None:
    keys, _ = identifiers_of(
        event(context={"traits": {"phone": "(415) 555-2671"}}), rules=IdentityRules(), default_region="US"
    )
    assert keys == [IdentifierKey("phone", "+14155552671")]


def holding(pid: str, order: int, **counts: int) -> ProfileHolding:
    return ProfileHolding(profile_id=pid, created_order=(order,), counts=counts)


def test_a_merge_past_a_limit_drops_the_lowest_priority_identifier() -> None:
    u2, anon = IdentifierKey("user_id", "u2"), IdentifierKey("anonymous_id", "a")
    plan = plan_resolution(
        keys=[u2, anon],
        owners={anon: "p1"},
        holdings={"p1": holding("p1", 0, user_id=1, anonymous_id=1)},
        quarantined=[],
        rules=IdentityRules(),
    )
    assert plan.target is None
    assert plan.attach == [u2]
    assert plan.dropped == [anon]


def test_merge_plan_keeps_the_earliest_profile() -> None:
    email, anon = IdentifierKey("email", "e"), IdentifierKey("anonymous_id", "a")
    plan = plan_resolution(
        keys=[email, anon],
        owners={email: "late", anon: "early"},
        holdings={"late": holding("late", 2, email=1), "early": holding("early", 1, anonymous_id=1)},
        quarantined=[],
        rules=IdentityRules(),
    )
    assert plan.target == "early"
    assert plan.absorbed == ["late"]
    assert plan.linking == {"late": email}


def test_late_trait_values_lose_and_ties_are_broken_by_event_id() -> None:
    held = {"city": TraitValue("Berlin", "s", "e2", T)}
    assert (
        apply_traits(held, {"city": "Bonn"}, source="s", event_id="e1", timestamp=T - timedelta(days=1)) == {}
    )
    assert apply_traits(held, {"city": "Bonn"}, source="s", event_id="e1", timestamp=T) == {}
    changed = apply_traits(held, {"city": "Bonn"}, source="s", event_id="e3", timestamp=T)
    assert changed["city"].value == "Bonn"
    derived = derive_traits(
        [({"city": "Köln"}, "s", "e9", T), ({"city": "Bonn"}, "s", "e1", T - timedelta(1))]
    )
    assert derived["city"].value == "Köln"


def stored(name: str, days: float, **props: object) -> StoredEvent:
    return StoredEvent(
        event_id=f"{name}-{days}",
        type="track",
        name=name,
        timestamp=T + timedelta(days=days),
        properties=dict(props),
    )


def test_builtin_states_combine_exactly_like_folding_everything() -> None:
    left = [stored("Order Completed", 1, total=10, currency="EUR"), stored("Viewed", 2)]
    right = [stored("Order Completed", 3, total=5, currency="EUR"), stored("Order Refunded", 4, total=2)]
    everything: dict[str, object] = {}
    for e in left + right:
        everything = fold_builtin(everything, e)
    a: dict[str, object] = {}
    for e in left:
        a = fold_builtin(a, e)
    b: dict[str, object] = {}
    for e in right:
        b = fold_builtin(b, e)
    assert derive_builtin(combine_builtin(a, b)) == derive_builtin(everything)
    # Orders are booked apart (test_orders.py); the events themselves are counted.
    assert derive_builtin(everything)["event_counts"] == {
        "Order Completed": 2,
        "Order Refunded": 1,
        "Viewed": 1,
    }


def test_a_window_only_counts_recent_events() -> None:
    definition = Definition(key="k", aggregation="count", event_name="Viewed", window_days=7)
    events = [stored("Viewed", 0), stored("Viewed", 5), stored("Other", 6)]
    assert fold_all(events, definition, now=T + timedelta(days=8))["count"] == 1


@pytest.mark.parametrize(
    ("left", "right"), [("IBM", "I.B.M."), ("International Widgets GmbH", "International Widgets")]
)
def test_company_names_normalise_alike(left: str, right: str) -> None:
    assert company_key(left) == company_key(right)


def test_duplicate_suspects_catch_typos_but_not_strangers() -> None:
    candidates = [
        candidate_of("a", {"first_name": "Margarethe", "last_name": "Kunz", "email": "marga.kunz@gmail.com"}),
        candidate_of("b", {"first_name": "Margarete", "last_name": "Kunz", "email": "marga.kunz@gmial.com"}),
        candidate_of("c", {"first_name": "Peter", "last_name": "Kunz", "email": "peter@example.com"}),
        Candidate("d", None, None, None, None, company_key("I.B.M.")),
        Candidate("e", None, None, None, None, company_key("IBM Corp")),
    ]
    suspects = find_suspects(candidates)
    assert {s.profile_ids for s in suspects} == {("a", "b"), ("d", "e")}
    assert all(0.8 <= s.score <= 1 for s in suspects)
