"""Journeys: a trigger, then steps of send, wait and branch, until the end or the goal.

`advance` is pure: given where a person is and what is known about them, it says
which messages to send, where the person now is, and when to look again.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field
from datetime import datetime, timedelta
from typing import Annotated, Literal

from pydantic import Field, model_validator

from cdp_campaign.domain.campaigns import Channel, Goal, Strict, Trigger, Variant


class SendStep(Strict):
    """Send a message on a channel."""

    type: Literal["send"]
    channel: Channel = "email"
    content: Variant


class WaitStep(Strict):
    """Wait a duration, or until an event (then at most `hours`)."""

    type: Literal["wait"]
    hours: float | None = Field(default=None, gt=0, le=24 * 365)
    until_event: str | None = Field(default=None, min_length=1, max_length=200)

    @model_validator(mode="after")
    def _something_to_wait_for(self) -> WaitStep:
        if self.hours is None and self.until_event is None:
            raise ValueError("a wait step needs 'hours', 'until_event' or both")
        return self


class TraitCondition(Strict):
    """A trait equal to a value."""

    trait: str = Field(min_length=1, max_length=200)
    equals: str | int | float | bool


class BranchStep(Strict):
    """Go to one step or another, on a condition or on engagement with the journey's messages."""

    type: Literal["branch"]
    condition: TraitCondition | None = None
    engagement: Literal["opened", "clicked", "purchased"] | None = None
    then_step: int = Field(ge=0)
    else_step: int = Field(ge=0)

    @model_validator(mode="after")
    def _one_test(self) -> BranchStep:
        if (self.condition is None) == (self.engagement is None):
            raise ValueError("a branch needs exactly one of 'condition' and 'engagement'")
        return self


Step = Annotated[SendStep | WaitStep | BranchStep, Field(discriminator="type")]


class JourneySpec(Strict):
    """Everything a user defines about a journey."""

    name: str = Field(min_length=1, max_length=200)
    consent_purpose: str | None = Field(default=None, min_length=1, max_length=100)
    consent_channel: str | None = Field(default=None, min_length=1, max_length=100)
    trigger: Trigger
    steps: list[Step] = Field(min_length=1, max_length=100)
    goal: Goal | None = None

    @model_validator(mode="after")
    def _branches_in_range(self) -> JourneySpec:
        for index, step in enumerate(self.steps):
            if isinstance(step, BranchStep):
                for target in (step.then_step, step.else_step):
                    if target > len(self.steps):
                        raise ValueError(f"step {index} branches to {target}, past the end")
                    if target <= index:
                        raise ValueError(f"step {index} branches back to {target}; journeys only go forward")
        return self


@dataclass
class Position:
    """Where a person is in a journey."""

    step: int
    state: Literal["active", "waiting", "done", "exited"] = "active"
    wake_at: datetime | None = None
    waiting_for: str | None = None
    step_started_at: datetime | None = None


@dataclass
class Facts:
    """What the journey may ask about a person when it advances."""

    traits: dict[str, object]
    engaged: Callable[[str], bool]
    event_seen: Callable[[str, datetime], bool]


@dataclass
class Advance:
    """The outcome of advancing: messages to send (step indexes) and the new position."""

    position: Position
    sends: list[int] = field(default_factory=list)


def advance(*, spec: JourneySpec, position: Position, now: datetime, facts: Facts) -> Advance:
    """Move a person through the journey as far as it goes at `now`."""
    outcome = Advance(position=position)
    while position.state in ("active", "waiting"):
        if position.step >= len(spec.steps):
            position.state = "done"
            position.wake_at = None
            break
        step = spec.steps[position.step]
        if isinstance(step, SendStep):
            outcome.sends.append(position.step)
            _next(position, position.step + 1, now)
        elif isinstance(step, WaitStep):
            if position.state != "waiting":
                position.state = "waiting"
                position.step_started_at = now
                position.waiting_for = step.until_event
                position.wake_at = now + timedelta(hours=step.hours) if step.hours is not None else None
            started = position.step_started_at or now
            if (step.until_event is not None and facts.event_seen(step.until_event, started)) or (
                position.wake_at is not None and position.wake_at <= now
            ):
                _next(position, position.step + 1, now)
            else:
                break
        else:
            if step.condition is not None:
                passed = facts.traits.get(step.condition.trait) == step.condition.equals
            else:
                assert step.engagement is not None
                passed = facts.engaged(step.engagement)
            _next(position, step.then_step if passed else step.else_step, now)
    return outcome


def _next(position: Position, step: int, now: datetime) -> None:
    position.step = step
    position.state = "active"
    position.wake_at = None
    position.waiting_for = None
    position.step_started_at = now
