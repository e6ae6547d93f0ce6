"""The CloudEvents-style envelope every Kafka message of the platform travels in."""

from __future__ import annotations

import uuid
from datetime import UTC, datetime
from typing import Any, ClassVar, Generic, TypeVar

from pydantic import BaseModel, ConfigDict, Field, field_validator

DataT = TypeVar("DataT", bound=BaseModel)


def utc_now() -> datetime:
    """Return the current time as an aware UTC datetime."""
    return datetime.now(UTC)


class Payload(BaseModel):
    """Base of every event payload: unknown fields are kept, so consumers can ignore them."""

    model_config = ConfigDict(extra="allow", frozen=True)

    EVENT_TYPE: ClassVar[str]


class RawEnvelope(BaseModel):
    """The envelope with an untyped payload: what a consumer decodes before dispatching."""

    model_config = ConfigDict(extra="allow", frozen=True)

    specversion: str = "1.0"
    id: str = Field(min_length=1, max_length=200)
    type: str = Field(min_length=1, max_length=200)
    source: str = Field(min_length=1, max_length=200)
    time: datetime
    subject: str = Field(min_length=1, max_length=500)
    datacontenttype: str = "application/json"
    data: dict[str, Any]

    @field_validator("time")
    @classmethod
    def _aware_utc(cls, value: datetime) -> datetime:
        """Keep every time in UTC; a naive time is taken as UTC."""
        if value.tzinfo is None:
            return value.replace(tzinfo=UTC)
        return value.astimezone(UTC)


class Envelope(BaseModel, Generic[DataT]):
    """A typed envelope; `type` names the payload's schema and version."""

    model_config = ConfigDict(extra="allow", frozen=True)

    specversion: str = "1.0"
    id: str = Field(default_factory=lambda: str(uuid.uuid4()), min_length=1, max_length=200)
    type: str
    source: str
    time: datetime = Field(default_factory=utc_now)
    subject: str
    datacontenttype: str = "application/json"
    data: DataT

    def to_bytes(self) -> bytes:
        """Serialise the envelope as UTF-8 JSON for Kafka."""
        return self.model_dump_json(by_alias=True).encode()
