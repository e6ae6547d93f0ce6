"""Lifecycle stages (new, active, at risk, churned, reactivated) from a profile's order aggregates.

Inputs are the computed traits of first and last `Order Completed` that profile
maintains. A customer is new while the first order is at most `new_days` old; active
while the last order is at most `active_days` old; at risk up to `churn_days`; then
churned. A churned customer who orders again is reactivated, and stays so until the
last order is older than `active_days` again.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field
from datetime import datetime, timedelta
from typing import Any

from cdp_segment.domain.rules import ComputedTraitSpec, parse_instant

ORDER_EVENT = "Order Completed"
ORDERS_COUNT = ComputedTraitSpec(kind="count", event=ORDER_EVENT, fixed_key="seg_orders_count")
ORDERS_REVENUE = ComputedTraitSpec(
    kind="sum", event=ORDER_EVENT, property_path="properties.total", fixed_key="seg_orders_revenue"
)
FIRST_ORDER = ComputedTraitSpec(kind="first", event=ORDER_EVENT, fixed_key="seg_first_order_at")
LAST_ORDER = ComputedTraitSpec(kind="last", event=ORDER_EVENT, fixed_key="seg_last_order_at")
BUILTIN_COMPUTED_TRAITS = (ORDERS_COUNT, ORDERS_REVENUE, FIRST_ORDER, LAST_ORDER)
STAGES = ("new", "active", "at_risk", "churned", "reactivated")


@dataclass(frozen=True)
class LifecycleThresholds:
    """Days that separate the stages; configurable in the service's settings."""

    new_days: int = 30
    active_days: int = 90
    churn_days: int = 180
    dependencies: frozenset[str] = field(
        default=frozenset({f"computed:{FIRST_ORDER.key}", f"computed:{LAST_ORDER.key}"})
    )


def lifecycle_stage(
    *,
    first_order: datetime | None,
    last_order: datetime | None,
    previous: str | None,
    now: datetime,
    thresholds: LifecycleThresholds,
) -> str | None:
    """Return the stage of a customer, or None for someone who never ordered."""
    if last_order is None:
        return None
    first_order = first_order or last_order
    since_last = now - last_order
    if since_last > timedelta(days=thresholds.churn_days):
        return "churned"
    if since_last > timedelta(days=thresholds.active_days):
        return "at_risk"
    if now - first_order <= timedelta(days=thresholds.new_days):
        return "new"
    if previous in {"churned", "reactivated"}:
        return "reactivated"
    return "active"


def lifecycle_model(
    computed: Mapping[str, Any],
    previous: Mapping[str, Any] | None,
    now: datetime,
    thresholds: LifecycleThresholds,
) -> dict[str, Any] | None:
    """Return the lifecycle result kept for a profile (`{"stage": ...}`), or None."""
    previous_stage = previous.get("stage") if previous else None
    stage = lifecycle_stage(
        first_order=parse_instant(computed.get(FIRST_ORDER.key)),
        last_order=parse_instant(computed.get(LAST_ORDER.key)),
        previous=previous_stage,
        now=now,
        thresholds=thresholds,
    )
    if stage is None:
        return None
    if stage == previous_stage and previous is not None:
        return dict(previous)
    return {"stage": stage, "since": now.isoformat()}
