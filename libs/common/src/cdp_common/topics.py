"""The platform's Kafka topics and how each is configured."""

from __future__ import annotations

import enum


class TopicName(enum.Enum):
    """Topics of the contract; names get the environment as a prefix at run time."""

    EVENTS = "cdp.events.v1"
    PROFILES = "cdp.profiles.v1"
    SEGMENTS = "cdp.segments.v1"
    CONSENTS = "cdp.consents.v1"
    PRIVACY = "cdp.privacy.v1"
    TOKENS = "cdp.tokens.v1"
    CAMPAIGN_SENDS = "cdp.campaign-sends.v1"

    @property
    def dlq(self) -> str:
        """Name of the dead-letter topic that belongs to this topic."""
        base = self.value.removesuffix(".v1")
        return f"{base}.dlq.v1"

    @property
    def compacted(self) -> bool:
        """Whether the topic keeps only the latest message per key."""
        return self is TopicName.TOKENS

    @property
    def carries_personal_data(self) -> bool:
        """Whether retention must be bounded because messages may hold personal data."""
        return self in (TopicName.EVENTS, TopicName.PROFILES)
