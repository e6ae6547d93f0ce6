"""The consent purposes the platform enforces, what each one gates, and who is excluded from one.

Three purposes of the consent ledger change what the platform does with a person, beside the
marketing consents that decide whether a person is contacted at all:

- `profiling_segmentation` gates segment's segments and models: an excluded person is in no
  segment (rule-based or built-in) and has no model results;
- `personalisation` gates campaign's personal content: an excluded person's templates see no
  traits, computed traits, segments or recommendations, so every greeting takes its default;
- `analytics` gates aggregate figures: an excluded person is left out of the summaries of
  segment's model runs.

Each rests on legitimate interest by default (a person is excluded once they denied or withdrew
the purpose on any channel) or, named in `CDP_OPT_IN_PURPOSES`, on opt-in (excluded until they
granted it on some channel, and still excluded by a denial or withdrawal on any other).
`excluded_from` is the one rule every service applies; segment's SQL evaluates the same
`ExclusionRule` over its copy of the consents.
"""

from __future__ import annotations

import json
from collections.abc import Collection, Mapping
from dataclasses import dataclass
from enum import StrEnum
from typing import Annotated, Any

from pydantic import Field, field_validator
from pydantic_settings import BaseSettings, NoDecode, SettingsConfigDict

PROFILING = "profiling_segmentation"
PERSONALISATION = "personalisation"
ANALYTICS = "analytics"

# Which purpose gates what, by service; the consent README says the same to operators.
GATES: Mapping[str, str] = {
    PROFILING: "segment: membership of every segment (rule-based, RFM, lifecycle, clusters, CLV) and model results",
    PERSONALISATION: "campaign: traits, computed traits, segments and recommendations in templates",
    ANALYTICS: "segment: the summaries of model runs (RFM segments, lifecycle stages, clusters, CLV)",
}

GRANTED = "granted"
REFUSALS = frozenset({"denied", "withdrawn"})


class Basis(StrEnum):
    """What a gated purpose rests on."""

    LEGITIMATE_INTEREST = "legitimate_interest"
    OPT_IN = "opt_in"


@dataclass(frozen=True)
class ExclusionRule:
    """Who is excluded from a purpose: anyone with a refusal on any channel and, when the purpose
    needs a grant, anyone without one on any channel."""

    purpose: str
    refusals: frozenset[str]
    needs_grant: bool


def _status(decision: Any) -> str | None:
    if isinstance(decision, Mapping):
        status = decision.get("status")
        return status if isinstance(status, str) else None
    return decision if isinstance(decision, str) else None


def decisions_for(purpose: str, consents: Mapping[str, Any]) -> dict[str, str]:
    """Return a person's decisions on one purpose, by `purpose:channel`, from decisions keyed the same way.

    A decision is a status string or a mapping with a `status`.
    """
    prefix = f"{purpose}:"
    found = {}
    for key, decision in consents.items():
        status = _status(decision)
        if key.startswith(prefix) and status is not None:
            found[key] = status
    return found


def exclusion_rule(purpose: str, *, opt_in: Collection[str] = ()) -> ExclusionRule:
    """Return the rule that says who is excluded from a purpose."""
    return ExclusionRule(purpose=purpose, refusals=REFUSALS, needs_grant=purpose in opt_in)


def excluded_from(purpose: str, consents: Mapping[str, Any], *, opt_in: Collection[str] = ()) -> bool:
    """Whether a person with these decisions (keyed `purpose:channel`) is excluded from a purpose."""
    rule = exclusion_rule(purpose, opt_in=opt_in)
    statuses = set(decisions_for(purpose, consents).values())
    if statuses & rule.refusals:
        return True
    return rule.needs_grant and GRANTED not in statuses


class PurposeSettings(BaseSettings):
    """Which gated purposes rest on opt-in instead of legitimate interest (`CDP_OPT_IN_PURPOSES`)."""

    model_config = SettingsConfigDict(env_prefix="CDP_", extra="ignore", frozen=True)

    # A comma-separated list (`personalisation,analytics`) or a JSON list.
    opt_in_purposes: Annotated[frozenset[str], NoDecode] = Field(default=frozenset())

    @field_validator("opt_in_purposes", mode="before")
    @classmethod
    def _known_purposes(cls, value: Any) -> Any:
        """Accept a comma-separated or JSON list and refuse a purpose the platform does not gate."""
        if isinstance(value, str):
            text = value.strip()
            if text.startswith("["):
                value = json.loads(text)
            else:
                value = [part.strip() for part in text.split(",") if part.strip()]
        unknown = sorted(set(value) - set(GATES))
        if unknown:
            raise ValueError(f"{unknown} are not gated purposes; they are {sorted(GATES)}")
        return frozenset(value)


@dataclass(frozen=True)
class PurposePolicy:
    """A workspace's choice of basis for each gated purpose, and the exclusions it implies."""

    opt_in: frozenset[str] = frozenset()

    @classmethod
    def of(cls, settings: PurposeSettings) -> PurposePolicy:
        """Return the policy of a service's settings."""
        return cls(opt_in=frozenset(settings.opt_in_purposes))

    @classmethod
    def from_environment(cls) -> PurposePolicy:
        """Return the policy the environment configures (`CDP_OPT_IN_PURPOSES`)."""
        return cls.of(PurposeSettings())

    def basis(self, purpose: str) -> Basis:
        """Return what a purpose rests on."""
        return Basis.OPT_IN if purpose in self.opt_in else Basis.LEGITIMATE_INTEREST

    def rule(self, purpose: str) -> ExclusionRule:
        """Return the rule that says who is excluded from a purpose."""
        return exclusion_rule(purpose, opt_in=self.opt_in)

    def excluded(self, purpose: str, consents: Mapping[str, Any]) -> bool:
        """Whether a person with these decisions is excluded from a purpose."""
        return excluded_from(purpose, consents, opt_in=self.opt_in)

    def bases(self) -> dict[str, str]:
        """Return the basis of every gated purpose, by purpose."""
        return {purpose: self.basis(purpose).value for purpose in GATES}
