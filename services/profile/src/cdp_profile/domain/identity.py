"""Identifiers of an event, normalised for matching."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from cdp_common.events import TrackingEventReceived
from cdp_common.identifiers import normalise_identifier


@dataclass(frozen=True, order=True)
class IdentifierKey:
    """One identifier: its type and its normalised value."""

    type: str
    value: str

    def __str__(self) -> str:
        return f"{self.type}:{self.value}"


def parse_ref(ref: str) -> IdentifierKey | None:
    """Parse an API reference `type:value`; None when the ref is a bare profile id."""
    kind, sep, value = ref.partition(":")
    if not sep or not kind or not value:
        return None
    return IdentifierKey(kind, normalise(kind, value))


def normalise(kind: str, value: str) -> str:
    """Normalise an identifier value for matching."""
    return normalise_identifier(kind, value)


def identifiers_of(event: TrackingEventReceived) -> list[IdentifierKey]:
    """Return the event's identifiers, most trusted first."""
    found: list[IdentifierKey] = []
    if event.userId:
        found.append(IdentifierKey("user_id", normalise("user_id", event.userId)))
    if event.anonymousId:
        found.append(IdentifierKey("anonymous_id", normalise("anonymous_id", event.anonymousId)))
    email = _trait(event, "email")
    if isinstance(email, str) and "@" in email:
        found.append(IdentifierKey("email", normalise("email", email)))
    return found


def traits_of(event: TrackingEventReceived) -> dict[str, Any]:
    """Return the traits an event asserts: identify traits, else context.traits."""
    context_traits = event.context.get("traits")
    traits = dict(context_traits) if isinstance(context_traits, dict) else {}
    if event.type == "identify":
        traits.update(event.traits)
    return traits


def _trait(event: TrackingEventReceived, name: str) -> Any:
    if event.type == "identify" and name in event.traits:
        return event.traits[name]
    context_traits = event.context.get("traits")
    if isinstance(context_traits, dict):
        return context_traits.get(name)
    return None
