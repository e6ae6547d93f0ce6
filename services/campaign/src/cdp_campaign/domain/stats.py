"""Campaign results: rates per group, uplift against the holdout with a confidence interval, ROI."""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Any

Z_95 = 1.959963984540054


@dataclass(frozen=True)
class GroupOutcome:
    """Assigned people and their conversions and revenue, for one group."""

    assigned: int
    converted: int
    revenue: float

    @property
    def rate(self) -> float:
        """Conversion rate of the group."""
        return self.converted / self.assigned if self.assigned else 0.0


def uplift(*, treated: GroupOutcome, holdout: GroupOutcome, cost: float) -> dict[str, Any]:
    """Compare treated people with the holdout: absolute uplift with a 95% interval, revenue, ROI."""
    result: dict[str, Any] = {
        "treated_rate": treated.rate,
        "holdout_rate": holdout.rate,
        "absolute": None,
        "relative": None,
        "ci95": None,
        "incremental_conversions": None,
        "incremental_revenue": None,
        "roi": None,
    }
    if not treated.assigned or not holdout.assigned:
        return result
    difference = treated.rate - holdout.rate
    variance = (
        treated.rate * (1 - treated.rate) / treated.assigned
        + holdout.rate * (1 - holdout.rate) / holdout.assigned
    )
    half_width = Z_95 * math.sqrt(variance)
    revenue_per_treated = treated.revenue / treated.assigned
    revenue_per_holdout = holdout.revenue / holdout.assigned
    incremental_revenue = (revenue_per_treated - revenue_per_holdout) * treated.assigned
    result.update(
        absolute=difference,
        relative=difference / holdout.rate if holdout.rate else None,
        ci95=[difference - half_width, difference + half_width],
        incremental_conversions=difference * treated.assigned,
        incremental_revenue=incremental_revenue,
        roi=(incremental_revenue - cost) / cost if cost > 0 else None,
    )
    return result
