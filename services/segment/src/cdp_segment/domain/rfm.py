"""RFM: recency, frequency and monetary quintile scores and the named segments.

Scores are 1 to 5 by quintile of the population of customers (anyone with an
order): a score is ceil(5 * the share of customers whose value is at most this
one's), so equal values share a score. Recency scores higher for a more recent last
order. The named segments follow the usual R * FM grid, where FM is the mean of the
F and M scores rounded half up.

Over a large base the same scores come from four thresholds per dimension: a value
scores k or more exactly when it is at least the value at the sorted position
`quintile_positions(count)[k - 2]`, which SQL finds in one pass (`percentile_disc`).
"""

from __future__ import annotations

import math
from bisect import bisect_right
from collections.abc import Sequence

NAMED_SEGMENTS = (
    "champions",
    "loyal",
    "potential_loyalists",
    "new",
    "promising",
    "need_attention",
    "at_risk",
    "cant_lose",
    "hibernating",
    "lost",
)
LABELS = {
    "champions": "Champions",
    "loyal": "Loyal",
    "potential_loyalists": "Potential loyalists",
    "new": "New customers",
    "promising": "Promising",
    "need_attention": "Need attention",
    "at_risk": "At risk",
    "cant_lose": "Can't lose them",
    "hibernating": "Hibernating",
    "lost": "Lost",
}


def quintile_scores(values: Sequence[float]) -> list[int]:
    """Return the 1-5 score of each value: ceil(5 * cumulative share), ties sharing a score."""
    ordered = sorted(values)
    count = len(ordered)
    return [max(1, math.ceil(5 * bisect_right(ordered, v) / count - 1e-9)) for v in values]


def quintile_positions(count: int) -> list[int]:
    """Return the 1-based sorted positions whose values are the least that score 2, 3, 4 and 5."""
    # ceil(5 * j / count) >= k exactly when j > (k - 1) * count / 5.
    return [(k - 1) * count // 5 + 1 for k in range(2, 6)]


def score_by_thresholds(value: float, thresholds: Sequence[float]) -> int:
    """Return the 1-5 score of a value from the least values that score 2, 3, 4 and 5."""
    return 1 + sum(1 for threshold in thresholds if value >= threshold)


def named_segment(recency: int, frequency: int, monetary: int) -> str:
    """Return the named RFM segment of a customer's scores."""
    fm = (frequency + monetary + 1) // 2
    if recency <= 2:
        if fm <= 2:
            return "lost" if recency == 1 else "hibernating"
        return "cant_lose" if fm == 5 else "at_risk"
    if recency == 3:
        return "need_attention" if fm <= 3 else "loyal"
    if fm == 1:
        return "new" if recency == 5 else "promising"
    if fm <= 3:
        return "potential_loyalists"
    return "champions" if recency == 5 else "loyal"
