"""Which segments a change can affect, and who enters or leaves them.

The catalog orders segments so that a segment comes after every segment it refers
to; a change is described by dependency names (`trait:plan`, `computed:<key>`,
`consent:marketing:email`, `model:rfm`, `segment:<key>`, `account:<trait>`, or `account:*` when
the person's accounts changed), and only the segments that
depend on one of them are evaluated, plus those that refer to a segment whose
membership just changed. A person excluded from `profiling_segmentation` is in no segment: they
leave every one they are in, with consent as the reason, and enter none.
"""

from __future__ import annotations

from dataclasses import dataclass, replace
from datetime import UTC, datetime
from typing import Any

from cdp_common.purposes import PROFILING, PurposePolicy

from cdp_segment.domain.evaluation import ProfileFacts, evaluate, explain, withheld_explanation
from cdp_segment.domain.rules import ParsedRule

_ANY_INSTANT = datetime(2000, 1, 1, tzinfo=UTC)
# The name of a change of the person's accounts: every rule on an account trait may be affected.
ANY_ACCOUNT_TRAIT = "account:*"


@dataclass(frozen=True)
class SegmentDefinition:
    """A live segment with its parsed rule."""

    id: str
    key: str
    version: int
    parsed: ParsedRule
    # False while the computed traits it reads are not in the copy yet: changes of single
    # profiles skip it, and the job that builds it computes its members once they are.
    realtime: bool = True


@dataclass(frozen=True)
class MembershipDecision:
    """A profile enters or leaves a segment, with the evaluation that decided it."""

    segment: SegmentDefinition
    entered: bool
    explanation: dict[str, Any]
    # What decided it beside the rule: "consent" when the person is excluded from profiling.
    why: str | None = None


class Catalog:
    """The live segments in dependency order, indexed by what they depend on."""

    def __init__(self, definitions: list[SegmentDefinition], policy: PurposePolicy | None = None) -> None:
        # Who is excluded from profiling, for the evaluations over many profiles at once.
        self.policy = policy or PurposePolicy()
        self.by_key = {d.key: d for d in definitions}
        self.by_id = {d.id: d for d in definitions}
        self.ordered = _dependency_order(definitions)
        self.by_dependency: dict[str, set[str]] = {}
        for definition in definitions:
            for dependency in definition.parsed.dependencies:
                self.by_dependency.setdefault(dependency, set()).add(definition.key)
        # A segment none of whose inputs a profile holds decides as it would for a
        # profile of which nothing is known; without the clock that outcome never changes.
        self.match_unknown = frozenset(
            d.key
            for d in definitions
            if d.realtime
            and not d.parsed.uses_clock
            and evaluate(d.parsed.root, ProfileFacts(), _ANY_INSTANT)
        )

    def affected_by(self, changed: set[str]) -> set[str]:
        """Return the keys of segments that depend directly on one of the changed names."""
        keys: set[str] = set()
        for name in changed:
            keys |= self.by_dependency.get(name, set())
        if ANY_ACCOUNT_TRAIT in changed:
            for name, dependents in self.by_dependency.items():
                if name.startswith("account:"):
                    keys |= dependents
        return keys

    def affecting_new_profile(self, facts: ProfileFacts) -> set[str]:
        """Return the keys of segments a new profile can be in: those reading what it holds, the clock,
        those that match a profile of which nothing is known, and those it is already in."""
        held = {
            *(f"trait:{k}" for k in facts.traits),
            *(f"computed:{k}" for k in facts.computed),
            *(f"model:{k}" for k in facts.model),
            *(f"consent:{k}" for k in facts.consents),
            *(f"account:{k}" for account in facts.accounts for k in account),
            "clock",
        }
        return self.affected_by(held) | self.match_unknown | set(facts.segments)

    def decide(
        self, facts: ProfileFacts, changed: set[str] | None, now: datetime, *, new_profile: bool = False
    ) -> list[MembershipDecision]:
        """Evaluate the segments a change can affect (all when changed is None) for one profile.

        For a new profile (changed None) only the segments it can be in are evaluated:
        every other one would not match it. A person excluded from profiling leaves every segment.
        """
        if PROFILING in facts.withheld:
            explanation = withheld_explanation(facts, PROFILING)
            return [
                MembershipDecision(definition, False, explanation, why="consent")
                for definition in self.ordered
                if definition.key in facts.segments
            ]
        if changed is not None:
            pending = self.affected_by(changed)
        elif new_profile:
            pending = self.affecting_new_profile(facts)
        else:
            pending = set(self.by_key)
        decisions: list[MembershipDecision] = []
        for definition in self.ordered:
            if definition.key not in pending or not definition.realtime:
                continue
            matched = evaluate(definition.parsed.root, facts, now)
            if matched == (definition.key in facts.segments):
                continue
            decisions.append(
                MembershipDecision(definition, matched, explain(definition.parsed.root, facts, now))
            )
            members = facts.segments | {definition.key} if matched else facts.segments - {definition.key}
            facts = replace(facts, segments=frozenset(members))
            pending |= self.by_dependency.get(f"segment:{definition.key}", set())
        return decisions


def _dependency_order(definitions: list[SegmentDefinition]) -> list[SegmentDefinition]:
    by_key = {d.key: d for d in definitions}
    ordered: list[SegmentDefinition] = []
    state: dict[str, str] = {}

    def visit(key: str) -> None:
        if state.get(key) is not None:
            return
        state[key] = "visiting"
        for ref in sorted(by_key[key].parsed.segment_refs):
            if ref in by_key:
                visit(ref)
        state[key] = "done"
        ordered.append(by_key[key])

    for key in sorted(by_key):
        visit(key)
    return ordered


def find_cycle(refs: dict[str, frozenset[str]]) -> list[str] | None:
    """Return a cycle of segment references (keys in order), or None."""
    state: dict[str, str] = {}

    def visit(key: str, path: list[str]) -> list[str] | None:
        if state.get(key) == "visiting":
            return [*path[path.index(key) :], key]
        if state.get(key) == "done":
            return None
        state[key] = "visiting"
        for ref in sorted(refs.get(key, frozenset())):
            found = visit(ref, [*path, key])
            if found:
                return found
        state[key] = "done"
        return None

    for key in sorted(refs):
        found = visit(key, [])
        if found:
            return found
    return None


def public_reason(explanation: dict[str, Any]) -> dict[str, Any]:
    """Return an explanation without the profile's values, for events that leave the service."""
    return {k: public_reason(v) if isinstance(v, dict) else [public_reason(c) for c in v] if k == "conditions" else v
            for k, v in explanation.items() if k not in {"actual", "today"}}  # fmt: skip
