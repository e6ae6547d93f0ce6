"""Tracking plans: per source, a JSON Schema per event name and for identify traits, and a mode.

Modes: `allow` passes everything; `flag` accepts and records each violation;
`omit` also drops the properties (or traits) the plan does not name; `block`
refuses unplanned events and events that break their schema. A violation names
the rule and the path, never the offending value, because values may be personal.
"""

from __future__ import annotations

import json
from collections.abc import Iterator, Mapping
from dataclasses import dataclass, field
from functools import lru_cache
from typing import Any, Literal

from cdp_common.patterns import UnsafePattern, compile_linear, compile_stored
from jsonschema import Draft202012Validator, validators
from jsonschema.exceptions import SchemaError, ValidationError

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


@lru_cache(maxsize=1024)
def _pattern(source: str) -> Any:
    return compile_stored(source)


def _matches_pattern(
    validator: Any, pattern: str, instance: Any, schema: Mapping[str, Any]
) -> Iterator[ValidationError]:
    """The `pattern` keyword matched by RE2, in time linear in the value that anybody may send."""
    if validator.is_type(instance, "string") and _pattern(pattern).search(instance) is None:
        yield ValidationError(f"does not match the pattern {pattern!r}")


_PlanValidator = validators.extend(Draft202012Validator, {"pattern": _matches_pattern})  # type: ignore[no-untyped-call]
# Subtrees of a schema that hold data, not schemas: a "pattern" key in them is no keyword.
_DATA_KEYWORDS = frozenset({"const", "enum", "default", "examples"})


def _patterns_of(schema: Any) -> Iterator[tuple[str, Any]]:
    """Yield each `pattern` and `patternProperties` keyword of a schema with its value."""
    if isinstance(schema, list):
        for item in schema:
            yield from _patterns_of(item)
    elif isinstance(schema, Mapping):
        for key, value in schema.items():
            if key in ("pattern", "patternProperties"):
                yield key, value
            if key not in _DATA_KEYWORDS:
                yield from _patterns_of(value)


@dataclass(frozen=True)
class TrackingPlan:
    """A source's plan: schemas of `track` properties per event name and of identify traits."""

    mode: Mode
    events: Mapping[str, Mapping[str, Any]]
    identify: Mapping[str, Any] | None = None
    _validators: dict[str, Any] = field(default_factory=dict, compare=False, repr=False)

    def __post_init__(self) -> None:
        schemas = {**{"track:" + name: schema for name, schema in self.events.items()}}
        if self.identify is not None:
            schemas["identify"] = self.identify
        for key, schema in schemas.items():
            try:
                Draft202012Validator.check_schema(schema)
            except SchemaError as exc:
                raise InvalidPlan(f"{key}: {exc.message}") from exc
            self._validators[key] = _PlanValidator(schema)

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


def new_plan(document: Mapping[str, Any]) -> TrackingPlan:
    """Build a plan submitted now: its patterns must be RE2, which never backtracks.

    `patternProperties` is refused: the JSON Schema library matches property names against it
    with a backtracking engine, and property names come from whoever sends events."""
    plan = plan_from_document(document)
    schemas = [*plan.events.values(), plan.identify]
    for keyword, value in (found for schema in schemas for found in _patterns_of(schema)):
        if keyword == "patternProperties" and isinstance(value, Mapping):
            raise InvalidPlan("patternProperties is not supported in tracking plans; name the properties")
        if keyword == "pattern" and isinstance(value, str):
            try:
                compile_linear(value)
            except UnsafePattern as exc:
                raise InvalidPlan(f"the pattern {value!r} is {exc}") from exc
    return plan


def plan_from_document(document: Mapping[str, Any]) -> TrackingPlan:
    """Build a plan from its stored or submitted form."""
    return TrackingPlan(
        mode=document["mode"], events=dict(document.get("events") or {}), identify=document.get("identify")
    )
