"""Duplicate suspects: profiles that look like one person or company, scored for review, never merged."""

from __future__ import annotations

import hashlib
import re
import unicodedata
from collections import defaultdict
from collections.abc import Iterable
from dataclasses import dataclass
from typing import Any

import jellyfish
import numpy as np
from rapidfuzz import fuzz, process
from rapidfuzz.distance import OSA

LEGAL_FORMS = {
    "inc",
    "incorporated",
    "corp",
    "corporation",
    "co",
    "ltd",
    "limited",
    "llc",
    "gmbh",
    "ag",
    "sa",
    "plc",
}
# A block up to this size has every pair of its members compared; a larger one (a common surname
# in a base of millions) is sorted by name and e-mail and each member compared with its WINDOW
# next neighbours, so the work grows with the block's size instead of its square.
MAX_BLOCK = 200
WINDOW = 20
# The queue keeps pairs scoring this or more: two namesakes with different e-mails score about
# 0.54, and at 0.5 they filled the queue (244,377 pairs for 101,057 profiles) and most of a
# scan's time.
STORED_SCORE = 0.7
# The version of `block_keys`: keys stored by an older version are computed again.
KEYS_VERSION = 3


@dataclass(frozen=True)
class Candidate:
    """What the scorer compares of one profile."""

    profile_id: str
    name: str | None
    email: str | None
    phone: str | None
    address: str | None
    company: str | None
    postal_code: str | None = None
    birthday: str | None = None


@dataclass(frozen=True)
class Suspect:
    """Two profiles that may be the same, with a score in [0, 1] and what matched."""

    profile_ids: tuple[str, str]
    score: float
    reasons: dict[str, float]


def candidate_of(profile_id: str, common: dict[str, Any]) -> Candidate:
    """Build a candidate from a profile's typed common traits."""
    names = " ".join(n for n in (common.get("first_name"), common.get("last_name")) if n)
    address = common.get("address") or {}
    address_text = " ".join(str(address[k]) for k in ("street", "postal_code", "city") if address.get(k))
    return Candidate(
        profile_id=profile_id,
        name=_plain(names) or None,
        email=(common.get("email") or "").lower() or None,
        phone=common.get("phone"),
        address=_plain(address_text) or None,
        company=company_key(common.get("company")),
        postal_code=_plain(str(address.get("postal_code") or "")).replace(" ", "") or None,
        birthday=common.get("birthday"),
    )


def company_key(name: str | None) -> str | None:
    """Normalise a company name: `I.B.M. Corp` and `IBM` give the same key."""
    if not name:
        return None
    words = [w for w in re.split(r"[\s,]+", _plain(name.replace(".", ""))) if w and w not in LEGAL_FORMS]
    return "".join(words) or None


def find_suspects(candidates: list[Candidate], *, threshold: float = 0.8) -> list[Suspect]:
    """Score candidate pairs that share a block; return those at or above the threshold, best first."""
    blocks: dict[str, list[Candidate]] = defaultdict(list)
    for candidate in candidates:
        for key in block_keys(candidate):
            blocks[key].append(candidate)
    suspects = suspects_in_blocks(blocks.values(), threshold=threshold)
    return sorted(suspects, key=lambda s: (-s.score, s.profile_ids))


def suspects_in_blocks(
    blocks: Iterable[list[Candidate]], *, threshold: float, changed: set[str] | None = None
) -> list[Suspect]:
    """Score the pairs of every block (a pair that shares several blocks once); with `changed`,
    only pairs with a changed member. The pairs of all blocks are scored together, field by
    field, in C."""
    position: dict[str, int] = {}
    members: list[Candidate] = []
    lefts: list[np.ndarray] = []
    rights: list[np.ndarray] = []
    for block in blocks:
        ordered, left, right = pairs_in_block(block, changed=changed)
        if not len(left):
            continue
        at = np.empty(len(ordered), dtype=np.int64)
        for i, candidate in enumerate(ordered):
            known = position.get(candidate.profile_id)
            if known is None:
                known = position[candidate.profile_id] = len(members)
                members.append(candidate)
            at[i] = known
        lefts.append(np.minimum(at[left], at[right]))
        rights.append(np.maximum(at[left], at[right]))
    if not lefts:
        return []
    # One key per pair of members, so a pair found in several blocks is scored once.
    keys = np.unique(np.concatenate(lefts) * len(members) + np.concatenate(rights))
    left, right = keys // len(members), keys % len(members)
    apart = left != right
    left, right = left[apart], right[apart]
    scores, fields = score_pairs(members, left, right)
    suspects = []
    for hit in np.flatnonzero(scores >= threshold):
        pair = _ordered(members[left[hit]].profile_id, members[right[hit]].profile_id)
        reasons = {name: float(sims[hit]) for name, (present, sims) in fields.items() if present[hit]}
        suspects.append(Suspect(profile_ids=pair, score=round(float(scores[hit]), 3), reasons=reasons))
    return suspects


def pairs_in_block(
    members: list[Candidate], *, changed: set[str] | None = None
) -> tuple[list[Candidate], np.ndarray, np.ndarray]:
    """Return a block's members in the order compared and the positions of the pairs worth comparing
    (see MAX_BLOCK); with `changed`, only the pairs with a changed member (a pair of two changed
    members may come twice)."""
    ordered = sorted(members, key=lambda c: (c.name or "", c.email or "", c.profile_id))
    size = len(ordered)
    small = size <= MAX_BLOCK
    pending = np.flatnonzero(
        np.fromiter((changed is None or c.profile_id in changed for c in ordered), dtype=bool, count=size)
    )
    if len(pending) == size:
        if small:
            left, right = np.triu_indices(size, 1)
            return ordered, left, right
        left = np.repeat(np.arange(size), WINDOW)
        right = left + np.tile(np.arange(1, WINDOW + 1), size)
        inside = right < size
        return ordered, left[inside], right[inside]
    # Each changed member with everyone (or its neighbours within the window): the work grows
    # with the changed members, not with the block's square.
    others = np.arange(size) if small else np.arange(-WINDOW, WINDOW + 1)
    left = np.repeat(pending, len(others))
    right = np.tile(others, len(pending)) if small else left + np.tile(others, len(pending))
    keep = (right >= 0) & (right < size) & (right != left)
    left, right = left[keep], right[keep]
    return ordered, np.minimum(left, right), np.maximum(left, right)


def score_pair(left: Candidate, right: Candidate) -> tuple[float, dict[str, float]]:
    """Return how alike two profiles are and the similarity of each compared field."""
    scores, fields = score_pairs([left, right], np.array([0]), np.array([1]))
    reasons = {name: float(sims[0]) for name, (present, sims) in fields.items() if present[0]}
    return float(scores[0]), reasons


WEIGHTS = {"name": 0.35, "email": 0.3, "phone": 0.15, "address": 0.2, "company": 0.35, "birthday": 0.25}


def _ratio(scorer: Any) -> Any:
    def similarity(left: list[str | None], right: list[str | None]) -> np.ndarray:
        return process.cpdist(left, right, scorer=scorer, dtype=np.float64, workers=1) / 100

    return similarity


def _email_similarities(left: list[str | None], right: list[str | None]) -> np.ndarray:
    # Equal is 1; a typo or two ("gmial.com", "jane.doe" vs "jane.do") on an address of normal length
    # is 1 - distance / 4; farther apart is 0.
    distance = process.cpdist(left, right, scorer=OSA.distance, dtype=np.int64, workers=1)
    return np.where(distance == 0, 1.0, np.where(distance <= 2, np.maximum(0.0, 1.0 - distance / 4), 0.0))


def _equal(left: list[str | None], right: list[str | None]) -> np.ndarray:
    return np.fromiter((a == b for a, b in zip(left, right, strict=True)), dtype=np.float64, count=len(left))


_SIMILARITY = {
    "name": _ratio(fuzz.token_sort_ratio),
    "email": _email_similarities,
    "phone": _equal,
    "address": _ratio(fuzz.token_set_ratio),
    "company": _ratio(fuzz.ratio),
    "birthday": _equal,
}


def score_pairs(
    members: list[Candidate], left: np.ndarray, right: np.ndarray
) -> tuple[np.ndarray, dict[str, tuple[np.ndarray, np.ndarray]]]:
    """Score the pairs (members[left[i]], members[right[i]]): return the scores in [0, 1] and, per
    field, whether both members have it and how alike they are in it.

    The score is the weighted mean of the fields both have; one field alone is weak evidence
    (times 0.8), unless it is a company name and nothing else is known.
    """
    fields: dict[str, tuple[np.ndarray, np.ndarray]] = {}
    weighted = np.zeros(len(left))
    total = np.zeros(len(left))
    count = np.zeros(len(left), dtype=np.int64)
    for name, similarity in _SIMILARITY.items():
        values = np.array([getattr(c, name) or None for c in members], dtype=object)
        has = values != None  # noqa: E711 - element-wise against None
        present = has[left] & has[right]
        if not present.any():
            fields[name] = (present, np.zeros(len(left)))
            continue
        sims = np.zeros(len(left))
        sims[present] = similarity(values[left[present]].tolist(), values[right[present]].tolist())
        fields[name] = (present, sims)
        weighted = weighted + WEIGHTS[name] * np.where(present, sims, 0.0)
        total = total + np.where(present, WEIGHTS[name], 0.0)
        count += present
    scores = np.divide(weighted, total, out=np.zeros(len(left)), where=total > 0)
    alone = (count == 1) & ~fields["company"][0]
    return np.where(alone, scores * 0.8, scores), fields


def block_keys(candidate: Candidate) -> list[str]:
    """Return the blocks a candidate falls in: only candidates sharing a block are compared.

    Narrow enough that blocks stay small in a base of millions, wide enough for a typo: the
    surname with the first initial, the first name with the surname's first letters, the
    surname with the postal code, the surname's sound (Soundex and Metaphone, so Meier meets
    Mayer and Katharina Catharina) with the birthday, the e-mail's local part without dots and
    tags, the phone, the company's normalised name (whole and its first letters).
    """
    keys: list[str] = []
    parts = candidate.name.replace(",", " ").split() if candidate.name else []
    if len(parts) > 1:
        keys.append(f"n:{parts[-1]}|{parts[0][:1]}")
        keys.append(f"f:{parts[0]}|{parts[-1][:3]}")
    elif parts:
        keys.append(f"n:{parts[0]}")
    if parts and candidate.postal_code:
        keys.append(f"z:{parts[-1]}|{candidate.postal_code}")
    if parts and candidate.birthday:
        keys.append(f"s:{jellyfish.soundex(parts[-1])}|{candidate.birthday}")
        keys.append(f"m:{jellyfish.metaphone(parts[-1])}|{candidate.birthday}")
    if candidate.email:
        local = candidate.email.split("@", 1)[0].split("+", 1)[0].replace(".", "")
        if local:
            keys.append("e:" + local)
    if candidate.phone:
        keys.append("p:" + candidate.phone)
    if candidate.company:
        keys.append("c:" + candidate.company)
        if len(candidate.company) > 5:
            keys.append("c:" + candidate.company[:5])
    return keys


def block_number(key: str) -> int:
    """Return a block key as a signed 64-bit number: compact to store and never personal data in clear."""
    return int.from_bytes(hashlib.blake2b(key.encode(), digest_size=8).digest(), "big", signed=True)


def _ordered(left: str, right: str) -> tuple[str, str]:
    return (left, right) if left <= right else (right, left)


def _plain(text: str) -> str:
    decomposed = unicodedata.normalize("NFKD", text)
    ascii_text = "".join(c for c in decomposed if not unicodedata.combining(c))
    return re.sub(r"[^a-z0-9 ,]", "", ascii_text.lower()).strip()
