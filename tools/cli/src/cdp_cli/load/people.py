"""A loaded person, as a test asserts against: identifiers, traits, events, aggregates and computed traits."""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from datetime import datetime
from typing import Any

from cdp_cli.load.aggregates import _aggregates, computed_of
from cdp_cli.load.drawing import (
    ORDER,
    PAGE,
    PAGES,
    VIEW,
    GeneratedEvent,
    _at,
    _draw,
    _order_properties,
    _page_properties,
    _seen,
    _view_properties,
)


@dataclass(frozen=True)
class Person:
    """One generated customer: identifiers, traits and events, and what profile makes of them."""

    index: int
    profile_id: str
    user_id: str | None
    anonymous_ids: tuple[str, ...]
    email: str
    traits: dict[str, Any]
    events: tuple[GeneratedEvent, ...]
    aggregates: dict[str, Any]

    @property
    def identifiers(self) -> list[tuple[str, str]]:
        """Return the person's (type, value) identifiers, as profile holds them."""
        return _identifiers(self.user_id, self.email, self.anonymous_ids)

    @property
    def computed(self) -> dict[str, Any]:
        """Return the built-in computed traits profile serves for the person."""
        return computed_of(self.aggregates)


def _identifiers(user_id: str | None, email: str, anonymous_ids: Sequence[str]) -> list[tuple[str, str]]:
    found = [("user_id", user_id)] if user_id else []
    return [*found, ("email", email), *(("anonymous_id", a) for a in anonymous_ids)]


def person(*, seed: int, index: int, events_per_profile: int, years: float, now: datetime) -> Person:
    """Return the person of this index under this seed, with every event as the event store holds it."""
    drawn = _draw(seed, index, events_per_profile, years, int(now.timestamp()))
    seen = _seen(drawn)
    events = [
        GeneratedEvent(
            drawn.identify_id,
            "identify",
            None,
            _at(drawn.identify_at),
            {},
            drawn.traits,
            [
                {"type": t, "value": v}
                for t, v in _identifiers(drawn.user_id, drawn.email, drawn.anonymous_ids)
            ],
        )
    ]
    for event_id, at, kind, product, extra, referred in drawn.events:
        if kind == PAGE:
            page = PAGES[extra][0]
            events.append(
                GeneratedEvent(
                    event_id, "page", page, _at(at), _page_properties(extra, product, referred), {}, seen
                )
            )
        elif kind == VIEW:
            properties = _view_properties(product, drawn.currency)
            events.append(GeneratedEvent(event_id, "track", VIEW, _at(at), properties, {}, seen))
        else:
            properties = _order_properties(drawn, seed, event_id, extra)
            events.append(GeneratedEvent(event_id, "track", ORDER, _at(at), properties, {}, seen))
    return Person(
        index=index,
        profile_id=drawn.profile_id,
        user_id=drawn.user_id,
        anonymous_ids=drawn.anonymous_ids,
        email=drawn.email,
        traits=drawn.traits,
        events=tuple(events),
        aggregates=_aggregates(drawn, seed),
    )
