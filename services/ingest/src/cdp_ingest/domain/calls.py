"""Segment tracking calls: validation and server-side enrichment."""

from __future__ import annotations

import uuid
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any

from cdp_common.events import TrackingEventReceived

MESSAGE_NAMESPACE = uuid.UUID("6f1d3c4e-5b0a-4c57-9a55-2f3c1b7d8e90")


@dataclass(frozen=True)
class CallError(Exception):
    """A call the tracking API refuses, with a machine-readable code and where it failed."""

    code: str
    message: str
    field: str | None = None


def _parse_time(value: Any, field: str) -> datetime | None:
    if value is None:
        return None
    if not isinstance(value, str):
        raise CallError("invalid_timestamp", f"{field} must be an ISO 8601 string", field)
    try:
        parsed = datetime.fromisoformat(value.replace("Z", "+00:00"))
    except ValueError as exc:
        raise CallError("invalid_timestamp", f"{field} is not an ISO 8601 time", field) from exc
    return parsed if parsed.tzinfo else parsed.replace(tzinfo=UTC)


def _optional_id(call: dict[str, Any], field: str) -> str | None:
    value = call.get(field)
    if value is None or value == "":
        return None
    if isinstance(value, int | float) and not isinstance(value, bool):
        return str(value)
    if not isinstance(value, str):
        raise CallError("invalid_field", f"{field} must be a string", field)
    return value


def corrected_timestamp(
    *, received_at: datetime, sent_at: datetime | None, original: datetime | None, explicit: datetime | None
) -> datetime:
    """Return the event time: an explicit timestamp, else receivedAt corrected by the client's clock skew."""
    if explicit is not None:
        return explicit
    if sent_at is not None and original is not None:
        return received_at - (sent_at - original)
    return received_at


def build_event(
    *, call: dict[str, Any], call_type: str, source_id: str, received_at: datetime
) -> TrackingEventReceived:
    """Validate one call and return it enriched, ready for cdp.events.v1."""
    user_id = _optional_id(call, "userId")
    anonymous_id = _optional_id(call, "anonymousId")
    if user_id is None and anonymous_id is None:
        raise CallError("no_user_anon_id", "userId or anonymousId is required", "userId")
    message_id = _optional_id(call, "messageId") or str(uuid.uuid4())
    if len(message_id) > 100:
        raise CallError("invalid_message_id", "messageId must be at most 100 characters", "messageId")
    event_name = call.get("event")
    if call_type == "track" and (not isinstance(event_name, str) or not event_name.strip()):
        raise CallError("missing_event", "track calls need an event name", "event")
    for field in ("properties", "traits", "context", "integrations"):
        if call.get(field) is not None and not isinstance(call[field], dict):
            raise CallError("invalid_field", f"{field} must be an object", field)
    sent_at = _parse_time(call.get("sentAt"), "sentAt")
    original = _parse_time(call.get("originalTimestamp"), "originalTimestamp")
    explicit = _parse_time(call.get("timestamp"), "timestamp")
    return TrackingEventReceived(
        type=call_type,
        messageId=message_id,
        sourceId=source_id,
        receivedAt=received_at,
        timestamp=corrected_timestamp(
            received_at=received_at, sent_at=sent_at, original=original, explicit=explicit
        ),
        sentAt=sent_at,
        originalTimestamp=original if original is not None else explicit,
        userId=user_id,
        anonymousId=anonymous_id,
        event=event_name if isinstance(event_name, str) else None,
        properties=call.get("properties") or {},
        traits=call.get("traits") or {},
        context=call.get("context") or {},
        integrations=call.get("integrations") or {},
    )


def event_id(*, source_id: str, message_id: str) -> str:
    """Return the envelope id of a tracking event: the source-scoped messageId, so resends dedupe."""
    return str(uuid.uuid5(MESSAGE_NAMESPACE, f"{source_id}:{message_id}"))


def partition_key(event: TrackingEventReceived) -> str:
    """Return the Kafka key: userId, else anonymousId."""
    return event.userId or event.anonymousId or event.messageId
