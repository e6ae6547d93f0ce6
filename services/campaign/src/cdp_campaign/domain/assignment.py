"""Sticky assignment of a person to a campaign's holdout or one of its variants."""

from __future__ import annotations

import hashlib
from collections.abc import Sequence

HOLDOUT = "holdout"
_BUCKETS = 10_000


def _bucket(*, salt: str, campaign_id: str, profile_id: str) -> float:
    """Return a stable number in [0, 1) for a campaign and a person."""
    digest = hashlib.sha256(f"{salt}:{campaign_id}:{profile_id}".encode()).digest()
    return (int.from_bytes(digest[:8], "big") % _BUCKETS) / _BUCKETS


def assign_group(
    *, campaign_id: str, profile_id: str, holdout_percent: float, variants: Sequence[tuple[str, int]]
) -> str:
    """Return `holdout` or the key of the variant a person gets; the same answer every time."""
    if _bucket(salt="holdout", campaign_id=campaign_id, profile_id=profile_id) < holdout_percent / 100:
        return HOLDOUT
    total = sum(weight for _, weight in variants)
    point = _bucket(salt="variant", campaign_id=campaign_id, profile_id=profile_id) * total
    for key, weight in variants:
        if point < weight:
            return key
        point -= weight
    return variants[-1][0]
