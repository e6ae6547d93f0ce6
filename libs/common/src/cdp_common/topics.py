"""The platform's Kafka topics and how each is configured."""

from __future__ import annotations

import enum
from dataclasses import dataclass


class TopicName(enum.Enum):
    """Topics of the contract that every service creates; names get the environment as a prefix at run time."""

    EVENTS = "cdp.events.v1"
    PROFILES = "cdp.profiles.v1"
    SEGMENTS = "cdp.segments.v1"
    CONSENTS = "cdp.consents.v1"
    PRIVACY = "cdp.privacy.v1"
    TOKENS = "cdp.tokens.v1"

    @property
    def dlq(self) -> str:
        """Name of the dead-letter topic that belongs to this topic."""
        return dlq_of(self.value)

    @property
    def compacted(self) -> bool:
        """Whether the topic keeps only the latest message per key."""
        return self is TopicName.TOKENS

    @property
    def carries_personal_data(self) -> bool:
        """Whether retention must be bounded because messages may hold personal data."""
        return self in (TopicName.EVENTS, TopicName.PROFILES)


@dataclass(frozen=True)
class ServiceTopic:
    """A topic private to one service, which declares it and alone creates it (with its dead-letter topic)."""

    value: str
    compacted: bool = False
    carries_personal_data: bool = False

    @property
    def dlq(self) -> str:
        """Name of the dead-letter topic that belongs to this topic."""
        return dlq_of(self.value)


Topic = TopicName | ServiceTopic


def dlq_of(name: str) -> str:
    """Return the dead-letter topic's name of a topic's name."""
    return f"{name.removesuffix('.v1')}.dlq.v1"
