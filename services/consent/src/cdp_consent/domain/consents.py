"""Consent decisions as pure rules: the catalogue of purposes and channels, which ledger
entry is in force, what a Segment consent signal means, and how two profiles' states merge."""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from datetime import datetime
from enum import StrEnum
from typing import Any


class ConsentStatus(StrEnum):
    """What a person decided about one purpose on one channel."""

    GRANTED = "granted"
    DENIED = "denied"
    WITHDRAWN = "withdrawn"


class LegalBasis(StrEnum):
    """The lawful bases of GDPR Art. 6(1)."""

    CONSENT = "consent"
    CONTRACT = "contract"
    LEGAL_OBLIGATION = "legal_obligation"
    VITAL_INTERESTS = "vital_interests"
    PUBLIC_TASK = "public_task"
    LEGITIMATE_INTERESTS = "legitimate_interests"


class RefusalReason(StrEnum):
    """Why the check API says a profile may not be contacted."""

    NO_RECORD = "no_record"
    DENIED = "denied"
    WITHDRAWN = "withdrawn"
    SUPPRESSED = "suppressed"


class UnknownPurpose(ValueError):
    """The purpose or channel is not in the configured catalogue."""


# Which kind of suppressed address blocks which channel.
SUPPRESSION_KIND_OF_CHANNEL = {"email": "email", "sms": "phone", "phone": "phone"}


@dataclass(frozen=True)
class Catalogue:
    """The configured purposes and channels."""

    purposes: tuple[str, ...]
    channels: tuple[str, ...]

    def require(self, *, purpose: str, channel: str) -> None:
        """Raise UnknownPurpose unless both are configured."""
        if purpose not in self.purposes:
            raise UnknownPurpose(f"unknown purpose {purpose!r}; known: {list(self.purposes)}")
        if channel not in self.channels:
            raise UnknownPurpose(f"unknown channel {channel!r}; known: {list(self.channels)}")

    def expand(self, pair: str) -> list[tuple[str, str]]:
        """Turn 'purpose:channel' (channel '*' = every channel) into concrete pairs."""
        purpose, _, channel = pair.partition(":")
        channels = self.channels if channel in ("*", "") else (channel,)
        return [(purpose, c) for c in channels]


@dataclass(frozen=True)
class StateEntry:
    """The decision in force for one purpose and channel, and the ledger entry it came from."""

    status: ConsentStatus
    at: datetime
    ledger_id: int


def supersedes(*, new_at: datetime, new_id: int, current: StateEntry | None) -> bool:
    """Whether a ledger entry replaces the one in force: the latest time wins, then the latest entry."""
    if current is None:
        return True
    return (new_at, new_id) >= (current.at, current.ledger_id)


def status_for_refusal(current: ConsentStatus | None) -> ConsentStatus:
    """Return what a 'no' means now: withdrawn after a grant, else denied."""
    return ConsentStatus.WITHDRAWN if current is ConsentStatus.GRANTED else ConsentStatus.DENIED


def preferences_of(context: Mapping[str, Any]) -> dict[str, bool] | None:
    """Return `context.consent.categoryPreferences` as category → bool, or None when absent."""
    consent = context.get("consent")
    if not isinstance(consent, Mapping) or "categoryPreferences" not in consent:
        return None
    raw = consent.get("categoryPreferences")
    if not isinstance(raw, Mapping):
        return {}
    return {str(name): value is True for name, value in raw.items()}


def decisions_from_preferences(
    *,
    preferences: Mapping[str, bool],
    category_purposes: Mapping[str, Iterable[str]],
    catalogue: Catalogue,
) -> dict[tuple[str, str], bool]:
    """Map Segment categories to (purpose, channel) → yes/no; a missing category means no.

    When two categories name the same pair, a 'no' from either wins.
    """
    decisions: dict[tuple[str, str], bool] = {}
    for category, pairs in category_purposes.items():
        agreed = preferences.get(category, False)
        for pair in pairs:
            for key in catalogue.expand(pair):
                decisions[key] = decisions.get(key, True) and agreed
    return decisions


def restrictiveness(status: ConsentStatus) -> int:
    """Rank statuses: a higher rank is more restrictive."""
    return 0 if status is ConsentStatus.GRANTED else 1


@dataclass(frozen=True)
class MergedDecision:
    """The state a survivor takes for one purpose and channel after a merge."""

    purpose: str
    channel: str
    status: ConsentStatus
    at: datetime
    survivor: ConsentStatus | None
    absorbed: ConsentStatus | None

    @property
    def conflict(self) -> bool:
        """Whether the two profiles had decided differently."""
        return self.survivor is not None and self.absorbed is not None and self.survivor != self.absorbed

    @property
    def changes_survivor(self) -> bool:
        """Whether the survivor's state must change."""
        return self.status != self.survivor


def merge_states(
    *, survivor: Mapping[tuple[str, str], StateEntry], absorbed: Mapping[tuple[str, str], StateEntry]
) -> list[MergedDecision]:
    """Combine two profiles' states: for every purpose and channel the most restrictive wins.

    Having no record is not a decision, so the other profile's decision stands alone.
    """
    decisions: list[MergedDecision] = []
    for key in sorted(set(survivor) | set(absorbed)):
        mine, theirs = survivor.get(key), absorbed.get(key)
        candidates = [entry for entry in (mine, theirs) if entry is not None]
        winner = max(candidates, key=lambda e: (restrictiveness(e.status), e.at))
        decisions.append(
            MergedDecision(
                purpose=key[0],
                channel=key[1],
                status=winner.status,
                at=max(e.at for e in candidates),
                survivor=mine.status if mine else None,
                absorbed=theirs.status if theirs else None,
            )
        )
    return decisions
