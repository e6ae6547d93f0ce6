"""What a campaign is: its audience, schedule, channel, content per variant, goal and status."""

from __future__ import annotations

import enum
from datetime import datetime
from typing import Annotated, Any, Literal

from pydantic import BaseModel, ConfigDict, Field, field_validator, model_validator


class CampaignError(Exception):
    """A request the campaign cannot honour; the message says why."""

    def __init__(self, message: str, *, code: str = "invalid_campaign", details: Any = None) -> None:
        super().__init__(message)
        self.code = code
        self.details = details


class Status(enum.StrEnum):
    """Where a campaign is in its life."""

    DRAFT = "draft"
    SCHEDULED = "scheduled"
    RUNNING = "running"
    PAUSED = "paused"
    COMPLETED = "completed"


TRANSITIONS: dict[Status, frozenset[Status]] = {
    Status.DRAFT: frozenset({Status.SCHEDULED, Status.RUNNING}),
    Status.SCHEDULED: frozenset({Status.DRAFT, Status.RUNNING, Status.PAUSED, Status.COMPLETED}),
    Status.RUNNING: frozenset({Status.PAUSED, Status.COMPLETED}),
    Status.PAUSED: frozenset({Status.RUNNING, Status.SCHEDULED, Status.COMPLETED}),
    Status.COMPLETED: frozenset(),
}


def check_transition(*, current: Status, target: Status) -> None:
    """Raise CampaignError unless a campaign may move from one status to another."""
    if target not in TRANSITIONS[current]:
        raise CampaignError(
            f"a {current.value} campaign cannot become {target.value}",
            code="invalid_transition",
            details={"from": current.value, "to": target.value, "allowed": sorted(TRANSITIONS[current])},
        )


class Strict(BaseModel):
    """A request body part: unknown fields are refused rather than ignored."""

    model_config = ConfigDict(extra="forbid", frozen=True)


class Goal(Strict):
    """The conversion a campaign is for, counted within a window after the send."""

    event: str = Field(min_length=1, max_length=200)
    window_hours: int = Field(default=72, ge=1, le=24 * 90)


class SegmentAudience(Strict):
    """Everyone in a segment when the campaign runs."""

    type: Literal["segment"]
    segment_key: str = Field(min_length=1, max_length=200)


class PropertyFilter(Strict):
    """An event property that must equal a value."""

    property: str = Field(min_length=1, max_length=200)
    equals: str | int | float | bool


class SegmentEnteredTrigger(Strict):
    """Whoever enters a segment, as they enter it."""

    type: Literal["segment_entered"]
    segment_key: str = Field(min_length=1, max_length=200)


class EventTrigger(Strict):
    """Whoever does an event whose properties match the filters."""

    type: Literal["event"]
    event: str = Field(min_length=1, max_length=200)
    filters: list[PropertyFilter] = Field(default_factory=list, max_length=20)


class DateTraitTrigger(Strict):
    """Whoever has a date trait (such as a birthday) whose month and day are today."""

    type: Literal["date_trait"]
    trait: str = Field(min_length=1, max_length=200)


Trigger = Annotated[SegmentEnteredTrigger | EventTrigger | DateTraitTrigger, Field(discriminator="type")]
Audience = Annotated[
    SegmentAudience | SegmentEnteredTrigger | EventTrigger | DateTraitTrigger, Field(discriminator="type")
]


class Schedule(Strict):
    """When a campaign runs: at once, at a time, or again every so many hours."""

    type: Literal["now", "at", "recurring"] = "now"
    at: datetime | None = None
    every_hours: int | None = Field(default=None, ge=1, le=24 * 366)

    @model_validator(mode="after")
    def _complete(self) -> Schedule:
        if self.type in ("at", "recurring") and self.at is None:
            raise ValueError(f"a schedule of type {self.type!r} needs 'at'")
        if self.at is not None and self.at.tzinfo is None:
            raise ValueError("'at' needs a time zone, e.g. 2026-12-01T09:00:00Z")
        if self.type == "recurring" and self.every_hours is None:
            raise ValueError("a recurring schedule needs 'every_hours'")
        return self


class LocalisedContent(Strict):
    """The content of a message in one locale."""

    subject: str | None = Field(default=None, max_length=1000)
    body: str = Field(min_length=1, max_length=200_000)
    text: str | None = Field(default=None, max_length=200_000)


class Variant(LocalisedContent):
    """One version of the content; variants split the non-holdout audience by weight."""

    key: str = Field(min_length=1, max_length=50, pattern=r"^[A-Za-z0-9_-]+$")
    weight: int = Field(default=1, ge=1, le=1000)
    locales: dict[str, LocalisedContent] = Field(default_factory=dict, max_length=50)

    def for_locale(self, locale: str | None) -> LocalisedContent:
        """Return the content for a locale: exact, then its language, then the default."""
        if locale:
            wanted = locale.replace("_", "-").lower()
            candidates = {k.replace("_", "-").lower(): v for k, v in self.locales.items()}
            if wanted in candidates:
                return candidates[wanted]
            language = wanted.split("-")[0]
            if language in candidates:
                return candidates[language]
        return self


Channel = Literal["email", "sms", "webhook"]


class CampaignSpec(Strict):
    """Everything a user defines about a campaign."""

    name: str = Field(min_length=1, max_length=200)
    channel: Channel = "email"
    consent_purpose: str | None = Field(default=None, min_length=1, max_length=100)
    consent_channel: str | None = Field(default=None, min_length=1, max_length=100)
    audience: Audience
    schedule: Schedule = Field(default_factory=Schedule)
    goal: Goal | None = None
    variants: list[Variant] = Field(min_length=1, max_length=20)
    holdout_percent: float = Field(default=10.0, ge=0, le=90)
    cost: float = Field(default=0.0, ge=0)
    webhook_url: str | None = Field(default=None, max_length=2000)
    from_address: str | None = Field(default=None, max_length=300)

    @field_validator("variants")
    @classmethod
    def _unique_keys(cls, variants: list[Variant]) -> list[Variant]:
        keys = [v.key for v in variants]
        if len(set(keys)) != len(keys):
            raise ValueError("variant keys must be unique")
        if "holdout" in keys:
            raise ValueError("'holdout' is reserved for the holdout group")
        return variants

    @model_validator(mode="after")
    def _channel_needs(self) -> CampaignSpec:
        if self.channel == "webhook" and not self.webhook_url:
            raise ValueError("a webhook campaign needs 'webhook_url'")
        if self.channel == "email" and any(v.subject is None for v in self.variants):
            raise ValueError("every variant of an e-mail campaign needs a 'subject'")
        return self

    @property
    def is_broadcast(self) -> bool:
        """Whether the campaign sends to a whole segment at once rather than on a trigger."""
        return isinstance(self.audience, SegmentAudience)

    def variant(self, key: str) -> Variant:
        """Return a variant by key."""
        for variant in self.variants:
            if variant.key == key:
                return variant
        raise CampaignError(f"no variant {key!r}", code="unknown_variant")


class CampaignPatch(Strict):
    """Fields of a campaign that can change while it is a draft or paused."""

    name: str | None = Field(default=None, min_length=1, max_length=200)
    audience: Audience | None = None
    schedule: Schedule | None = None
    goal: Goal | None = None
    variants: list[Variant] | None = Field(default=None, min_length=1, max_length=20)
    holdout_percent: float | None = Field(default=None, ge=0, le=90)
    cost: float | None = Field(default=None, ge=0)
    webhook_url: str | None = Field(default=None, max_length=2000)
    from_address: str | None = Field(default=None, max_length=300)


DEFAULT_CONSENT: dict[str, tuple[str, str]] = {
    "email": ("email_marketing", "email"),
    "sms": ("sms_marketing", "sms"),
    "webhook": ("third_party_sharing", "push"),
}


def consent_pair(*, channel: str, purpose: str | None, consent_channel: str | None) -> tuple[str, str]:
    """Return the purpose and consent channel a message on a channel needs consent for."""
    default_purpose, default_channel = DEFAULT_CONSENT[channel]
    return purpose or default_purpose, consent_channel or default_channel


def apply_patch(*, spec: CampaignSpec, patch: CampaignPatch) -> CampaignSpec:
    """Return the spec with the patch's set fields replaced, validated again."""
    merged = spec.model_dump(mode="json")
    merged.update(patch.model_dump(mode="json", exclude_unset=True))
    return CampaignSpec.model_validate(merged)
