"""Who is excluded from a gated consent purpose, under legitimate interest and under opt-in."""

from __future__ import annotations

import pytest
from cdp_common.purposes import (
    ANALYTICS,
    PERSONALISATION,
    PROFILING,
    Basis,
    PurposePolicy,
    PurposeSettings,
    excluded_from,
)
from pydantic import ValidationError


def decided(**statuses: str) -> dict[str, dict[str, str]]:
    """Decisions as segment keeps them: `purpose:channel` → {"status", "at"}; `__` stands for `:`."""
    return {
        key.replace("__", ":"): {"status": s, "at": "2025-01-01T00:00:00+00:00"}
        for key, s in statuses.items()
    }


@pytest.mark.parametrize(
    ("consents", "excluded"),
    [
        ({}, False),
        (decided(profiling_segmentation__email="granted"), False),
        (decided(profiling_segmentation__email="denied"), True),
        (decided(profiling_segmentation__sms="withdrawn"), True),
        # A refusal on any channel excludes, whatever the others say.
        (decided(profiling_segmentation__email="granted", profiling_segmentation__push="withdrawn"), True),
        # Another purpose's refusal, or a purpose whose name only begins the same, does not.
        (decided(personalisation__email="denied", analytics__email="withdrawn"), False),
        (decided(profiling_segmentation_extra__email="denied"), False),
    ],
)
def test_under_legitimate_interest_only_a_refusal_excludes(
    consents: dict[str, object], excluded: bool
) -> None:
    assert excluded_from(PROFILING, consents) is excluded


@pytest.mark.parametrize(
    ("consents", "excluded"),
    [
        ({}, True),
        (decided(personalisation__email="granted"), False),
        (decided(personalisation__push="granted", personalisation__email="denied"), True),
        (decided(personalisation__email="withdrawn"), True),
        (decided(profiling_segmentation__email="granted"), True),
    ],
)
def test_under_opt_in_a_person_is_excluded_until_they_grant(
    consents: dict[str, object], excluded: bool
) -> None:
    assert excluded_from(PERSONALISATION, consents, opt_in={PERSONALISATION}) is excluded


def test_decisions_may_be_plain_statuses() -> None:
    assert excluded_from(ANALYTICS, {"analytics:email": "denied"})
    assert not excluded_from(ANALYTICS, {"analytics:email": "granted"}, opt_in={ANALYTICS})


def test_the_policy_reads_opt_in_purposes_from_the_environment(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("CDP_OPT_IN_PURPOSES", "personalisation, analytics")
    policy = PurposePolicy.from_environment()
    assert policy.basis(PERSONALISATION) is Basis.OPT_IN
    assert policy.basis(PROFILING) is Basis.LEGITIMATE_INTEREST
    assert policy.excluded(ANALYTICS, {})
    assert not policy.excluded(PROFILING, {})
    monkeypatch.setenv("CDP_OPT_IN_PURPOSES", '["profiling_segmentation"]')
    assert PurposePolicy.from_environment().bases() == {
        PROFILING: "opt_in",
        PERSONALISATION: "legitimate_interest",
        ANALYTICS: "legitimate_interest",
    }


def test_an_unknown_purpose_in_the_setting_is_refused_by_name(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("CDP_OPT_IN_PURPOSES", "personalisation,marketing")
    with pytest.raises(ValidationError, match="marketing"):
        PurposeSettings()
