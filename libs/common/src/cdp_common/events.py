"""Typed payloads of every event type on the platform's topics, and the decoder.

Each payload class names its `type` in `EVENT_TYPE`; `decode_envelope` turns the
bytes of a Kafka message into a typed envelope once, at the edge.
"""

from __future__ import annotations

import functools
import json
from datetime import datetime, timedelta
from typing import Any, ClassVar, Literal

from pydantic import Field, ValidationError

from cdp_common.db import json_value
from cdp_common.envelope import Envelope, Payload, RawEnvelope


class UnknownEventType(Exception):
    """The envelope is valid but its type is not one this build knows."""


class InvalidEvent(Exception):
    """The message is not a valid envelope, or its payload does not match its type."""


class Identifier(Payload):
    """One identifier of a person: a type such as `email` and its normalised value."""

    type: str = Field(min_length=1, max_length=64)
    value: str = Field(min_length=1, max_length=1000)


# --- cdp.events.v1 (published by ingest) ---------------------------------------------


class TrackingEventReceived(Payload):
    """A Segment-spec call accepted by ingest, as received plus server-side enrichment."""

    EVENT_TYPE: ClassVar[str] = "cdp.event.received.v1"

    type: Literal["identify", "track", "page", "screen", "group", "alias"]
    messageId: str = Field(min_length=1, max_length=100)  # noqa: N815
    sourceId: str  # noqa: N815
    receivedAt: datetime  # noqa: N815
    timestamp: datetime
    userId: str | None = None  # noqa: N815
    anonymousId: str | None = None  # noqa: N815
    previousId: str | None = None  # noqa: N815
    groupId: str | None = None  # noqa: N815
    event: str | None = None
    name: str | None = None
    category: str | None = None
    sentAt: datetime | None = None  # noqa: N815
    originalTimestamp: datetime | None = None  # noqa: N815
    properties: dict[str, Any] = Field(default_factory=dict)
    traits: dict[str, Any] = Field(default_factory=dict)
    context: dict[str, Any] = Field(default_factory=dict)
    integrations: dict[str, Any] = Field(default_factory=dict)


# --- cdp.profiles.v1 (published by profile) ------------------------------------------


class AccountOfProfile(Payload):
    """An account (a company, from `group` calls) a person belongs to, with its traits."""

    group_id: str
    traits: dict[str, Any] = Field(default_factory=dict)


class ProfileChanged(Payload):
    """Fields shared by profile created and updated."""

    profile_id: str
    version: int = Field(ge=1)
    event_id: str | None = None
    event: TrackingEventReceived | None = None
    identifiers: list[Identifier] = Field(default_factory=list)
    changed_traits: dict[str, Any] = Field(default_factory=dict)
    changed_computed_traits: dict[str, Any] = Field(default_factory=dict)
    # Values before the change, for the names in changed_traits / changed_computed_traits
    # (absent or null when there was none).
    previous_traits: dict[str, Any] = Field(default_factory=dict)
    previous_computed_traits: dict[str, Any] = Field(default_factory=dict)
    # Every account of the person (most recently linked first) with its traits now, when they or
    # those traits changed (a group call, a merge, a split, an account's traits); absent otherwise.
    accounts: list[AccountOfProfile] | None = None


class ProfileCreated(ProfileChanged):
    """A new profile came into being from the event that caused it."""

    EVENT_TYPE: ClassVar[str] = "cdp.profile.created.v1"


class ProfileUpdated(ProfileChanged):
    """An existing profile changed: the resolved event and the traits it changed."""

    EVENT_TYPE: ClassVar[str] = "cdp.profile.updated.v1"


class ProfileMerged(Payload):
    """Two profiles became one; published on both profile ids' keys."""

    EVENT_TYPE: ClassVar[str] = "cdp.profile.merged.v1"

    profile_id: str
    absorbed_profile_id: str
    version: int = Field(ge=1)
    merge_id: str
    rule: str
    event_id: str | None = None


class ProfileSplit(Payload):
    """A merge was undone: the absorbed profile exists again beside the survivor."""

    EVENT_TYPE: ClassVar[str] = "cdp.profile.split.v1"

    profile_id: str
    restored_profile_id: str
    version: int = Field(ge=1)
    merge_id: str


class ProfileErased(Payload):
    """A person's profile was erased; every service erases what it holds for these ids."""

    EVENT_TYPE: ClassVar[str] = "cdp.profile.erased.v1"

    profile_id: str
    version: int = Field(ge=1)
    request_id: str
    merged_profile_ids: list[str] = Field(default_factory=list)


class OrderLine(Payload):
    """One line of an order as sent, with how many of it were returned."""

    sku: str | None = None
    product_id: str | None = None
    name: str | None = None
    category: str | None = None
    price: float | None = None
    quantity: int = 1
    returned: int = 0


class OrderRecorded(Payload):
    """An order (one per `order_id`, whatever sent it) as recorded or amended, on its owner's key.

    `state` is `completed`, `partially_refunded`, `refunded`, `cancelled` or `pending` (known
    only from a refund or cancellation so far); `net` is the total less refunds (0 when
    cancelled or pending), `value` the net in `reporting_currency` at the rate of the order's
    day (null when its currency has no rate: left out of money figures).
    """

    EVENT_TYPE: ClassVar[str] = "cdp.profile.order_recorded.v1"

    profile_id: str
    version: int = Field(ge=1)
    order_id: str
    event_id: str | None = None
    state: str
    time: datetime
    currency: str
    total: float | None = None
    refunded: float = 0.0
    net: float
    value: float | None = None
    reporting_currency: str
    coupon: str | None = None
    lines: list[OrderLine] = Field(default_factory=list)


# --- cdp.segments.v1 (published by segment) ------------------------------------------


class SegmentMembershipChanged(Payload):
    """Fields shared by segment entered and exited."""

    profile_id: str
    segment_key: str
    segment_version: int = Field(ge=1)
    reason: dict[str, Any] = Field(default_factory=dict)
    at: datetime


class SegmentEntered(SegmentMembershipChanged):
    """A profile became a member of a segment."""

    EVENT_TYPE: ClassVar[str] = "cdp.segment.entered.v1"


class SegmentExited(SegmentMembershipChanged):
    """A profile stopped being a member of a segment."""

    EVENT_TYPE: ClassVar[str] = "cdp.segment.exited.v1"


# --- cdp.consents.v1 (published by consent) ------------------------------------------


class ConsentChanged(Payload):
    """Fields shared by every consent decision."""

    profile_id: str
    purpose: str
    channel: str
    at: datetime
    source: str
    legal_basis: str | None = None
    wording_version: str | None = None


class ConsentGranted(ConsentChanged):
    """The person agreed to a purpose on a channel."""

    EVENT_TYPE: ClassVar[str] = "cdp.consent.granted.v1"


class ConsentDenied(ConsentChanged):
    """The person refused a purpose on a channel."""

    EVENT_TYPE: ClassVar[str] = "cdp.consent.denied.v1"


class ConsentWithdrawn(ConsentChanged):
    """The person took back an earlier grant; effective at once."""

    EVENT_TYPE: ClassVar[str] = "cdp.consent.withdrawn.v1"


# --- cdp.privacy.v1 (consent opens and completes; every service sends receipts) ----


class PrivacyRequestOpened(Payload):
    """A GDPR request; the subject travels only as a keyed hash."""

    EVENT_TYPE: ClassVar[str] = "cdp.privacy.request_opened.v1"

    request_id: str
    request_type: Literal["access", "erasure"]
    subject_type: str
    subject_hash: str = Field(pattern=r"^[0-9a-f]{64}$")
    deadline: datetime


class PrivacyReceipt(Payload):
    """One service's answer to a privacy request: what it did, without personal data."""

    EVENT_TYPE: ClassVar[str] = "cdp.privacy.receipt.v1"

    request_id: str
    service: str
    profile_ids: list[str] = Field(default_factory=list)
    status: Literal["done", "failed"] = "done"
    details: dict[str, int] = Field(default_factory=dict)


class PrivacyRequestCompleted(Payload):
    """Every service's receipt is in; the request is closed."""

    EVENT_TYPE: ClassVar[str] = "cdp.privacy.request_completed.v1"

    request_id: str
    status: Literal["completed", "failed"]


# --- cdp.tokens.v1 (published by ingest) ---------------------------------------------


class TokenCreated(Payload):
    """An API token exists; only its hash travels."""

    EVENT_TYPE: ClassVar[str] = "cdp.token.created.v1"

    token_id: str
    name: str
    token_hash: str = Field(pattern=r"^[0-9a-f]{64}$")
    scopes: list[str]
    expires_at: datetime | None = None


class TokenRevoked(Payload):
    """An API token must no longer be accepted anywhere."""

    EVENT_TYPE: ClassVar[str] = "cdp.token.revoked.v1"

    token_id: str


# --- cdp.campaign-sends.v1 (published and consumed by campaign) ----------------------


class CampaignSendsRequested(Payload):
    """A batch of recorded sends for a campaign worker to check and hand over; ids only."""

    EVENT_TYPE: ClassVar[str] = "cdp.campaign.sends_requested.v1"

    send_ids: list[str] = Field(min_length=1, max_length=1000)


# --- cdp.*.dlq.v1 (published by the Kafka runner of any service) ---------------------


class DeadLetter(Payload):
    """A message a consumer could not process, kept with the error for replay."""

    EVENT_TYPE: ClassVar[str] = "cdp.dead_letter.v1"

    group_id: str
    topic: str
    partition: int
    offset: int
    key: str | None
    value: str
    error: str
    attempts: int


EVENT_TYPES: dict[str, type[Payload]] = {
    cls.EVENT_TYPE: cls
    for cls in (
        TrackingEventReceived,
        ProfileCreated,
        ProfileUpdated,
        ProfileMerged,
        ProfileSplit,
        ProfileErased,
        OrderRecorded,
        SegmentEntered,
        SegmentExited,
        ConsentGranted,
        ConsentDenied,
        ConsentWithdrawn,
        PrivacyRequestOpened,
        PrivacyReceipt,
        PrivacyRequestCompleted,
        TokenCreated,
        TokenRevoked,
        CampaignSendsRequested,
        DeadLetter,
    )
}


def event_type_of(payload: Payload) -> str:
    """Return the `type` string of a payload instance."""
    return payload.EVENT_TYPE


# Parametrising the generic costs a lookup per use; the handlers' hot paths build many.
_ENVELOPE = Envelope[Any]


def make_envelope(*, payload: Payload, source: str, subject: str, id: str | None = None) -> Envelope[Any]:
    """Wrap a payload in an envelope with its type."""
    fields: dict[str, Any] = {
        "type": event_type_of(payload),
        "source": source,
        "subject": subject,
        "data": payload,
    }
    if id is not None:
        fields["id"] = id
    return _ENVELOPE(**fields)


def decode_envelope(value: bytes | None, *, known: dict[str, type[Payload]] | None = None) -> Envelope[Any]:
    """Decode a Kafka message value into a typed envelope.

    Raises InvalidEvent for anything malformed and UnknownEventType for a valid
    envelope whose type is not registered.
    """
    return envelope_of_document(read_envelope_document(value), known=known)


_NO_OFFSET = timedelta(0)


def read_envelope_document(value: bytes | None) -> Any:
    """Parse a Kafka message value as JSON, before any check of its shape; raise InvalidEvent if it is not."""
    if value is None:
        raise InvalidEvent("message has no value")
    try:
        return json_value(value)
    except (UnicodeDecodeError, json.JSONDecodeError) as exc:
        raise InvalidEvent(f"message is not JSON: {exc}") from exc


@functools.cache
def _typed_envelope(payload_cls: type[Payload]) -> type[Envelope[Any]]:
    """Return the envelope model whose data is one payload type, built once per type."""
    return Envelope[payload_cls]  # type: ignore[valid-type]


def _checked_at_once(document: Any, registry: dict[str, type[Payload]]) -> Envelope[Any] | None:
    """Check a well-formed message in one pass against its type's envelope; None when in doubt.

    Returns what the step-by-step check would (the same fields, the payload typed) for a
    message that passes it with a UTC time; anything else (an error to explain, a time
    to convert) is left to that check.
    """
    kind = document.get("type") if type(document) is dict else None
    payload_cls = registry.get(kind) if type(kind) is str else None
    if payload_cls is None:
        return None
    try:
        envelope = _typed_envelope(payload_cls).model_validate(document)
    except ValidationError:
        return None
    # What RawEnvelope checks beyond Envelope's own fields.
    if not (0 < len(envelope.source) <= 200 and 0 < len(envelope.subject) <= 500):
        return None
    if envelope.time.utcoffset() != _NO_OFFSET:
        return None
    return envelope


def envelope_of_document(document: Any, *, known: dict[str, type[Payload]] | None = None) -> Envelope[Any]:
    """Check a parsed message against the envelope and its payload's schema; return the typed envelope."""
    registry = EVENT_TYPES if known is None else known
    checked = _checked_at_once(document, registry)
    return checked if checked is not None else checked_step_by_step(document, registry)


def checked_step_by_step(document: Any, registry: dict[str, type[Payload]]) -> Envelope[Any]:
    """Check the envelope, then its payload's schema, saying which failed and why; return the typed envelope."""
    try:
        raw = RawEnvelope.model_validate(document)
    except ValidationError as exc:
        raise InvalidEvent(f"not an envelope: {exc.errors(include_url=False)}") from exc
    payload_cls = registry.get(raw.type)
    if payload_cls is None:
        raise UnknownEventType(raw.type)
    try:
        data = payload_cls.model_validate(raw.data)
    except ValidationError as exc:
        raise InvalidEvent(f"invalid {raw.type} payload: {exc.errors(include_url=False)}") from exc
    fields = raw.model_dump()
    fields["data"] = data
    return _ENVELOPE(**fields)
