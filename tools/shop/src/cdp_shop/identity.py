"""The published identity rules, applied to the generated calls in the order they are sent: which
identifiers a correct platform keeps together, which it blocks, quarantines, or leaves out.

This is the ground truth's own reading of the rules in ARCHITECTURE.md ("Identity") and
services/profile/README.md ("Profiles and identity"), with their documented defaults, written
independently of the profile service:

- blocked values never identify anybody (exact values, case-insensitive, and regular expressions);
- a profile holds at most `limits[type]` identifiers of a type (`user_id` 1, others 5);
- an event whose identifiers would take the profiles they match past a limit drops its
  lowest-priority identifier (priority `user_id`, `email`, `phone`, custom types, `anonymous_id`)
  and matches again, so two known customers are never merged;
- an identifier dropped that way, which belonged to another profile than the event's, tried to
  tie those profiles together; once it has tried to tie more than `supernode_threshold`
  profiles it is quarantined: it stays where it is but no longer matches anything;
- everything else the event names is merged into one profile, and its new identifiers join it.

Which profile survives a merge does not matter here: the truth is the grouping.
"""

from __future__ import annotations

import re
from collections import Counter
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from functools import cached_property

KNOWN_TYPES = ("user_id", "email", "phone", "anonymous_id")


@dataclass(frozen=True, order=True)
class Key:
    """One identifier as the platform matches it: its type and normalised value."""

    type: str
    value: str


@dataclass(frozen=True)
class Rules:
    """The identity rules with their documented defaults."""

    blocked_values: tuple[str, ...] = ("null", "undefined", "0", "-1", "anonymous", "test@test.com")
    blocked_patterns: tuple[str, ...] = (r"^\s*$", r"^(none|nil|n/a|unknown)$")
    limits: Mapping[str, int] = field(default_factory=lambda: {"user_id": 1})
    default_limit: int = 5
    priority: tuple[str, ...] = ("user_id", "email", "phone", "anonymous_id")
    supernode_threshold: int = 10

    @cached_property
    def _blocked_exactly(self) -> frozenset[str]:
        return frozenset(value.lower() for value in self.blocked_values)

    @cached_property
    def _blocked_matching(self) -> tuple[re.Pattern[str], ...]:
        return tuple(re.compile(pattern, flags=re.IGNORECASE) for pattern in self.blocked_patterns)

    def is_blocked(self, key: Key) -> bool:
        """Whether a value is junk that must never identify anybody."""
        if key.value.strip().lower() in self._blocked_exactly:
            return True
        return any(pattern.search(key.value) for pattern in self._blocked_matching)

    def limit_of(self, kind: str) -> int:
        """Return how many identifiers of a type one profile may hold."""
        return int(self.limits.get(kind, self.default_limit))

    def rank_of(self, key: Key) -> tuple[int, str, str]:
        """Order identifiers most trusted first; custom types rank between phone and anonymous_id."""
        if key.type in self.priority:
            rank = 2 * self.priority.index(key.type)
        else:
            rank = 2 * self.priority.index("anonymous_id") - 1
        return (rank, key.type, key.value)


@dataclass
class Resolution:
    """Where every event went and which identifiers each group holds at the end."""

    groups: dict[int, set[Key]]
    events: dict[int, list[int]]
    dropped_events: list[int]
    blocked: set[Key]
    quarantined: set[Key]


class IdentityGraph:
    """The grouping a correct platform holds, built one event at a time."""

    def __init__(self, rules: Rules | None = None) -> None:
        self.rules = rules or Rules()
        self.owner: dict[Key, int] = {}
        self.groups: dict[int, set[Key]] = {}
        self.events: dict[int, list[int]] = {}
        self.dropped_events: list[int] = []
        self.blocked: set[Key] = set()
        self.quarantined: set[Key] = set()
        self.tried_to_tie: dict[Key, set[int]] = {}
        self._next_group = 0

    def resolve(self, *, event: int, keys: Iterable[Key]) -> int | None:
        """Take one event naming `keys`; return the group it belongs to (None: no usable identifier)."""
        usable: list[Key] = []
        for key in dict.fromkeys(keys):
            if self.rules.is_blocked(key):
                self.blocked.add(key)
            else:
                usable.append(key)
        active = sorted(usable, key=self.rules.rank_of)
        dropped: list[Key] = []
        while True:
            matched = [k for k in active if k in self.owner and k not in self.quarantined]
            groups = list(dict.fromkeys(self.owner[k] for k in matched))
            new = [k for k in active if k not in self.owner]
            if self._within_limits(groups, new):
                break
            dropped.append(active.pop())
        if groups:
            target = min(groups)
            for absorbed in groups[1:]:
                self._merge(into=target, absorbed=absorbed)
        elif new:
            target = self._next_group
            self._next_group += 1
            self.groups[target] = set()
            self.events[target] = []
        else:
            self.dropped_events.append(event)
            return None
        for key in new:
            self.owner[key] = target
            self.groups[target].add(key)
        for key in dropped:
            holder = self.owner.get(key)
            if holder is None or holder == target or key in self.quarantined:
                continue
            tied = self.tried_to_tie.setdefault(key, set())
            tied.update((holder, target))
            if len(tied) > self.rules.supernode_threshold:
                self.quarantined.add(key)
        self.events[target].append(event)
        return target

    def result(self) -> Resolution:
        """Return the grouping as it stands."""
        return Resolution(
            groups={g: set(keys) for g, keys in self.groups.items()},
            events={g: list(events) for g, events in self.events.items()},
            dropped_events=list(self.dropped_events),
            blocked=set(self.blocked),
            quarantined=set(self.quarantined),
        )

    def _within_limits(self, groups: Sequence[int], new: Sequence[Key]) -> bool:
        totals: Counter[str] = Counter(k.type for g in groups for k in self.groups[g])
        totals.update(k.type for k in new)
        return all(count <= self.rules.limit_of(kind) for kind, count in totals.items())

    def _merge(self, *, into: int, absorbed: int) -> None:
        for key in self.groups.pop(absorbed):
            self.owner[key] = into
            self.groups[into].add(key)
        self.events[into].extend(self.events.pop(absorbed))
        for tied in self.tried_to_tie.values():
            if absorbed in tied:
                tied.discard(absorbed)
                tied.add(into)
