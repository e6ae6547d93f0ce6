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
- everything else the event names is merged into one profile, and its new identifiers join it;
- an alias's `previousId` (read as a user id and as an anonymous id) takes part as the event's
  least trusted identifier, after all of its own: the readings that name a profile, or when none
  does (the alias came first) the anonymous id, which then joins the profile. So an alias merges
  only where an event carrying both identifiers would, and a profile it names that the rules
  keep apart is a refusal, with the reason the merge ledger gives (`quarantined`, or
  `limit:<type>`, the most trusted type that merging would take past its limit).

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
    # Per alias that merged profiles, the event, once per profile it merged; per alias refused,
    # the event, the previous identifier and the reason.
    alias_merges: list[int]
    refused_aliases: list[tuple[int, Key, str]]


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
        self.alias_merges: list[int] = []
        self.refused_aliases: list[tuple[int, Key, str]] = []
        self._next_group = 0

    def resolve(self, *, event: int, keys: Iterable[Key], aliased: Iterable[Key] = ()) -> int | None:
        """Take one event naming `keys` (and, for an alias, the readings of its previousId);
        return the group it belongs to (None: no usable identifier of its own)."""
        usable = self._usable(keys)
        previous = [k for k in self._usable(aliased) if k not in usable]
        if not usable:
            self.dropped_events.append(event)
            return None
        chosen = [k for k in previous if k in self.owner] or [k for k in previous if k.type == "anonymous_id"]
        active = sorted(usable, key=self.rules.rank_of) + chosen
        dropped: list[Key] = []
        while True:
            matched = [k for k in active if k in self.owner and k not in self.quarantined]
            groups = list(dict.fromkeys(self.owner[k] for k in matched))
            new = [k for k in active if k not in self.owner]
            if self._within_limits(groups, new):
                break
            dropped.append(active.pop())
        target = min(groups) if groups else None
        if target is None and not new:
            self.dropped_events.append(event)
            return None
        for key in chosen:
            holder = self.owner.get(key)
            if holder is not None and holder not in groups:
                self.refused_aliases.append((event, key, self._refusal(key, holder, target, new)))
        if target is not None:
            # The ledger names each merged profile by the last of the event's identifiers it held.
            linking = {self.owner[k]: k for k in matched}
            for absorbed in groups[1:]:
                if linking[absorbed] in chosen:
                    self.alias_merges.append(event)
                self._merge(into=target, absorbed=absorbed)
        else:
            target = self._next_group
            self._next_group += 1
            self.groups[target] = set()
            self.events[target] = []
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
            alias_merges=list(self.alias_merges),
            refused_aliases=list(self.refused_aliases),
        )

    def _usable(self, keys: Iterable[Key]) -> list[Key]:
        """Return the keys the rules do not block, noting those they do."""
        usable: list[Key] = []
        for key in dict.fromkeys(keys):
            if self.rules.is_blocked(key):
                self.blocked.add(key)
            else:
                usable.append(key)
        return usable

    def _refusal(self, key: Key, holder: int, target: int | None, new: Sequence[Key]) -> str:
        """Return why an alias left apart the group its previous identifier names."""
        if key in self.quarantined:
            return "quarantined"
        totals: Counter[str] = Counter(k.type for k in self.groups[holder])
        if target is not None:
            totals.update(k.type for k in self.groups[target])
        totals.update(k.type for k in new)
        over = [kind for kind, count in totals.items() if count > self.rules.limit_of(kind)]
        return f"limit:{min(over, key=lambda kind: self.rules.rank_of(Key(kind, '')))}" if over else "rules"

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
