"""Evaluation of a parsed rule against one profile's facts, with the explanation of the outcome.

The SQL compiler in `cdp_segment.compiler` implements the same semantics for batch
computation; a missing value (absent or JSON null) fails every comparison except
`not_exists`, and `not` is the plain negation of a strict true/false.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field
from datetime import date, datetime, timedelta
from typing import Any

import re2  # type: ignore[import-untyped]
from cdp_common.purposes import decisions_for

from cdp_segment.domain.rules import (
    AccountTrait,
    Age,
    BirthdayToday,
    Condition,
    Consent,
    Group,
    Membership,
    Rule,
    parse_instant,
)


@dataclass(frozen=True)
class ProfileFacts:
    """What segment holds about one profile: the inputs of every condition."""

    traits: Mapping[str, Any] = field(default_factory=dict)
    computed: Mapping[str, Any] = field(default_factory=dict)
    model: Mapping[str, Any] = field(default_factory=dict)
    consents: Mapping[str, Any] = field(default_factory=dict)
    segments: frozenset[str] = frozenset()
    # The gated consent purposes the person is excluded from (`cdp_common.purposes`).
    withheld: frozenset[str] = frozenset()
    # The traits of each account (from `group` calls) the person belongs to.
    accounts: tuple[Mapping[str, Any], ...] = ()


def lookup(document: Mapping[str, Any], path: tuple[str, ...]) -> Any:
    """Return the value at a path of nested objects, or None when absent."""
    current: Any = document
    for part in path:
        if not isinstance(current, Mapping):
            return None
        current = current.get(part)
    return current


def _is_number(value: Any) -> bool:
    return isinstance(value, int | float) and not isinstance(value, bool)


def json_equal(left: Any, right: Any) -> bool:
    """Compare two JSON values as PostgreSQL's jsonb does: numbers numerically, no bool/number mixing."""
    if _is_number(left) and _is_number(right):
        return bool(left == right)
    if isinstance(left, bool) or isinstance(right, bool):
        return isinstance(left, bool) and isinstance(right, bool) and left == right
    return type(left) is type(right) and bool(left == right)


def compare(op: str, actual: Any, expected: Any, now: datetime) -> bool:
    """Apply one operator of the rule language to a value."""
    if op == "not_exists":
        return actual is None
    if actual is None:
        return False
    if op == "exists":
        return True
    if op == "eq":
        return json_equal(actual, expected)
    if op == "neq":
        return not json_equal(actual, expected)
    if op in {"lt", "lte", "gt", "gte", "between"}:
        if not _is_number(actual):
            return False
        if op == "between":
            low, high = expected
            return bool(low <= actual <= high)
        return bool(
            {
                "lt": actual < expected,
                "lte": actual <= expected,
                "gt": actual > expected,
                "gte": actual >= expected,
            }[op]
        )
    if op == "in":
        return any(json_equal(actual, v) for v in expected)
    if op == "not_in":
        return not any(json_equal(actual, v) for v in expected)
    if op == "contains":
        if isinstance(actual, str) and isinstance(expected, str):
            return expected in actual
        if isinstance(actual, list):
            return any(json_equal(item, expected) for item in actual)
        return False
    if op == "starts_with":
        return isinstance(actual, str) and actual.startswith(expected)
    if op == "regex":
        return isinstance(actual, str) and re2.search(expected, actual) is not None
    instant = parse_instant(actual)
    if instant is None:
        return False
    if op == "within_last":
        return now - timedelta(days=expected) <= instant <= now
    if op == "more_than_ago":
        return instant < now - timedelta(days=expected)
    if op == "before":
        return bool(instant < expected)
    if op == "after":
        return bool(instant > expected)
    raise ValueError(f"unknown operator {op!r}")


def birthday_of(facts: ProfileFacts) -> date | None:
    """Return the profile's birthday (the `birthday` trait as a UTC date), if it has a valid one."""
    instant = parse_instant(facts.traits.get("birthday"))
    return None if instant is None else instant.date()


def age_on(birthday: date, today: date) -> int:
    """Return the age in whole years on a day."""
    return today.year - birthday.year - ((today.month, today.day) < (birthday.month, birthday.day))


def condition_value(condition: Condition, facts: ProfileFacts) -> Any:
    """Return the profile's value a condition looks at, after defaults and case folding."""
    document = {"trait": facts.traits, "computed": facts.computed, "model": facts.model}[condition.source]
    value = lookup(document, condition.path)
    if value is None:
        value = condition.default
    if condition.fold_case and isinstance(value, str):
        value = value.lower()
    return value


def evaluate(rule: Rule, facts: ProfileFacts, now: datetime) -> bool:
    """Return whether a profile matches a rule at an instant."""
    if isinstance(rule, Group):
        if rule.kind == "all":
            return all(evaluate(child, facts, now) for child in rule.children)
        if rule.kind == "any":
            return any(evaluate(child, facts, now) for child in rule.children)
        return not evaluate(rule.children[0], facts, now)
    return _leaf(rule, facts, now)[0]


def _leaf(rule: Rule, facts: ProfileFacts, now: datetime) -> tuple[bool, Any]:
    if isinstance(rule, Condition):
        actual = condition_value(rule, facts)
        return compare(rule.op, actual, rule.value, now), actual
    if isinstance(rule, Age):
        birthday = birthday_of(facts)
        if birthday is None:
            return False, None
        age = age_on(birthday, now.date())
        return compare(rule.op, age, rule.value, now), age
    if isinstance(rule, BirthdayToday):
        birthday = birthday_of(facts)
        today = now.date()
        matched = birthday is not None and (birthday.month, birthday.day) == (today.month, today.day)
        return matched, None if birthday is None else birthday.isoformat()
    if isinstance(rule, Consent):
        decision = facts.consents.get(f"{rule.purpose}:{rule.channel}")
        status = decision.get("status") if isinstance(decision, Mapping) else None
        return status == "granted", status
    if isinstance(rule, Membership):
        return rule.segment_key in facts.segments, rule.segment_key in facts.segments
    if isinstance(rule, AccountTrait):
        values = [lookup(account, rule.path) for account in facts.accounts]
        held = [v for v in values if v is not None]
        if rule.op == "not_exists":
            return not held, held
        return any(compare(rule.op, v, rule.value, now) for v in held), held
    raise TypeError(f"not a rule: {rule!r}")


def withheld_explanation(facts: ProfileFacts, purpose: str) -> dict[str, Any]:
    """Return why a person is out of every segment: the purpose they are excluded from, and their decisions."""
    return {
        "type": "consent_withheld",
        "purpose": purpose,
        "actual": decisions_for(purpose, facts.consents),
        "result": False,
    }


def _jsonable(value: Any) -> Any:
    if isinstance(value, datetime | date):
        return value.isoformat()
    if isinstance(value, tuple | list):
        return [_jsonable(v) for v in value]
    if isinstance(value, dict):
        return {k: _jsonable(v) for k, v in value.items()}
    return value


def explain(rule: Rule, facts: ProfileFacts, now: datetime) -> dict[str, Any]:
    """Evaluate every part of a rule and return a tree of outcomes with the values that decided them."""
    if isinstance(rule, Group):
        children = [explain(child, facts, now) for child in rule.children]
        results = [c["result"] for c in children]
        result = (
            all(results) if rule.kind == "all" else any(results) if rule.kind == "any" else not results[0]
        )
        return {"type": rule.kind, "result": result, "conditions": children}
    result, actual = _leaf(rule, facts, now)
    if isinstance(rule, Condition):
        node = {
            "type": rule.source,
            "label": rule.label,
            "path": ".".join(rule.path),
            "op": rule.op,
            "expected": rule.value,
            "actual": actual,
        }
    elif isinstance(rule, Age):
        node = {"type": "age", "op": rule.op, "expected": rule.value, "actual": actual}
    elif isinstance(rule, BirthdayToday):
        node = {"type": "birthday_today", "actual": actual, "today": now.date()}
    elif isinstance(rule, Consent):
        node = {"type": "consent", "purpose": rule.purpose, "channel": rule.channel, "actual": actual}
    elif isinstance(rule, AccountTrait):
        path = ".".join(rule.path)
        node = {
            "type": "account_trait",
            "label": path,
            "path": path,
            "op": rule.op,
            "expected": rule.value,
            "actual": actual,
        }
    else:
        assert isinstance(rule, Membership)
        node = {"type": "segment", "segment": rule.segment_key, "actual": actual}
    node["result"] = result
    return _jsonable(node)  # type: ignore[no-any-return]


def _unknown_aware(kind: str, results: list[bool | None]) -> bool | None:
    """Combine outcomes where None means not known yet (three-valued logic)."""
    if kind == "not":
        return None if results[0] is None else not results[0]
    if kind == "all":
        return False if False in results else None if None in results else True
    return True if True in results else None if None in results else False


def mark_building(
    tree: dict[str, Any], *, computed: frozenset[str], segments: frozenset[str]
) -> dict[str, Any]:
    """Return an explanation where conditions on data still being built say so instead of false.

    `computed` are computed traits whose values are not in the copy yet, `segments` are
    segments whose members are not computed yet; such a condition gets `"state": "building"`
    and no result, and the groups above it are decided only when the rest decides them.
    """
    if "conditions" in tree and tree.get("type") in {"all", "any", "not"}:
        children = [mark_building(c, computed=computed, segments=segments) for c in tree["conditions"]]
        return {
            **tree,
            "conditions": children,
            "result": _unknown_aware(tree["type"], [c["result"] for c in children]),
        }
    building = (tree.get("type") == "computed" and tree.get("path") in computed) or (
        tree.get("type") == "segment" and tree.get("segment") in segments
    )
    if not building:
        return tree
    return {**tree, "result": None, "state": "building"}
