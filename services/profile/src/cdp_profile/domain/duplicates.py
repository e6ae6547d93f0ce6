"""Duplicate suspects: profiles that look like one person or company, scored for review, never merged."""

from __future__ import annotations

import hashlib
import re
import unicodedata
from collections import defaultdict
from collections.abc import Iterable, Iterator
from dataclasses import dataclass
from typing import Any

from rapidfuzz import fuzz
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
# The version of `block_keys`: keys stored by an older version are computed again.
KEYS_VERSION = 2


@dataclass(frozen=True)
class Candidate:
    """What the scorer compares of one profile."""

    profile_id: str
    name: str | None
    email: str | None
    phone: str | None
    address: str | None
    company: str | None


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
    """Score the pairs of each block once; with `changed`, only pairs with a changed member."""
    seen: set[tuple[str, str]] = set()
    suspects: list[Suspect] = []
    for members in blocks:
        for left, right in pairs_in_block(members, changed=changed):
            pair = _ordered(left.profile_id, right.profile_id)
            if pair in seen or pair[0] == pair[1]:
                continue
            seen.add(pair)
            score, reasons = score_pair(left, right)
            if score >= threshold:
                suspects.append(Suspect(profile_ids=pair, score=round(score, 3), reasons=reasons))
    return suspects


def pairs_in_block(
    members: list[Candidate], *, changed: set[str] | None = None
) -> Iterator[tuple[Candidate, Candidate]]:
    """Yield the pairs of a block worth comparing (see MAX_BLOCK); with `changed`, those with a changed member."""
    ordered = sorted(members, key=lambda c: (c.name or "", c.email or "", c.profile_id))
    everyone = len(ordered) <= MAX_BLOCK
    for i, left in enumerate(ordered):
        for right in ordered[i + 1 :] if everyone else ordered[i + 1 : i + 1 + WINDOW]:
            if changed is None or left.profile_id in changed or right.profile_id in changed:
                yield left, right


def score_pair(left: Candidate, right: Candidate) -> tuple[float, dict[str, float]]:
    """Return how alike two profiles are and the similarity of each compared field."""
    reasons: dict[str, float] = {}
    if left.name and right.name:
        reasons["name"] = fuzz.token_sort_ratio(left.name, right.name) / 100
    if left.email and right.email:
        reasons["email"] = _email_similarity(left.email, right.email)
    if left.phone and right.phone:
        reasons["phone"] = 1.0 if left.phone == right.phone else 0.0
    if left.address and right.address:
        reasons["address"] = fuzz.token_set_ratio(left.address, right.address) / 100
    if left.company and right.company:
        reasons["company"] = fuzz.ratio(left.company, right.company) / 100
    weights = {"name": 0.35, "email": 0.3, "phone": 0.15, "address": 0.2, "company": 0.35}
    if not reasons:
        return 0.0, reasons
    total = sum(weights[k] for k in reasons)
    score = sum(weights[k] * v for k, v in reasons.items()) / total
    # One field alone is weak evidence, unless it is a company name and nothing else is known.
    if len(reasons) == 1 and "company" not in reasons:
        score *= 0.8
    return score, reasons


def _email_similarity(left: str, right: str) -> float:
    if left == right:
        return 1.0
    distance = OSA.distance(left, right)
    # A typo or two ("gmial.com", "jane.doe" vs "jane.do") on an address of normal length.
    return max(0.0, 1.0 - distance / 4) if distance <= 2 else 0.0


def block_keys(candidate: Candidate) -> list[str]:
    """Return the blocks a candidate falls in: only candidates sharing a block are compared.

    Narrow enough that blocks stay small in a base of millions, wide enough for a typo: the
    surname with the first initial, the first name with the surname's first letters, the e-mail's
    local part without dots and tags, the phone, the company (whole and its first letters).
    """
    keys: list[str] = []
    if candidate.name:
        parts = candidate.name.replace(",", " ").split()
        if len(parts) > 1:
            keys.append(f"n:{parts[-1]}|{parts[0][:1]}")
            keys.append(f"f:{parts[0]}|{parts[-1][:3]}")
        elif parts:
            keys.append(f"n:{parts[0]}")
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
