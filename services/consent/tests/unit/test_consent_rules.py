"""The pure consent rules: which entry is in force, Segment categories, the merge policy."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta

import pytest
from cdp_consent.domain.consents import (
    Catalogue,
    ConsentStatus,
    StateEntry,
    UnknownPurpose,
    decisions_from_preferences,
    merge_states,
    preferences_of,
    status_for_refusal,
    supersedes,
)

T0 = datetime(2024, 5, 1, tzinfo=UTC)
CATALOGUE = Catalogue(purposes=("analytics", "email_marketing"), channels=("email", "sms"))


def test_the_latest_time_is_in_force_whatever_the_order_of_arrival() -> None:
    current = StateEntry(ConsentStatus.WITHDRAWN, T0, ledger_id=5)
    assert not supersedes(new_at=T0 - timedelta(seconds=1), new_id=9, current=current)
    assert supersedes(new_at=T0, new_id=9, current=current), "same time: the later entry wins"
    assert supersedes(new_at=T0 - timedelta(days=1), new_id=1, current=None)


def test_a_no_after_a_grant_is_a_withdrawal() -> None:
    assert status_for_refusal(ConsentStatus.GRANTED) is ConsentStatus.WITHDRAWN
    assert status_for_refusal(None) is ConsentStatus.DENIED
    assert status_for_refusal(ConsentStatus.WITHDRAWN) is ConsentStatus.DENIED


@pytest.mark.parametrize(
    ("context", "expected"),
    [
        ({}, None),
        ({"consent": {}}, None),
        ({"consent": {"categoryPreferences": None}}, {}),
        ({"consent": {"categoryPreferences": "all"}}, {}),
        (
            {"consent": {"categoryPreferences": {"A": True, "B": "true", "C": 1}}},
            {"A": True, "B": False, "C": False},
        ),
    ],
)
def test_only_a_literal_true_is_a_yes(context: dict[str, object], expected: dict[str, bool] | None) -> None:
    assert preferences_of(context) == expected


def test_categories_map_to_purposes_and_a_no_from_any_category_wins() -> None:
    mapping = {
        "Analytics": ["analytics:*"],
        "Marketing": ["email_marketing:email"],
        "Strict": ["analytics:sms"],
    }
    decisions = decisions_from_preferences(
        preferences={"Analytics": True, "Marketing": True}, category_purposes=mapping, catalogue=CATALOGUE
    )
    assert decisions == {
        ("analytics", "email"): True,
        ("analytics", "sms"): False,
        ("email_marketing", "email"): True,
    }


def test_the_catalogue_refuses_unknown_names() -> None:
    with pytest.raises(UnknownPurpose, match="purpose"):
        CATALOGUE.require(purpose="telepathy", channel="email")
    with pytest.raises(UnknownPurpose, match="channel"):
        CATALOGUE.require(purpose="analytics", channel="fax")


def test_merging_keeps_the_most_restrictive_and_flags_conflicts() -> None:
    survivor = {
        ("analytics", "email"): StateEntry(ConsentStatus.GRANTED, T0 + timedelta(hours=1), 1),
        ("email_marketing", "email"): StateEntry(ConsentStatus.DENIED, T0, 2),
    }
    absorbed = {
        ("analytics", "email"): StateEntry(ConsentStatus.WITHDRAWN, T0, 3),
        ("email_marketing", "sms"): StateEntry(ConsentStatus.GRANTED, T0, 4),
    }
    decisions = {(d.purpose, d.channel): d for d in merge_states(survivor=survivor, absorbed=absorbed)}
    analytics = decisions[("analytics", "email")]
    assert analytics.status is ConsentStatus.WITHDRAWN
    assert analytics.conflict
    assert analytics.at == T0 + timedelta(hours=1)
    assert not decisions[("email_marketing", "email")].changes_survivor
    only_absorbed = decisions[("email_marketing", "sms")]
    assert only_absorbed.status is ConsentStatus.GRANTED
    assert not only_absorbed.conflict
    assert only_absorbed.changes_survivor
