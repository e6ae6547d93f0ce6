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
        # Equal event times fall back to the event id, so any processing order gives one winner.
        if held is not None and (held.timestamp, held.event_id) > (timestamp, event_id):
            continue
        if held is not None and held.value == value:
            continue
        changed[name] = TraitValue(value=value, source=source, event_id=event_id, timestamp=timestamp)
    return changed


COMMON_TRAITS = ("first_name", "last_name", "email", "phone", "birthday", "gender", "address", "company")


def common_traits(traits: dict[str, TraitValue]) -> dict[str, Any]:
    """Return the typed common traits: names, e-mail, phone, birthday, gender, address, company."""
    values = {name: trait.value for name, trait in traits.items()}
    first, last = (
        _text(values.get("first_name") or values.get("firstName")),
        _text(values.get("last_name") or values.get("lastName")),
    )
    full = _text(values.get("name"))
    if full and not (first or last):
        first, _, last_part = full.partition(" ")
        last = last_part or None
    address = values.get("address")
    company = values.get("company")
    return {
        "first_name": first,
        "last_name": last,
        "email": _text(values.get("email")),
        "phone": _text(values.get("phone")),
        "birthday": _date(values.get("birthday")),
        "gender": _text(values.get("gender")),
        "address": {
            "street": _text(address.get("street")),
            "postal_code": _text(address.get("postal_code") or address.get("postalCode")),
            "city": _text(address.get("city")),
            "country": _text(address.get("country")),
        }
        if isinstance(address, dict)
        else None,
        "company": _text(company.get("name") if isinstance(company, dict) else company),
    }


def derive_traits(events: list[tuple[dict[str, Any], str, str, datetime]]) -> dict[str, TraitValue]:
    """Fold asserted traits (traits, source, event id, time) into the winning value per trait."""
    current: dict[str, TraitValue] = {}
    for asserted, source, event_id, timestamp in sorted(events, key=lambda e: (e[3], e[2])):
        current.update(apply_traits(current, asserted, source=source, event_id=event_id, timestamp=timestamp))
    return current


def merge_traits(survivor: dict[str, TraitValue], absorbed: dict[str, TraitValue]) -> dict[str, TraitValue]:
    """Return the absorbed profile's traits that win over the survivor's (newer event time)."""
    changed: dict[str, TraitValue] = {}
    for name, trait in absorbed.items():
        held = survivor.get(name)
        newer = held is None or (trait.timestamp, trait.event_id) > (held.timestamp, held.event_id)
        if newer and (held is None or held.value != trait.value):
            changed[name] = trait
    return changed


def _text(value: Any) -> str | None:
    if isinstance(value, str) and value.strip():
        return value.strip()
    if isinstance(value, int | float) and not isinstance(value, bool):
        return str(value)
    return None


def _date(value: Any) -> str | None:
    if not isinstance(value, str):
        return None
    try:
        return datetime.fromisoformat(value.replace("Z", "+00:00")).date().isoformat()
    except ValueError:
        return None
