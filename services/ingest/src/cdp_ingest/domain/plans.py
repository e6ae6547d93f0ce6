"""Tracking plans: per source, a JSON Schema per event name and for identify traits, and a mode.

Modes: `allow` passes everything; `flag` accepts and records each violation;
`omit` also drops the properties (or traits) the plan does not name; `block`
refuses unplanned events and events that break their schema. A violation names
the rule and the path, never the offending value, because values may be personal.
"""

from __future__ import annotations

import json
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any, Literal

from jsonschema import Draft202012Validator
from jsonschema.exceptions import SchemaError

from cdp_ingest.domain.errors import CallError

Mode = Literal["allow", "flag", "omit", "block"]
MODES: tuple[Mode, ...] = ("allow", "flag", "omit", "block")
MAX_VIOLATIONS_PER_EVENT = 10


@dataclass(frozen=True)
class Violation:
    """One way an event breaks its source's tracking plan."""

    kind: Literal["unplanned_event", "schema"]
    event_type: str
    event_name: str | None
    path: str | None
    rule: str


@dataclass(frozen=True)
class Verdict:
    """What the plan makes of one event: the event to publish (None when refused) and what was wrong."""

    event: dict[str, Any] | None
    violations: list[Violation] = field(default_factory=list)
    refusal: CallError | None = None


class InvalidPlan(ValueError):
    """A tracking plan whose schemas are not valid JSON Schema."""


@dataclass(frozen=True)
class TrackingPlan:
    """A source's plan: schemas of `track` properties per event name and of identify traits."""

    mode: Mode
    events: Mapping[str, Mapping[str, Any]]
    identify: Mapping[str, Any] | None = None
    _validators: dict[str, Draft202012Validator] = field(default_factory=dict, compare=False, repr=False)

    def __post_init__(self) -> None:
        schemas = {**{"track:" + name: schema for name, schema in self.events.items()}}
        if self.identify is not None:
            schemas["identify"] = self.identify
        for key, schema in schemas.items():
            try:
                Draft202012Validator.check_schema(schema)
            except SchemaError as exc:
                raise InvalidPlan(f"{key}: {exc.message}") from exc
            self._validators[key] = Draft202012Validator(schema)

    def evaluate(self, event: dict[str, Any]) -> Verdict:
        """Check one event document against the plan."""
        if self.mode == "allow":
            return Verdict(event)
        call_type = event["type"]
        if call_type == "track":
            key, field_name = "track:" + event["event"], "properties"
        elif call_type == "identify" and self.identify is not None:
            key, field_name = "identify", "traits"
        else:
            return Verdict(event)
        validator = self._validators.get(key)
        name = event.get("event")
        if validator is None:
            violation = Violation("unplanned_event", call_type, name, None, "the event is not in the plan")
            if self.mode == "block":
                return Verdict(
                    None,
                    [violation],
                    CallError(
                        "unplanned_event", f"the event {name!r} is not in the source's tracking plan", "event"
                    ),
                )
            return Verdict(event, [violation])
        violations = [
            Violation(
                "schema",
                call_type,
                name,
                ".".join([field_name, *(str(part) for part in error.absolute_path)]),
                _rule(error.validator, error.validator_value),
            )
            for error in list(validator.iter_errors(event.get(field_name) or {}))[:MAX_VIOLATIONS_PER_EVENT]
        ]
        if violations and self.mode == "block":
            first = violations[0]
            return Verdict(
                None,
                violations,
                CallError(
                    "tracking_plan_violation",
                    f"{first.path} breaks the tracking plan ({first.rule})",
                    first.path,
                ),
            )
        if self.mode == "omit" and isinstance(validator.schema, Mapping):
            event = _without_unplanned(event, field_name, validator.schema)
        return Verdict(event, violations)


def _rule(validator: Any, value: Any) -> str:
    if isinstance(value, dict):
        return str(validator)
    return f"{validator}: {json.dumps(value)[:200]}"


def _without_unplanned(event: dict[str, Any], field_name: str, schema: Mapping[str, Any]) -> dict[str, Any]:
    planned = schema.get("properties")
    if not isinstance(planned, dict):
        return event
    values = event.get(field_name) or {}
    kept = {key: value for key, value in values.items() if key in planned}
    return event if len(kept) == len(values) else {**event, field_name: kept}


def plan_from_document(document: Mapping[str, Any]) -> TrackingPlan:
    """Build a plan from its stored or submitted form."""
    return TrackingPlan(
        mode=document["mode"], events=dict(document.get("events") or {}), identify=document.get("identify")
    )
