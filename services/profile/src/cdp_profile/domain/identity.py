"""Identifiers of an event and the identity rules: blocked values, limits, priority, merge plans."""

from __future__ import annotations

import re
from collections.abc import Collection, Iterable, Mapping
from dataclasses import dataclass, field
from functools import cached_property, lru_cache
from typing import Any

from cdp_common.events import TrackingEventReceived
from cdp_common.identifiers import InvalidIdentifier, normalise_identifier
from cdp_common.patterns import compile_stored

PROFILE_ID = "profile_id"
KNOWN_TYPES = ("user_id", "email", "phone", "anonymous_id")
TYPE_PATTERN = re.compile(r"^[a-z][a-z0-9_]{0,63}$")
MAX_VALUE_LENGTH = 1000
# How many identifier values the normalising and blocking memos hold before they start afresh.
_MEMO_SIZE = 65_536


class InvalidReference(ValueError):
    """A `type:value` reference whose type or value cannot name a profile."""


@dataclass(frozen=True, order=True)
class IdentifierKey:
    """One identifier: its type and its normalised value."""

    type: str
    value: str

    def __str__(self) -> str:
        return f"{self.type}:{self.value}"


@dataclass(frozen=True)
class IdentityRules:
    """The configurable identity rules; every field has the documented default."""

    blocked_values: tuple[str, ...] = ("null", "undefined", "0", "-1", "anonymous", "test@test.com")
    blocked_patterns: tuple[str, ...] = (r"^\s*$", r"^(none|nil|n/a|unknown)$")
    limits: Mapping[str, int] = field(default_factory=lambda: {"user_id": 1})
    default_limit: int = 5
    priority: tuple[str, ...] = ("user_id", "email", "phone", "anonymous_id")
    supernode_threshold: int = 10

    def __post_init__(self) -> None:
        _ = self._blocked_compiled  # an invalid pattern is refused here, not at the first event

    def limit_of(self, kind: str) -> int:
        """Return how many identifiers of a type one profile may hold."""
        if kind == PROFILE_ID:
            return 1
        return int(self.limits.get(kind, self.default_limit))

    def rank_of(self, kind: str) -> int:
        """Return a type's priority rank, lower is more trusted; custom types rank with anonymous_id."""
        if kind == PROFILE_ID:
            return -1
        if kind in self.priority:
            return self.priority.index(kind)
        if "anonymous_id" in self.priority:
            return self.priority.index("anonymous_id")
        return len(self.priority)

    def sort_key(self, key: IdentifierKey) -> tuple[int, int, str, str]:
        """Order identifiers most trusted first; custom types just before anonymous ids."""
        custom = key.type not in self.priority and key.type != PROFILE_ID
        return (self.rank_of(key.type), 0 if custom else 1, key.type, key.value)

    @cached_property
    def _blocked_lowered(self) -> frozenset[str]:
        return frozenset(v.lower() for v in self.blocked_values)

    @cached_property
    def _blocked_compiled(self) -> tuple[Any, ...]:
        return tuple(compile_stored(pattern, ignore_case=True) for pattern in self.blocked_patterns)

    @cached_property
    def _blocked_seen(self) -> dict[str, bool]:
        # The same identifiers come back event after event; each value is judged once.
        return {}

    def is_blocked(self, key: IdentifierKey) -> bool:
        """Whether a value is junk that must never identify anybody."""
        seen = self._blocked_seen
        verdict = seen.get(key.value)
        if verdict is None:
            verdict = key.value.strip().lower() in self._blocked_lowered or any(
                pattern.search(key.value) for pattern in self._blocked_compiled
            )
            if len(seen) >= _MEMO_SIZE:
                seen.clear()
            seen[key.value] = verdict
        return verdict

    def to_json(self) -> dict[str, Any]:
        """Return the stored and served form."""
        return {
            "blocked_values": list(self.blocked_values),
            "blocked_patterns": list(self.blocked_patterns),
            "limits": {"user_id": 1, **dict(self.limits)},
            "default_limit": self.default_limit,
            "priority": list(self.priority),
            "supernode_threshold": self.supernode_threshold,
        }

    @classmethod
    def from_json(cls, raw: Mapping[str, Any]) -> IdentityRules:
        """Read the stored form; missing fields keep their defaults."""
        base = cls()
        return cls(
            blocked_values=tuple(raw.get("blocked_values", base.blocked_values)),
            blocked_patterns=tuple(raw.get("blocked_patterns", base.blocked_patterns)),
            limits=dict(raw.get("limits", base.limits)),
            default_limit=int(raw.get("default_limit", base.default_limit)),
            priority=tuple(raw.get("priority", base.priority)),
            supernode_threshold=int(raw.get("supernode_threshold", base.supernode_threshold)),
        )


def normalise(kind: str, value: str, *, default_region: str = "DE") -> str:
    """Normalise an identifier value for matching."""
    normalised = _normalised(kind, value, default_region)
    if normalised is None:
        return normalise_identifier(kind, value, default_region=default_region)
    return normalised


@lru_cache(maxsize=_MEMO_SIZE)
def _normalised(kind: str, value: str, default_region: str) -> str | None:
    """Return the normalised value, None when it is invalid (the caller raises the error afresh)."""
    try:
        return normalise_identifier(kind, value, default_region=default_region)
    except InvalidIdentifier:
        return None


def parse_ref(ref: str, *, default_region: str = "DE") -> IdentifierKey | None:
    """Parse an API reference `type:value`; None when the ref is a bare profile id."""
    kind, sep, value = ref.partition(":")
    if not sep:
        return None
    if not TYPE_PATTERN.match(kind) or not value:
        raise InvalidReference("a reference is a profile id or type:value with a lower-case type")
    try:
        return IdentifierKey(kind, normalise(kind, value, default_region=default_region))
    except InvalidIdentifier as exc:
        raise InvalidReference(str(exc)) from exc


def identifiers_of(
    event: TrackingEventReceived, *, rules: IdentityRules, default_region: str = "DE"
) -> tuple[list[IdentifierKey], list[IdentifierKey]]:
    """Return the event's usable identifiers (most trusted first) and those the rules blocked."""
    raw: list[tuple[str, Any]] = []
    if event.userId:
        raw.append(("user_id", event.userId))
    if event.anonymousId:
        raw.append(("anonymous_id", event.anonymousId))
    raw.append(("email", trait_of(event, "email")))
    raw.append(("phone", trait_of(event, "phone")))
    external = event.context.get("externalIds")
    if isinstance(external, list):
        for item in external:
            if isinstance(item, dict):
                raw.append((str(item.get("type", "")).strip().lower(), item.get("id")))
    profile_ref = event.context.get(PROFILE_ID)
    if profile_ref is not None:
        raw.append((PROFILE_ID, profile_ref))
    usable: list[IdentifierKey] = []
    blocked: list[IdentifierKey] = []
    for kind, value in raw:
        if isinstance(value, (int, float)) and not isinstance(value, bool):
            value = str(value)
        if not isinstance(value, str) or not TYPE_PATTERN.match(kind) or len(value) > MAX_VALUE_LENGTH:
            continue
        if kind == "email" and "@" not in value:
            continue
        try:
            key = IdentifierKey(kind, normalise(kind, value, default_region=default_region))
        except InvalidIdentifier:
            continue
        if key in usable or key in blocked:
            continue
        (blocked if kind != PROFILE_ID and rules.is_blocked(key) else usable).append(key)
    return sorted(usable, key=rules.sort_key), blocked


def trait_of(event: TrackingEventReceived, name: str) -> Any:
    """Return a trait the event asserts: identify traits first, then context.traits."""
    if event.type == "identify" and name in event.traits:
        return event.traits[name]
    context_traits = event.context.get("traits")
    if isinstance(context_traits, dict):
        return context_traits.get(name)
    return None


def traits_of(event: TrackingEventReceived) -> dict[str, Any]:
    """Return the traits an event asserts: context.traits, overridden by identify traits."""
    context_traits = event.context.get("traits")
    traits = dict(context_traits) if isinstance(context_traits, dict) else {}
    if event.type == "identify":
        traits.update(event.traits)
    return traits


@dataclass(frozen=True)
class ProfileHolding:
    """What the planner needs to know of one existing profile."""

    profile_id: str
    created_order: tuple[Any, ...]
    counts: Mapping[str, int]


@dataclass
class MergePlan:
    """What to do with an event: the profile that takes it, who merges into it, what is dropped."""

    target: str | None
    absorbed: list[str]
    attach: list[IdentifierKey]
    dropped: list[IdentifierKey]
    linking: dict[str, IdentifierKey]


def plan_resolution(
    *,
    keys: list[IdentifierKey],
    owners: Mapping[IdentifierKey, str],
    holdings: Mapping[str, ProfileHolding],
    quarantined: Iterable[IdentifierKey],
    rules: IdentityRules,
    apart: Collection[frozenset[str]] = (),
) -> MergePlan:
    """Decide target, merges and dropped identifiers for an event, honouring limits, priority and
    the pairs of profiles an operator's split keeps apart."""
    quarantined_set = set(quarantined)
    active = list(keys)
    dropped: list[IdentifierKey] = []
    while True:
        matching = [k for k in active if k in owners and k not in quarantined_set]
        profiles = list(dict.fromkeys(owners[k] for k in matching))
        new_keys = [k for k in active if k not in owners]
        if _within_limits(profiles, new_keys, holdings, rules) and not _any_apart(profiles, apart):
            break
        # Drop the event's lowest-priority identifier and match again.
        victim = active[-1]
        active.remove(victim)
        dropped.append(victim)
    if not profiles:
        target = None
        absorbed: list[str] = []
    else:
        ordered = sorted(profiles, key=lambda pid: holdings[pid].created_order)
        target, absorbed = ordered[0], ordered[1:]
    linking = {owners[k]: k for k in matching if owners[k] in absorbed}
    attach = [k for k in active if k not in owners and k.type != PROFILE_ID]
    # Quarantined identifiers owned elsewhere neither merge nor move.
    dropped.extend(k for k in active if k in quarantined_set and owners.get(k) not in (target, None))
    return MergePlan(target=target, absorbed=absorbed, attach=attach, dropped=dropped, linking=linking)


def _any_apart(profiles: list[str], apart: Collection[frozenset[str]]) -> bool:
    return bool(apart) and any(
        frozenset((a, b)) in apart for i, a in enumerate(profiles) for b in profiles[i + 1 :]
    )


def _within_limits(
    profiles: list[str],
    new_keys: list[IdentifierKey],
    holdings: Mapping[str, ProfileHolding],
    rules: IdentityRules,
) -> bool:
    totals: dict[str, int] = {}
    for pid in profiles:
        for kind, count in holdings[pid].counts.items():
            totals[kind] = totals.get(kind, 0) + count
    for key in new_keys:
        totals[key.type] = totals.get(key.type, 0) + 1
    return all(count <= rules.limit_of(kind) for kind, count in totals.items() if kind != PROFILE_ID)


# --- alias ------------------------------------------------------------------------------------

# The kinds an alias's previousId may be: a person's earlier user id or an anonymous id.
ALIAS_KINDS = ("user_id", "anonymous_id")


def previous_identifiers(
    event: TrackingEventReceived, *, rules: IdentityRules, default_region: str = "DE"
) -> tuple[list[IdentifierKey], list[IdentifierKey]]:
    """Return what an alias's previousId may name (a user id or an anonymous id) and those the rules block."""
    value = event.previousId
    if event.type != "alias" or not value or len(value) > MAX_VALUE_LENGTH:
        return [], []
    usable: list[IdentifierKey] = []
    blocked: list[IdentifierKey] = []
    for kind in ALIAS_KINDS:
        try:
            key = IdentifierKey(kind, normalise(kind, value, default_region=default_region))
        except InvalidIdentifier:
            continue
        (blocked if rules.is_blocked(key) else usable).append(key)
    return usable, blocked


def alias_keys(
    previous: Iterable[IdentifierKey], *, owned: Collection[IdentifierKey], own: Collection[IdentifierKey]
) -> list[IdentifierKey]:
    """Return the previous identifiers an alias resolves with, least trusted last.

    Those that name a profile; when none does (the alias came first), the anonymous id, so
    that the events of that id which follow find the aliased profile. Never one the event
    carries itself.
    """
    candidates = [k for k in previous if k not in own]
    named = [k for k in candidates if k in owned]
    return named or [k for k in candidates if k.type == "anonymous_id"]


def refusal_reason(
    *,
    key: IdentifierKey,
    other: str,
    plan: MergePlan,
    holdings: Mapping[str, ProfileHolding],
    quarantined: Collection[IdentifierKey],
    rules: IdentityRules,
    apart: Collection[frozenset[str]] = (),
) -> str:
    """Return why a plan left apart the profile an identifier names: `quarantined`, `kept_apart` (an
    operator's split) or `limit:<type>` (merging would pass that type's limit)."""
    if key in quarantined:
        return "quarantined"
    if plan.target is not None and frozenset((plan.target, other)) in apart:
        return "kept_apart"
    totals = dict(holdings[other].counts)
    if plan.target is not None:
        for kind, count in holdings[plan.target].counts.items():
            totals[kind] = totals.get(kind, 0) + count
    for attached in plan.attach:
        totals[attached.type] = totals.get(attached.type, 0) + 1
    over = sorted(
        (kind for kind, count in totals.items() if kind != PROFILE_ID and count > rules.limit_of(kind)),
        key=rules.rank_of,
    )
    return f"limit:{over[0]}" if over else "rules"
