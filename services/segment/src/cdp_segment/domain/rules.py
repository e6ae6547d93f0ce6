"""The segment rule language: parsing and validation of JSON rules into typed nodes.

A rule is a JSON object. Groups: `{"all": [...]}`, `{"any": [...]}`, `{"not": {...}}`.
Conditions: `trait`, `computed`, `model` (a path, an `op` and a `value`), `event`
(an event condition that profile maintains as a computed trait), `consent`, `geo`,
`age`, `gender`, `birthday_today`, `segment` (membership of another segment) and
`account_trait` (a trait of one of the person's accounts, from `group` calls).
Every error names where it is, as a JSON path such as `rule.all[2].value`.
"""

from __future__ import annotations

import hashlib
import json
import math
from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import Any, Literal

import re2  # type: ignore[import-untyped]
from cdp_common.patterns import UnsafePattern, compile_linear

MAX_DEPTH = 12
MAX_NODES = 200
MAX_LIST = 500
MAX_STRING = 500
MAX_REGEX = 200

Op = Literal[
    "eq", "neq", "lt", "lte", "gt", "gte", "between", "in", "not_in", "contains", "starts_with",
    "regex", "exists", "not_exists", "within_last", "more_than_ago", "before", "after",
]  # fmt: skip
NUMERIC_OPS = frozenset({"lt", "lte", "gt", "gte", "between"})
CLOCK_OPS = frozenset({"within_last", "more_than_ago"})
DATE_OPS = frozenset({"within_last", "more_than_ago", "before", "after"})
OPS: frozenset[str] = frozenset(
    {"eq", "neq", "in", "not_in", "contains", "starts_with", "regex", "exists", "not_exists"}
    | NUMERIC_OPS
    | DATE_OPS
)
WHERE_OPS = frozenset({"eq", "neq", "lt", "lte", "gt", "gte", "in", "contains", "exists"})
MEASURES = ("count", "sum", "avg", "min", "max", "first", "last", "most_frequent", "unique")
# A missing aggregate means "no such event": zero for counters and sums, absent otherwise.
ZERO_WHEN_MISSING = frozenset({"count", "sum"})
Source = Literal["trait", "computed", "model"]

Scalar = str | int | float | bool


class RuleError(Exception):
    """A rule is not valid; `where` is the JSON path of the offending part."""

    def __init__(self, where: str, message: str) -> None:
        super().__init__(f"{where}: {message}")
        self.where = where
        self.message = message


@dataclass(frozen=True)
class Condition:
    """A comparison of one value of the profile (a trait, computed trait or model result)."""

    source: Source
    path: tuple[str, ...]
    op: str
    value: Any = None
    fold_case: bool = False
    default: Any = None
    label: str = ""


@dataclass(frozen=True)
class Age:
    """Age in whole years from the `birthday` trait, compared with an operator."""

    op: str
    value: Any


@dataclass(frozen=True)
class BirthdayToday:
    """Today is the profile's birthday (month and day of the `birthday` trait)."""


@dataclass(frozen=True)
class Consent:
    """The profile has granted a purpose on a channel (the latest decision counts)."""

    purpose: str
    channel: str


@dataclass(frozen=True)
class Membership:
    """The profile is a member of another segment."""

    segment_key: str


@dataclass(frozen=True)
class Group:
    """`all` (and), `any` (or) or `not` over child rules."""

    kind: Literal["all", "any", "not"]
    children: tuple[Rule, ...]


@dataclass(frozen=True)
class AccountTrait:
    """A trait of the person's accounts compared with an operator: true when one of the accounts
    matches (for `not_exists`, when none holds the trait)."""

    path: tuple[str, ...]
    op: str
    value: Any = None


Rule = Group | Condition | Age | BirthdayToday | Consent | Membership | AccountTrait


@dataclass(frozen=True)
class ComputedTraitSpec:
    """An event condition as profile maintains it: a windowed aggregate of one event."""

    kind: str
    event: str
    property_path: str | None = None
    where: tuple[tuple[str, str, Any], ...] = ()
    window_days: int | None = None
    fixed_key: str | None = None

    @property
    def key(self) -> str:
        """Return the stable key of the computed trait; equal specs share one."""
        if self.fixed_key is not None:
            return self.fixed_key
        canonical = json.dumps(self.as_request_body(key=""), sort_keys=True, separators=(",", ":"))
        return "seg_" + hashlib.sha256(canonical.encode()).hexdigest()[:16]

    def as_request_body(self, *, key: str | None = None) -> dict[str, Any]:
        """Return the body of profile's `POST /v1/computed-traits` (property paths inside `properties`)."""
        return {
            "key": self.key if key is None else key,
            "aggregation": self.kind,
            "event_name": self.event,
            "property": _inside_properties(self.property_path),
            "filters": [{"property": _inside_properties(p), "op": o, "value": v} for p, o, v in self.where],
            "window_days": self.window_days,
        }


def _inside_properties(path: str | None) -> str | None:
    """Return an event property path relative to `properties`, as profile reads it."""
    if path is None:
        return None
    return path.removeprefix("properties.")


@dataclass
class ParsedRule:
    """A validated rule with what it depends on."""

    root: Rule
    dependencies: frozenset[str]
    computed_traits: tuple[ComputedTraitSpec, ...]
    segment_refs: frozenset[str]
    uses_clock: bool


@dataclass
class _Parser:
    nodes: int = 0
    deps: set[str] = field(default_factory=set)
    specs: dict[str, ComputedTraitSpec] = field(default_factory=dict)
    segments: set[str] = field(default_factory=set)
    clock: bool = False

    def parse(self, raw: Any, where: str, depth: int) -> Rule:
        self.nodes += 1
        if self.nodes > MAX_NODES:
            raise RuleError(where, f"a rule may have at most {MAX_NODES} nodes")
        if depth > MAX_DEPTH:
            raise RuleError(where, f"a rule may nest at most {MAX_DEPTH} levels")
        if not isinstance(raw, dict) or not raw:
            raise RuleError(where, "expected a non-empty JSON object")
        kinds = [k for k in raw if k in _KINDS]
        if len(kinds) != 1:
            raise RuleError(where, f"expected exactly one of {sorted(_KINDS)}, found {sorted(raw)}")
        kind = kinds[0]
        allowed = _KINDS[kind]
        unknown = sorted(set(raw) - allowed - {kind})
        if unknown:
            raise RuleError(where, f"unknown field(s) {unknown} in a {kind!r} rule")
        parse_kind = getattr(self, f"_parse_{kind}")
        rule: Rule = parse_kind(raw, where, depth)
        return rule

    def _parse_all(self, raw: dict[str, Any], where: str, depth: int) -> Rule:
        return self._group("all", raw["all"], f"{where}.all", depth)

    def _parse_any(self, raw: dict[str, Any], where: str, depth: int) -> Rule:
        return self._group("any", raw["any"], f"{where}.any", depth)

    def _group(self, kind: Literal["all", "any"], children: Any, where: str, depth: int) -> Rule:
        if not isinstance(children, list) or not children:
            raise RuleError(where, "expected a non-empty list of rules")
        return Group(kind, tuple(self.parse(c, f"{where}[{i}]", depth + 1) for i, c in enumerate(children)))

    def _parse_not(self, raw: dict[str, Any], where: str, depth: int) -> Rule:
        return Group("not", (self.parse(raw["not"], f"{where}.not", depth + 1),))

    def _parse_trait(self, raw: dict[str, Any], where: str, depth: int) -> Rule:
        path = _path(raw["trait"], f"{where}.trait")
        self.deps.add(f"trait:{path[0]}")
        return self._condition("trait", path, raw, where)

    def _parse_computed(self, raw: dict[str, Any], where: str, depth: int) -> Rule:
        key = _name(raw["computed"], f"{where}.computed")
        self.deps.add(f"computed:{key}")
        return self._condition("computed", (key,), raw, where)

    def _parse_model(self, raw: dict[str, Any], where: str, depth: int) -> Rule:
        path = _path(raw["model"], f"{where}.model")
        if path[0] not in MODELS:
            raise RuleError(f"{where}.model", f"unknown model {path[0]!r}; known: {sorted(MODELS)}")
        self.deps.add(f"model:{path[0]}")
        return self._condition("model", path, raw, where)

    def _condition(self, source: Source, path: tuple[str, ...], raw: dict[str, Any], where: str) -> Condition:
        op, value = _op_and_value(raw, where)
        if op in CLOCK_OPS:
            self.clock = True
        return Condition(source=source, path=path, op=op, value=value, label=".".join(path))

    def _parse_event(self, raw: dict[str, Any], where: str, depth: int) -> Rule:
        event = _text(raw["event"], f"{where}.event")
        measure = raw.get("measure", "count")
        if measure not in MEASURES:
            raise RuleError(f"{where}.measure", f"expected one of {list(MEASURES)}")
        prop = raw.get("property")
        if prop is not None:
            prop = ".".join(_path(prop, f"{where}.property"))
        # Profile's first and last carry a property's value at that occurrence; whether an
        # event happened within N days is a windowed count.
        if measure != "count" and prop is None:
            raise RuleError(f"{where}.property", f"the measure {measure!r} needs a property")
        window = raw.get("within_days")
        if window is not None and (
            not isinstance(window, int) or isinstance(window, bool) or not 1 <= window <= 3650
        ):
            raise RuleError(f"{where}.within_days", "expected a whole number of days from 1 to 3650")
        where_items = raw.get("where", [])
        if not isinstance(where_items, list) or len(where_items) > 10:
            raise RuleError(f"{where}.where", "expected a list of at most 10 property filters")
        filters = tuple(_property_filter(item, f"{where}.where[{i}]") for i, item in enumerate(where_items))
        spec = ComputedTraitSpec(
            kind=measure, event=event, property_path=prop, where=filters, window_days=window
        )
        self.specs[spec.key] = spec
        self.deps.add(f"computed:{spec.key}")
        if "op" in raw:
            op, value = _op_and_value(raw, where)
        else:
            op, value = ("gte", 1) if measure == "count" else ("exists", None)
        if op in CLOCK_OPS:
            self.clock = True
        default = 0 if measure in ZERO_WHEN_MISSING else None
        label = f"{measure} of {event!r}" + (f" in the last {window} days" if window else "")
        return Condition(
            source="computed", path=(spec.key,), op=op, value=value, default=default, label=label
        )

    def _parse_consent(self, raw: dict[str, Any], where: str, depth: int) -> Rule:
        body = raw["consent"]
        if not isinstance(body, dict) or set(body) != {"purpose", "channel"}:
            raise RuleError(f"{where}.consent", 'expected {"purpose": ..., "channel": ...}')
        purpose = _name(body["purpose"], f"{where}.consent.purpose")
        channel = _name(body["channel"], f"{where}.consent.channel")
        self.deps.add(f"consent:{purpose}:{channel}")
        return Consent(purpose, channel)

    def _parse_geo(self, raw: dict[str, Any], where: str, depth: int) -> Rule:
        body = raw["geo"]
        if (
            not isinstance(body, dict)
            or not body
            or not set(body) <= {"country", "city", "postal_code_prefix"}
        ):
            raise RuleError(f"{where}.geo", "expected some of country, city, postal_code_prefix")
        self.deps.add("trait:address")
        parts: list[Rule] = []
        for name in ("country", "city"):
            if name in body:
                values = _scalar_list(body[name], f"{where}.geo.{name}", strings=True)
                parts.append(
                    Condition(
                        "trait", ("address", name), "in", tuple(v.lower() for v in values), True, label=name
                    )
                )
        if "postal_code_prefix" in body:
            prefix = _text(body["postal_code_prefix"], f"{where}.geo.postal_code_prefix")
            parts.append(
                Condition(
                    "trait",
                    ("address", "postal_code"),
                    "starts_with",
                    prefix.lower(),
                    True,
                    label="postal code",
                )
            )
        return parts[0] if len(parts) == 1 else Group("all", tuple(parts))

    def _parse_gender(self, raw: dict[str, Any], where: str, depth: int) -> Rule:
        values = _scalar_list(raw["gender"], f"{where}.gender", strings=True)
        self.deps.add("trait:gender")
        return Condition("trait", ("gender",), "in", tuple(v.lower() for v in values), True, label="gender")

    def _parse_age(self, raw: dict[str, Any], where: str, depth: int) -> Rule:
        body = raw["age"]
        if not isinstance(body, dict):
            raise RuleError(f"{where}.age", 'expected {"op": ..., "value": ...}')
        op, value = _op_and_value(body, f"{where}.age")
        if op not in NUMERIC_OPS | {"eq", "neq"}:
            raise RuleError(f"{where}.age.op", "age takes eq, neq, lt, lte, gt, gte or between")
        self.deps.add("trait:birthday")
        self.clock = True
        return Age(op, value)

    def _parse_birthday_today(self, raw: dict[str, Any], where: str, depth: int) -> Rule:
        if raw["birthday_today"] is not True:
            raise RuleError(f"{where}.birthday_today", "expected true (use not for the opposite)")
        self.deps.add("trait:birthday")
        self.clock = True
        return BirthdayToday()

    def _parse_account_trait(self, raw: dict[str, Any], where: str, depth: int) -> Rule:
        path = _path(raw["account_trait"], f"{where}.account_trait")
        self.deps.add(f"account:{path[0]}")
        op, value = _op_and_value(raw, where)
        if op in CLOCK_OPS:
            self.clock = True
        return AccountTrait(path=path, op=op, value=value)

    def _parse_segment(self, raw: dict[str, Any], where: str, depth: int) -> Rule:
        key = _key(raw["segment"], f"{where}.segment")
        self.segments.add(key)
        self.deps.add(f"segment:{key}")
        return Membership(key)


_KINDS: dict[str, set[str]] = {
    "all": set(),
    "any": set(),
    "not": set(),
    "trait": {"op", "value"},
    "computed": {"op", "value"},
    "model": {"op", "value"},
    "event": {"measure", "property", "where", "within_days", "op", "value"},
    "consent": set(),
    "geo": set(),
    "gender": set(),
    "age": set(),
    "birthday_today": set(),
    "segment": set(),
    "account_trait": {"op", "value"},
}
MODELS = frozenset({"rfm", "lifecycle", "cluster", "clv"})


def _text(value: Any, where: str) -> str:
    if not isinstance(value, str) or not value.strip():
        raise RuleError(where, "expected a non-empty string")
    if len(value) > MAX_STRING:
        raise RuleError(where, f"at most {MAX_STRING} characters")
    return value


def _name(value: Any, where: str) -> str:
    text = _text(value, where)
    if len(text) > 100 or any(ord(c) < 32 for c in text):
        raise RuleError(where, "expected a name of at most 100 printable characters")
    return text


def _key(value: Any, where: str) -> str:
    text = _text(value, where)
    if not is_segment_key(text):
        raise RuleError(where, "a segment key is 1 to 64 of a-z, 0-9 and _ starting with a letter")
    return text


def is_segment_key(text: str) -> bool:
    """Whether a string is a valid segment key."""
    return (
        0 < len(text) <= 64
        and text[0].isascii()
        and text[0].isalpha()
        and text[0].islower()
        and all(c.isascii() and (c.islower() or c.isdigit() or c == "_") for c in text)
    )


def _path(value: Any, where: str) -> tuple[str, ...]:
    text = _text(value, where)
    parts = tuple(text.split("."))
    if len(parts) > 5 or any(not p or len(p) > 100 or any(ord(c) < 32 for c in p) for p in parts):
        raise RuleError(where, "expected a dotted path of at most 5 non-empty names")
    return parts


def _scalar(value: Any, where: str) -> Scalar:
    if isinstance(value, bool | int | str):
        if isinstance(value, str) and len(value) > MAX_STRING:
            raise RuleError(where, f"at most {MAX_STRING} characters")
        return value
    if isinstance(value, float) and math.isfinite(value):
        return value
    raise RuleError(where, "expected a string, number or boolean")


def _number(value: Any, where: str) -> int | float:
    if isinstance(value, bool) or not isinstance(value, int | float) or not math.isfinite(value):
        raise RuleError(where, "expected a number")
    return value


def _scalar_list(value: Any, where: str, *, strings: bool = False) -> tuple[Any, ...]:
    if isinstance(value, str) and strings:
        value = [value]
    if not isinstance(value, list) or not value or len(value) > MAX_LIST:
        raise RuleError(where, f"expected a non-empty list of at most {MAX_LIST} values")
    items = tuple(_scalar(v, f"{where}[{i}]") for i, v in enumerate(value))
    if strings and not all(isinstance(v, str) for v in items):
        raise RuleError(where, "expected strings")
    return items


def _days(value: Any, where: str) -> int:
    if not isinstance(value, dict) or set(value) != {"days"}:
        raise RuleError(where, 'expected {"days": N}')
    days = value["days"]
    if not isinstance(days, int) or isinstance(days, bool) or not 0 <= days <= 36500:
        raise RuleError(f"{where}.days", "expected a whole number of days from 0 to 36500")
    return days


def parse_instant(value: Any) -> datetime | None:
    """Read an ISO 8601 date or timestamp; a time without zone is UTC. None when it is not one."""
    if not isinstance(value, str) or not ISO_PATTERN.fullmatch(value):
        return None
    try:
        parsed = datetime.fromisoformat(value.replace(" ", "T"))
    except ValueError:
        return None
    return parsed.replace(tzinfo=UTC) if parsed.tzinfo is None else parsed.astimezone(UTC)


# Shared with the SQL compiler, so both paths accept exactly the same strings.
ISO_REGEX = (
    r"^[0-9]{4}-[0-9]{2}-[0-9]{2}"
    r"([T ][0-9]{2}:[0-9]{2}(:[0-9]{2}(\.[0-9]{1,6})?)?(Z|[+-][0-9]{2}:[0-9]{2})?)?$"
)
ISO_PATTERN = re2.compile(ISO_REGEX)


def _op_and_value(raw: dict[str, Any], where: str) -> tuple[str, Any]:
    op = raw.get("op")
    if op not in OPS:
        raise RuleError(f"{where}.op", f"expected one of {sorted(OPS)}")
    value = raw.get("value")
    at = f"{where}.value"
    if op in {"exists", "not_exists"}:
        if "value" in raw:
            raise RuleError(at, f"{op} takes no value")
        return op, None
    if "value" not in raw:
        raise RuleError(at, f"{op} needs a value")
    if op in {"lt", "lte", "gt", "gte"}:
        return op, _number(value, at)
    if op == "between":
        if not isinstance(value, list) or len(value) != 2:
            raise RuleError(at, "between takes [low, high]")
        low, high = _number(value[0], f"{at}[0]"), _number(value[1], f"{at}[1]")
        if low > high:
            raise RuleError(at, "low must not be above high")
        return op, (low, high)
    if op in {"in", "not_in"}:
        return op, _scalar_list(value, at)
    if op in {"contains", "starts_with"}:
        return op, _text(value, at) if op == "starts_with" else _scalar(value, at)
    if op == "regex":
        pattern = _text(value, at)
        if len(pattern) > MAX_REGEX:
            raise RuleError(at, f"a pattern may have at most {MAX_REGEX} characters")
        try:
            compile_linear(pattern)
        except UnsafePattern as exc:
            raise RuleError(at, str(exc)) from exc
        return op, pattern
    if op in CLOCK_OPS:
        return op, _days(value, at)
    if op in {"before", "after"}:
        instant = parse_instant(value)
        if instant is None:
            raise RuleError(at, "expected an ISO 8601 date or timestamp")
        return op, instant
    return op, _scalar(value, at)


def _property_filter(item: Any, where: str) -> tuple[str, str, Any]:
    if not isinstance(item, dict) or not {"property", "op"} <= set(item) <= {"property", "op", "value"}:
        raise RuleError(where, 'expected {"property": ..., "op": ..., "value": ...}')
    prop = ".".join(_path(item["property"], f"{where}.property"))
    op = item["op"]
    if op not in WHERE_OPS:
        raise RuleError(f"{where}.op", f"expected one of {sorted(WHERE_OPS)}")
    if op == "exists":
        return prop, op, None
    if op == "in":
        return prop, op, list(_scalar_list(item.get("value"), f"{where}.value"))
    if op in {"lt", "lte", "gt", "gte"}:
        return prop, op, _number(item.get("value"), f"{where}.value")
    return prop, op, _scalar(item.get("value"), f"{where}.value")


def parse_rule(raw: Any) -> ParsedRule:
    """Validate a JSON rule and return it typed, with its dependencies; raise RuleError."""
    parser = _Parser()
    root = parser.parse(raw, "rule", 0)
    if parser.clock:
        parser.deps.add("clock")
    return ParsedRule(
        root=root,
        dependencies=frozenset(parser.deps),
        computed_traits=tuple(parser.specs.values()),
        segment_refs=frozenset(parser.segments),
        uses_clock=parser.clock,
    )
