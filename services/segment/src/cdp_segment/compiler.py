"""The rule language compiled to one SQL predicate over the profile copy, for batch work.

It implements exactly the semantics of `cdp_segment.domain.evaluation`: every leaf
is a strict true/false (never NULL, so `not` means the same in both), a JSON null
counts as missing, numbers compare numerically, instants are read by the
`segment_ts` function that accepts the same ISO 8601 strings as the domain. A profile excluded
from `profiling_segmentation` matches no rule (`cdp_segment.store.purposes`).
"""

from __future__ import annotations

import json
from datetime import datetime
from typing import Any

import sqlalchemy as sa
from cdp_common.purposes import PurposePolicy
from sqlalchemy.dialects.postgresql import JSONB
from sqlalchemy.sql.elements import ColumnElement

from cdp_segment.domain.rules import (
    AccountTrait,
    Age,
    BirthdayToday,
    Condition,
    Consent,
    Group,
    Membership,
    Rule,
)
from cdp_segment.store import memberships, profiles, segments
from cdp_segment.store.purposes import withheld

_FALSE = sa.false()


def _jsonb(value: Any) -> ColumnElement[Any]:
    return sa.cast(sa.literal(json.dumps(value), sa.Text), JSONB)


def _strict(expression: ColumnElement[Any]) -> ColumnElement[bool]:
    return sa.func.coalesce(expression, _FALSE)


def _typeof(value: ColumnElement[Any]) -> ColumnElement[Any]:
    return sa.func.jsonb_typeof(value)


def _text(value: ColumnElement[Any]) -> ColumnElement[Any]:
    return value.op("#>>", return_type=sa.Text)(sa.literal_column("'{}'::text[]"))


def _value(condition: Condition) -> ColumnElement[Any]:
    column = {"trait": profiles.c.traits, "computed": profiles.c.computed, "model": profiles.c.model}[
        condition.source
    ]
    raw = column.op("#>", return_type=JSONB)(sa.cast(list(condition.path), sa.ARRAY(sa.Text)))
    value: ColumnElement[Any] = sa.func.nullif(raw, _jsonb(None))
    if condition.default is not None:
        value = sa.func.coalesce(value, _jsonb(condition.default))
    return value


def _instant(value: ColumnElement[Any]) -> ColumnElement[Any]:
    return sa.case((_typeof(value) == "string", sa.func.segment_ts(_text(value))), else_=None)


def _days_before(now: ColumnElement[Any], days: int) -> ColumnElement[Any]:
    return now - sa.func.make_interval(0, 0, 0, days)


def _compare(
    op: str, value: ColumnElement[Any], expected: Any, fold: bool, now: ColumnElement[Any]
) -> ColumnElement[bool]:
    is_string = _typeof(value) == "string"
    text = sa.func.lower(_text(value)) if fold else _text(value)
    if op == "exists":
        return value.is_not(None)
    if op == "not_exists":
        return value.is_(None)
    if op in {"eq", "neq", "in", "not_in"} and fold:
        hits = sa.and_(is_string, text.in_(list(expected) if op in {"in", "not_in"} else [expected]))
        return _strict(hits) if op in {"eq", "in"} else sa.and_(value.is_not(None), sa.not_(_strict(hits)))
    if op == "eq":
        return _strict(value == _jsonb(expected))
    if op == "neq":
        return _strict(value != _jsonb(expected))
    if op == "in":
        return _strict(value.in_([_jsonb(v) for v in expected]))
    if op == "not_in":
        return sa.and_(value.is_not(None), sa.not_(_strict(value.in_([_jsonb(v) for v in expected]))))
    if op in {"lt", "lte", "gt", "gte", "between"}:
        number = sa.cast(value, sa.Numeric)
        test: ColumnElement[bool]
        if op == "between":
            test = number.between(sa.literal(expected[0]), sa.literal(expected[1]))
        else:
            test = {
                "lt": number < expected,
                "lte": number <= expected,
                "gt": number > expected,
                "gte": number >= expected,
            }[op]
        return sa.case((_typeof(value) == "number", test), else_=_FALSE)
    if op == "contains":
        checks: list[tuple[ColumnElement[bool], ColumnElement[Any]]] = [
            (_typeof(value) == "array", value.op("@>")(_jsonb([expected])))
        ]
        if isinstance(expected, str):
            checks.insert(0, (is_string, sa.func.strpos(text, expected) > 0))
        return sa.case(*checks, else_=_FALSE)
    if op == "starts_with":
        return sa.case((is_string, sa.func.starts_with(text, expected)), else_=_FALSE)
    if op == "regex":
        return sa.case((is_string, text.op("~")(expected)), else_=_FALSE)
    instant = _instant(value)
    if op == "within_last":
        test = sa.and_(
            instant >= _days_before(now, expected),
            instant <= now,
        )
    elif op == "more_than_ago":
        test = instant < _days_before(now, expected)
    elif op == "before":
        test = instant < sa.literal(expected, sa.DateTime(timezone=True))
    elif op == "after":
        test = instant > sa.literal(expected, sa.DateTime(timezone=True))
    else:
        raise ValueError(f"unknown operator {op!r}")
    return _strict(test)


def _contains_any(condition: Condition) -> ColumnElement[bool]:
    """Equality as JSONB containment: the value at the path equals one of the values (GIN-indexable)."""
    column = {"trait": profiles.c.traits, "computed": profiles.c.computed, "model": profiles.c.model}[
        condition.source
    ]
    values = [condition.value] if condition.op == "eq" else list(condition.value)
    documents = []
    for value in values:
        document: Any = value
        for part in reversed(condition.path):
            document = {part: document}
        documents.append(column.op("@>")(_jsonb(document)))
    return sa.or_(*documents)


def _birthday() -> ColumnElement[Any]:
    value = profiles.c.traits.op("->", return_type=JSONB)(sa.literal("birthday"))
    return sa.cast(sa.func.timezone("UTC", _instant(value)), sa.Date)


def _account_trait(rule: AccountTrait, now: ColumnElement[Any]) -> ColumnElement[bool]:
    """One of the person's accounts holds a matching trait; for `not_exists`, none holds it."""
    account = sa.func.jsonb_array_elements(profiles.c.accounts).table_valued("value").alias("account")
    path = sa.cast(["traits", *rule.path], sa.ARRAY(sa.Text))
    value = sa.func.nullif(account.c.value.op("#>", return_type=JSONB)(path), _jsonb(None))
    if rule.op == "not_exists":
        return sa.not_(sa.exists(sa.select(sa.literal(1)).select_from(account).where(value.is_not(None))))
    matching = _compare(rule.op, value, rule.value, False, now)
    return sa.exists(sa.select(sa.literal(1)).select_from(account).where(matching))


def compile_rule(rule: Rule, now: datetime) -> ColumnElement[bool]:
    """Return the SQL predicate of a rule over the profiles table at an instant."""
    at = sa.literal(now, sa.DateTime(timezone=True))
    return _compile(rule, at)


def _compile(rule: Rule, now: ColumnElement[Any]) -> ColumnElement[bool]:
    if isinstance(rule, Group):
        children = [_compile(child, now) for child in rule.children]
        if rule.kind == "all":
            return sa.and_(*children)
        if rule.kind == "any":
            return sa.or_(*children)
        return sa.not_(children[0])
    if isinstance(rule, Condition):
        if rule.op in {"eq", "in"} and not rule.fold_case and rule.default is None:
            return _contains_any(rule)
        return _compare(rule.op, _value(rule), rule.value, rule.fold_case, now)
    if isinstance(rule, Age):
        birthday = _birthday()
        today = sa.cast(sa.func.timezone("UTC", now), sa.Date)
        before_birthday = sa.tuple_(sa.extract("month", today), sa.extract("day", today)) < sa.tuple_(
            sa.extract("month", birthday), sa.extract("day", birthday)
        )
        age = (
            sa.extract("year", today) - sa.extract("year", birthday) - sa.case((before_birthday, 1), else_=0)
        )
        return _compare(rule.op, sa.func.to_jsonb(age), rule.value, False, now)
    if isinstance(rule, BirthdayToday):
        birthday = _birthday()
        today = sa.cast(sa.func.timezone("UTC", now), sa.Date)
        return _strict(
            sa.and_(
                sa.extract("month", birthday) == sa.extract("month", today),
                sa.extract("day", birthday) == sa.extract("day", today),
            )
        )
    if isinstance(rule, Consent):
        status = profiles.c.consents.op("->", return_type=JSONB)(
            sa.literal(f"{rule.purpose}:{rule.channel}")
        ).op("->>")(sa.literal("status"))
        return _strict(status == "granted")
    if isinstance(rule, Membership):
        return sa.exists(
            sa.select(sa.literal(1))
            .select_from(memberships.join(segments, segments.c.id == memberships.c.segment_id))
            .where(
                segments.c.key == rule.segment_key,
                segments.c.deleted_at.is_(None),
                memberships.c.profile_id == profiles.c.profile_id,
            )
        )
    if isinstance(rule, AccountTrait):
        return _account_trait(rule, now)
    raise TypeError(f"not a rule: {rule!r}")


LIVE_PROFILES = sa.and_(profiles.c.merged_into.is_(None), profiles.c.version > 0)


def segmentable(policy: PurposePolicy | None = None) -> ColumnElement[bool]:
    """Return the predicate of the profiles that may be in segments: not excluded from profiling."""
    return sa.not_(withheld(policy or PurposePolicy()))


def members_query(rule: Rule, now: datetime, *, policy: PurposePolicy | None = None) -> sa.Select[tuple[str]]:
    """Return the query of the ids of every live profile that matches a rule and may be in segments."""
    return sa.select(profiles.c.profile_id).where(LIVE_PROFILES, compile_rule(rule, now), segmentable(policy))
