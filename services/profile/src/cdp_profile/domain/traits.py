"""Trait precedence: per trait, the value with the latest event time wins."""

from __future__ import annotations

from dataclasses import dataclass
from datetime import datetime
from typing import Any


@dataclass(frozen=True)
class TraitValue:
    """A trait's value and where it came from."""

    value: Any
    source: str
    event_id: str
    timestamp: datetime

    def to_json(self) -> dict[str, Any]:
        """Return the stored and served form."""
        return {
            "value": self.value,
            "source": self.source,
            "event_id": self.event_id,
            "timestamp": self.timestamp.isoformat(),
        }

    @classmethod
    def from_json(cls, raw: dict[str, Any]) -> TraitValue:
        """Read the stored form."""
        return cls(
            value=raw["value"],
            source=raw["source"],
            event_id=raw["event_id"],
            timestamp=datetime.fromisoformat(raw["timestamp"]),
        )


def apply_traits(
    current: dict[str, TraitValue],
    incoming: dict[str, Any],
    *,
    source: str,
    event_id: str,
    timestamp: datetime,
) -> dict[str, TraitValue]:
    """Return the traits that change: those whose held value is older than the event."""
    changed: dict[str, TraitValue] = {}
    for name, value in incoming.items():
        held = current.get(name)
        if held is not None and held.timestamp > timestamp:
            continue
        if held is not None and held.value == value:
            continue
        changed[name] = TraitValue(value=value, source=source, event_id=event_id, timestamp=timestamp)
    return changed
