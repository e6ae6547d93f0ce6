"""Reports: a campaign's KPIs per variant and for the holdout, with uplift and ROI."""

from __future__ import annotations

from typing import Any

from sqlalchemy.ext.asyncio import AsyncSession

from cdp_campaign import store
from cdp_campaign.context import parsed_campaign
from cdp_campaign.domain.assignment import HOLDOUT
from cdp_campaign.domain.stats import GroupOutcome, uplift
from cdp_campaign.handlers import load_campaign

# --- the report ------------------------------------------------------------------------------------


async def campaign_report(*, session: AsyncSession, campaign_id: str) -> dict[str, Any]:
    """Return the KPIs per variant and for the holdout, with uplift and ROI."""
    row = await load_campaign(session=session, campaign_id=campaign_id)
    spec = parsed_campaign(row["spec"])
    groups: dict[str, dict[str, Any]] = {}

    def group(key: str) -> dict[str, Any]:
        return groups.setdefault(
            key,
            {
                "assigned": 0,
                "sent": 0,
                "delivered": 0,
                "bounced": 0,
                "failed": 0,
                "unknown": 0,
                "queued": 0,
                "in_flight": 0,
                "deferred": 0,
                "skipped": 0,
                "skipped_by_reason": {},
                "opened": 0,
                "opened_privacy_proxy": 0,
                "clicked": 0,
                "unsubscribed": 0,
                "converted": 0,
                "revenue": 0.0,
            },
        )

    for item in await store.campaign_report_rows(session=session, campaign_id=campaign_id):
        g = group(item["variant"])
        if "status" in item:
            status, n = item["status"], item["count"]
            g["assigned"] += n
            if status in ("sent", "unknown"):
                g["sent"] += n
            if status == "sent":
                g["delivered"] += n
            if status in ("bounced", "failed", "unknown", "queued", "deferred", "skipped"):
                g[status] += n
            if status == "handing_over":
                g["in_flight"] += n
            if status == "skipped":
                g["skipped_by_reason"][item["reason"]] = g["skipped_by_reason"].get(item["reason"], 0) + n
        else:
            g[item["engagement"]] = item["count"]
            if item["engagement"] == "converted":
                g["revenue"] = item["revenue"]
    for g in groups.values():
        g["conversion_rate"] = g["converted"] / g["assigned"] if g["assigned"] else 0.0
        g["open_rate"] = g["opened"] / g["delivered"] if g["delivered"] else 0.0
        g["click_rate"] = g["clicked"] / g["delivered"] if g["delivered"] else 0.0
    holdout = groups.get(HOLDOUT, group(HOLDOUT))
    treated = [g for k, g in groups.items() if k != HOLDOUT]
    treated_outcome = GroupOutcome(
        assigned=sum(g["assigned"] for g in treated),
        converted=sum(g["converted"] for g in treated),
        revenue=sum(g["revenue"] for g in treated),
    )
    holdout_outcome = GroupOutcome(
        assigned=holdout["assigned"], converted=holdout["converted"], revenue=holdout["revenue"]
    )
    return {
        "campaign_id": campaign_id,
        "status": row["status"],
        "goal": None if spec.goal is None else spec.goal.model_dump(),
        "cost": spec.cost,
        "variants": {k: g for k, g in sorted(groups.items()) if k != HOLDOUT},
        "holdout": holdout,
        "uplift": uplift(treated=treated_outcome, holdout=holdout_outcome, cost=spec.cost),
    }
