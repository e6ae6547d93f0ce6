"""Lifecycle stages (new, active, at risk, churned, reactivated) from a profile's order aggregates.

Inputs are computed traits that profile maintains: its built-in `last_order_date`,
and two counts of `Order Completed` that segment defines, all time and within the
last `new_days` (profile keeps windowed counts current as time passes). A customer
is new while every order is at most `new_days` old; active while the last order is
at most `active_days` old; at risk up to `churn_days`; then churned. A churned
customer who orders again is reactivated, and stays so until the last order is
older than `active_days` again.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from datetime import datetime, timedelta
from typing import Any

from cdp_segment.domain.rules import ComputedTraitSpec, parse_instant

ORDER_EVENT = "Order Completed"
ORDERS_COUNT = ComputedTraitSpec(kind="count", event=ORDER_EVENT, fixed_key="seg_orders_count")
ORDERS_REVENUE = ComputedTraitSpec(
    kind="sum", event=ORDER_EVENT, property_path="properties.total", fixed_key="seg_orders_revenue"
)
# Profile's own computed traits, published with every change of a profile.
LAST_ORDER_DATE = "last_order_date"
FIRST_SEEN = "first_seen"
# Orders as profile records them (one per order id, whatever sent it, amended by refunds and
# cancellations) and their worth net of refunds in the reporting currency: the inputs of RFM,
# clusters and CLV, never the sum of order totals across currencies.
ORDERS = "orders"
NET_REVENUE = "net_revenue"
STAGES = ("new", "active", "at_risk", "churned", "reactivated")


def recent_orders_spec(new_days: int) -> ComputedTraitSpec:
    """Return the computed trait counting orders within the last `new_days`."""
    return ComputedTraitSpec(
        kind="count", event=ORDER_EVENT, window_days=new_days, fixed_key=f"seg_orders_last_{new_days}d"
    )


def builtin_computed_traits(new_days: int) -> tuple[ComputedTraitSpec, ...]:
    """Return the computed traits the built-in models need profile to maintain."""
    return (ORDERS_COUNT, ORDERS_REVENUE, recent_orders_spec(new_days))


@dataclass(frozen=True)
class LifecycleThresholds:
    """Days that separate the stages; configurable in the service's settings."""

    new_days: int = 30
    active_days: int = 90
    churn_days: int = 180

    @property
    def dependencies(self) -> frozenset[str]:
        """The computed traits whose change can move a profile's stage."""
        keys = (ORDERS_COUNT.key, LAST_ORDER_DATE, recent_orders_spec(self.new_days).key)
        return frozenset(f"computed:{key}" for key in keys)


def lifecycle_stage(
    *,
    orders: int,
    recent_orders: int,
    last_order: datetime | None,
    previous: str | None,
    now: datetime,
    thresholds: LifecycleThresholds,
) -> str | None:
    """Return the stage of a customer, or None for someone who never ordered."""
    if last_order is None or orders < 1:
        return None
    since_last = now - last_order
    if since_last > timedelta(days=thresholds.churn_days):
        return "churned"
    if since_last > timedelta(days=thresholds.active_days):
        return "at_risk"
    if recent_orders >= orders:
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
        orders=_count(computed.get(ORDERS_COUNT.key)),
        recent_orders=_count(computed.get(recent_orders_spec(thresholds.new_days).key)),
        last_order=parse_instant(computed.get(LAST_ORDER_DATE)),
        previous=previous_stage,
        now=now,
        thresholds=thresholds,
    )
    if stage is None:
        return None
    if stage == previous_stage and previous is not None:
        return dict(previous)
    return {"stage": stage, "since": now.isoformat()}


def _count(value: Any) -> int:
    return int(value) if isinstance(value, int | float) and not isinstance(value, bool) else 0
