"""Exchange rates as operators load them: one day's reference rates (or many days at once), and
the orders that had no rate valued once their currency's rates arrive."""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from datetime import date
from decimal import Decimal
from typing import Any

from sqlalchemy.ext.asyncio import AsyncSession

from cdp_profile import store
from cdp_profile.context import ProfileContext
from cdp_profile.orders import value_after_rates


@dataclass(frozen=True)
class DayOfRates:
    """One day's rates as loaded: units of each currency for one unit of the base."""

    day: date
    base: str
    rates: dict[str, Decimal]


async def load_rates(
    *, session: AsyncSession, context: ProfileContext, days: Sequence[DayOfRates]
) -> dict[str, Any]:
    """Store days of rates; return how many days and rates were stored."""
    stored = await store.save_days_of_rates(session=session, days=[(d.day, d.base, d.rates) for d in days])
    # Orders kept without a rate may have one now: a job values them.
    await value_after_rates(session=session, context=context, loaded=[(d.base, list(d.rates)) for d in days])
    return {"days": len(days), "rates": stored, "reporting_currency": context.reporting_currency}


async def rate_on(
    *, session: AsyncSession, context: ProfileContext, currency: str, day: date
) -> dict[str, Any] | None:
    """Return the rate in effect for a currency on a day, as loaded and in the reporting currency, or None."""
    found = await store.rate_in_effect(
        session=session, currency=currency, day=day, reporting_currency=context.reporting_currency
    )
    if found is None:
        return None
    return {
        "currency": currency,
        "date": day.isoformat(),
        "rates_date": found.day.isoformat(),
        "base": found.base,
        "rate": float(found.rate),
        "reporting_currency": context.reporting_currency,
        "value_of_one": float(found.value_of_one),
    }
