"""Segment tracking calls: validation against the limits, and server-side enrichment.

A call is turned into the event document of `cdp.event.received.v1` (the fields of
`cdp_common.events.TrackingEventReceived`) as a plain dict, because the batch path
handles tens of thousands of events a second; a unit test holds every document this
module builds to that model.
"""

from __future__ import annotations

import hashlib
import math
import uuid
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from typing import Any

from cdp_common.storable import MAX_INTEGER, MIN_INTEGER, unstorable_character

from cdp_ingest.domain.ecommerce import check_ecommerce_event
from cdp_ingest.domain.errors import CallError

MESSAGE_NAMESPACE = uuid.UUID("6f1d3c4e-5b0a-4c57-9a55-2f3c1b7d8e90")
_NAMESPACE_BYTES = MESSAGE_NAMESPACE.bytes
_VARIANT = {digit: "89ab"[int(digit, 16) & 3] for digit in "0123456789abcdef"}

CALL_TYPES = frozenset({"identify", "track", "page", "screen", "group", "alias"})
OBJECT_FIELDS = ("properties", "traits", "context", "integrations")
# Priority of context.externalIds types when an event has neither userId nor anonymousId;
# types not listed come after these, in the order the event gives them.
EXTERNAL_ID_PRIORITY = ("email", "phone", "profile_id")
MAX_ID_LENGTH = 1000
MAX_MESSAGE_ID_LENGTH = 100
MAX_EXTERNAL_IDS = 50


@dataclass(frozen=True)
class Limits:
    """Bounds on the shape of one event, beyond its size."""

    max_event_bytes: int = 32 * 1024
    max_depth: int = 16
    max_string_length: int = 8192
    max_key_length: int = 256
    max_keys_per_object: int = 250
    max_array_length: int = 1000
    future_tolerance: timedelta = timedelta(days=1)
    past_tolerance: timedelta = timedelta(days=2 * 365)


class _ShapeError(Exception):
    def __init__(self, code: str, message: str, path: list[str]) -> None:
        super().__init__(message)
        self.code = code
        self.message = message
        self.path = path


def _join(path: list[str]) -> str:
    text = ""
    for part in path:
        text += part if part.startswith("[") else ("." + part if text else part)
    return text


def _check_value(value: Any, depth: int, limits: Limits, thorough: bool) -> None:
    # The hot loop of the batch path: scalars are checked inline, only containers recurse.
    if type(value) is dict:
        if depth >= limits.max_depth:
            raise _ShapeError(
                "too_deep", f"objects and arrays nest deeper than {limits.max_depth} levels", []
            )
        if len(value) > limits.max_keys_per_object:
            raise _ShapeError(
                "too_many_properties", f"an object has more than {limits.max_keys_per_object} properties", []
            )
        max_key, max_string = limits.max_key_length, limits.max_string_length
        for key, item in value.items():
            if len(key) > max_key:
                raise _ShapeError(
                    "string_too_long", f"the property name is longer than {max_key} characters", [key]
                )
            if thorough and (problem := unstorable_character(key)):
                raise _ShapeError(problem.code, f"the property name: {problem.message}", [key])
            kind = type(item)
            if kind is str:
                if len(item) > max_string:
                    raise _ShapeError(
                        "string_too_long", f"the string is longer than {max_string} characters", [key]
                    )
                if thorough and (problem := unstorable_character(item)):
                    raise _ShapeError(problem.code, problem.message, [key])
            elif kind is dict or kind is list or kind is float or (thorough and kind is int):
                try:
                    _check_value(item, depth + 1, limits, thorough)
                except _ShapeError as exc:
                    exc.path.insert(0, key)
                    raise
    elif type(value) is list:
        if depth >= limits.max_depth:
            raise _ShapeError(
                "too_deep", f"objects and arrays nest deeper than {limits.max_depth} levels", []
            )
        if len(value) > limits.max_array_length:
            raise _ShapeError("array_too_long", f"an array has more than {limits.max_array_length} items", [])
        for index, item in enumerate(value):
            try:
                _check_value(item, depth + 1, limits, thorough)
            except _ShapeError as exc:
                exc.path.insert(0, f"[{index}]")
                raise
    elif type(value) is str:
        if len(value) > limits.max_string_length:
            raise _ShapeError(
                "string_too_long", f"the string is longer than {limits.max_string_length} characters", []
            )
        if thorough and (problem := unstorable_character(value)):
            raise _ShapeError(problem.code, problem.message, [])
    elif type(value) is float and not math.isfinite(value):
        raise _ShapeError("non_finite_number", "NaN and Infinity are not JSON numbers", [])
    elif thorough and type(value) is int and not MIN_INTEGER <= value <= MAX_INTEGER:
        raise _ShapeError(
            "number_out_of_range", "integers must fit in 64 bits; send larger ones as strings", []
        )


def check_shape(call: Mapping[str, Any], limits: Limits, *, thorough: bool = True) -> None:
    """Refuse a call whose nesting, strings, property counts or characters exceed the limits.

    `thorough=False` skips the search for NUL characters and integers beyond 64 bits, for
    callers that know the raw body cannot hold them (see intake.thorough_check_needed).
    """
    try:
        _check_value(call, 0, limits, thorough)
    except _ShapeError as exc:
        raise CallError(exc.code, exc.message, _join(exc.path) or None) from exc


def parse_time(value: Any, field: str) -> datetime | None:
    """Parse an ISO 8601 time; a time without offset is UTC."""
    if value is None:
        return None
    if not isinstance(value, str):
        raise CallError("invalid_timestamp", f"{field} must be an ISO 8601 string", field)
    try:
        parsed = datetime.fromisoformat(value)
    except ValueError as exc:
        raise CallError("invalid_timestamp", f"{field} is not an ISO 8601 time", field) from exc
    return parsed if parsed.tzinfo else parsed.replace(tzinfo=UTC)


def _optional_id(call: Mapping[str, Any], field: str) -> str | None:
    value = call.get(field)
    if value is None:
        return None
    if type(value) is str and 0 < len(value) <= MAX_ID_LENGTH:
        return value
    if value == "":
        return None
    if isinstance(value, bool):
        raise CallError("invalid_field", f"{field} must be a string", field)
    if isinstance(value, int | float):
        return str(value)
    if not isinstance(value, str):
        raise CallError("invalid_field", f"{field} must be a string", field)
    if len(value) > MAX_ID_LENGTH:
        raise CallError("invalid_field", f"{field} must be at most {MAX_ID_LENGTH} characters", field)
    return value


def external_ids(context: Mapping[str, Any]) -> list[dict[str, Any]]:
    """Return the valid `context.externalIds` of a call, refusing malformed ones."""
    raw = context.get("externalIds")
    if raw is None:
        return []
    if not isinstance(raw, list):
        raise CallError("invalid_field", "context.externalIds must be an array", "context.externalIds")
    if len(raw) > MAX_EXTERNAL_IDS:
        raise CallError(
            "invalid_field",
            f"context.externalIds has more than {MAX_EXTERNAL_IDS} items",
            "context.externalIds",
        )
    for index, item in enumerate(raw):
        where = f"context.externalIds[{index}]"
        if not isinstance(item, dict):
            raise CallError("invalid_field", f"{where} must be an object", where)
        value, kind = item.get("id"), item.get("type")
        if isinstance(value, bool) or not isinstance(value, str | int) or str(value).strip() == "":
            raise CallError("invalid_field", f"{where}.id must be a non-empty string", f"{where}.id")
        if not isinstance(kind, str) or not kind.strip():
            raise CallError("invalid_field", f"{where}.type must be a non-empty string", f"{where}.type")
    return raw


def corrected_timestamp(
    *, received_at: datetime, sent_at: datetime | None, original: datetime | None, explicit: datetime | None
) -> datetime:
    """Return the event time: an explicit timestamp, else receivedAt corrected by the client's clock skew."""
    if explicit is not None:
        return explicit
    if sent_at is not None and original is not None:
        return received_at - (sent_at - original)
    return received_at


def merge_batch_defaults(item: dict[str, Any], batch: Mapping[str, Any]) -> dict[str, Any]:
    """Merge a batch's top-level context and integrations into one item (the item's keys win)."""
    merged = item
    for field in ("context", "integrations"):
        shared = batch.get(field)
        if isinstance(shared, dict) and shared:
            own = item.get(field)
            if own is None:
                merged = {**merged, field: shared}
            elif isinstance(own, dict):
                merged = {**merged, field: {**shared, **own}}
    if "sentAt" not in item and batch.get("sentAt") is not None:
        merged = {**merged, "sentAt": batch["sentAt"]}
    return merged


def _required_name(call: Mapping[str, Any], field: str, code: str, what: str) -> str:
    value = call.get(field)
    if type(value) is str and 0 < len(value) <= MAX_ID_LENGTH and not value[0].isspace():
        return value
    if isinstance(value, int | float) and not isinstance(value, bool) and field != "event":
        return str(value)
    if not isinstance(value, str) or not value.strip():
        raise CallError(code, what, field)
    if len(value) > MAX_ID_LENGTH:
        raise CallError("invalid_field", f"{field} must be at most {MAX_ID_LENGTH} characters", field)
    return value


def build_event(
    *,
    call: Mapping[str, Any],
    call_type: str,
    source_id: str,
    received_at: datetime,
    limits: Limits,
    client_ip: str | None = None,
    thorough: bool = True,
) -> dict[str, Any]:
    """Validate one call and return its event document, enriched, ready for cdp.events.v1."""
    if call_type not in CALL_TYPES:
        raise CallError("invalid_type", f"type must be one of {sorted(CALL_TYPES)}", "type")
    for field in OBJECT_FIELDS:
        value = call.get(field)
        if value is not None and type(value) is not dict and not isinstance(value, dict):
            raise CallError("invalid_field", f"{field} must be an object", field)
    check_shape(call, limits, thorough=thorough)
    context: dict[str, Any] = call.get("context") or {}
    user_id = _optional_id(call, "userId")
    anonymous_id = _optional_id(call, "anonymousId")
    ids = external_ids(context) if "externalIds" in context else []
    event: dict[str, Any] = {"type": call_type}
    if call_type == "alias":
        event["previousId"] = _required_name(
            call, "previousId", "missing_previous_id", "alias calls need a previousId"
        )
        if user_id is None:
            raise CallError("no_user_id", "alias calls need a userId", "userId")
    elif user_id is None and anonymous_id is None and not ids:
        raise CallError(
            "no_user_anon_id", "userId, anonymousId or a context.externalIds identifier is required", "userId"
        )
    message_id = _optional_id(call, "messageId") or str(uuid.uuid4())
    if len(message_id) > MAX_MESSAGE_ID_LENGTH:
        raise CallError(
            "invalid_message_id",
            f"messageId must be at most {MAX_MESSAGE_ID_LENGTH} characters",
            "messageId",
        )
    if call_type == "track":
        event["event"] = _required_name(call, "event", "missing_event", "track calls need an event name")
    elif call_type == "group":
        event["groupId"] = _required_name(call, "groupId", "missing_group_id", "group calls need a groupId")
    elif call_type in ("page", "screen"):
        for field in ("name", "category"):
            value = call.get(field)
            if value is not None and not isinstance(value, str):
                raise CallError("invalid_field", f"{field} must be a string", field)
            if value:
                event[field] = value
    sent_at = original = explicit = None
    timestamp = received_at
    # Most calls of a server-side batch carry no client time at all.
    if "sentAt" in call or "originalTimestamp" in call or "timestamp" in call:
        sent_at = parse_time(call.get("sentAt"), "sentAt")
        original = parse_time(call.get("originalTimestamp"), "originalTimestamp")
        explicit = parse_time(call.get("timestamp"), "timestamp")
        timestamp = corrected_timestamp(
            received_at=received_at, sent_at=sent_at, original=original, explicit=explicit
        )
    if timestamp is not received_at and (
        timestamp > received_at + limits.future_tolerance or timestamp < received_at - limits.past_tolerance
    ):
        where = "timestamp" if explicit is not None else "originalTimestamp"
        raise CallError(
            "timestamp_out_of_range",
            f"the event time {timestamp.isoformat()} is more than {limits.future_tolerance} in the future "
            f"or {limits.past_tolerance} in the past",
            where,
        )
    properties = call.get("properties") or {}
    if call_type == "track":
        check_ecommerce_event(event["event"], properties)
    if client_ip and not context.get("ip"):
        context = {**context, "ip": client_ip}
    event["messageId"] = message_id
    event["sourceId"] = source_id
    event["receivedAt"] = received_at
    event["timestamp"] = timestamp
    event["properties"] = properties
    event["traits"] = _traits_of(call, call_type, context)
    event["context"] = context
    event["integrations"] = call.get("integrations") or {}
    if user_id is not None:
        event["userId"] = user_id
    if anonymous_id is not None:
        event["anonymousId"] = anonymous_id
    if sent_at is not None:
        event["sentAt"] = sent_at
    if original is not None or explicit is not None:
        event["originalTimestamp"] = original if original is not None else explicit
    return event


def _traits_of(call: Mapping[str, Any], call_type: str, context: Mapping[str, Any]) -> dict[str, Any]:
    traits: dict[str, Any] = call.get("traits") or {}
    # RudderStack's SDKs send identify traits only in context.traits.
    if not traits and call_type == "identify" and isinstance(context.get("traits"), dict):
        return dict(context["traits"])
    return traits


def event_id(*, source_id: str, message_id: str) -> str:
    """Return the envelope id of a tracking event: the source-scoped messageId, so resends dedupe.

    This is uuid5(MESSAGE_NAMESPACE, "source:messageId"), computed without building UUID objects.
    """
    return event_ids(source_id)(message_id)


def event_ids(source_id: str) -> Callable[[str], str]:
    """Return `event_id` for one source, with the namespace and the source hashed once."""
    prefix = hashlib.sha1(_NAMESPACE_BYTES + f"{source_id}:".encode())  # noqa: S324

    def of(message_id: str) -> str:
        digest = prefix.copy()
        digest.update(message_id.encode())
        text = digest.hexdigest()
        # The version nibble becomes 5; the variant's top two bits become 10.
        return f"{text[:8]}-{text[8:12]}-5{text[13:16]}-{_VARIANT[text[16]]}{text[17:20]}-{text[20:32]}"

    return of


def _external_rank(kind: str) -> int:
    return EXTERNAL_ID_PRIORITY.index(kind) if kind in EXTERNAL_ID_PRIORITY else len(EXTERNAL_ID_PRIORITY)


def partition_key(event: Mapping[str, Any]) -> str:
    """Return the Kafka key: userId, else anonymousId, else the first external id by priority."""
    key = event.get("userId") or event.get("anonymousId")
    if key:
        return str(key)
    ids = event.get("context", {}).get("externalIds") or []
    if ids:
        first = min(ids, key=lambda item: _external_rank(str(item["type"]).strip().lower()))
        kind = str(first["type"]).strip().lower()
        value = str(first["id"]).strip()
        return f"{kind}:{value.lower() if kind == 'email' else value}"
    return str(event["messageId"])
