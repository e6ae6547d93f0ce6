"""Money in the reporting currency: an amount in any currency converted at the reference rates of
its day, through the rates' base currency (cross rates), never at 1 when a rate is missing."""

from __future__ import annotations

from dataclasses import dataclass
from datetime import date
from decimal import ROUND_HALF_EVEN, Decimal

CENT = Decimal("0.01")


@dataclass(frozen=True)
class DayRates:
    """The reference rates of one day: units of each currency for one unit of the base."""

    day: date
    base: str
    rates: dict[str, Decimal]

    def of(self, currency: str) -> Decimal | None:
        """Return the units of `currency` for one unit of the base, the base itself being 1."""
        if currency == self.base:
            return Decimal(1)
        return self.rates.get(currency)


def conversion_factor(rates: DayRates, *, currency: str, reporting_currency: str) -> Decimal | None:
    """Return what one unit of `currency` is worth in the reporting currency, None without both rates."""
    if currency == reporting_currency:
        return Decimal(1)
    source, target = rates.of(currency), rates.of(reporting_currency)
    if source is None or target is None:
        return None
    return target / source


def in_reporting(amount: Decimal, factor: Decimal | None) -> Decimal | None:
    """Return an amount converted with a factor and rounded to cents, None without a factor."""
    if factor is None:
        return None
    return (amount * factor).quantize(CENT, rounding=ROUND_HALF_EVEN)
