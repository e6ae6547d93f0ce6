"""Money in the reporting currency: an amount in any currency converted at the reference rates of
its day, through the rates' base currency (cross rates), rounded to the reporting currency's minor
units, never at 1 when a rate is missing."""

from __future__ import annotations

from dataclasses import dataclass
from datetime import date
from decimal import ROUND_HALF_EVEN, Decimal

# ISO 4217 minor units of the currencies that do not count in hundredths; every other has 2.
MINOR_UNITS = {
    **dict.fromkeys(
        ("BIF", "CLP", "DJF", "GNF", "ISK", "JPY", "KMF", "KRW", "PYG", "RWF", "UGX", "UYI", "VND", "VUV"),
        0,
    ),
    **dict.fromkeys(("XAF", "XOF", "XPF"), 0),
    **dict.fromkeys(("BHD", "IQD", "JOD", "KWD", "LYD", "OMR", "TND"), 3),
    **dict.fromkeys(("CLF", "UYW"), 4),
}


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


def smallest_unit(currency: str) -> Decimal:
    """Return the smallest amount of a currency (0.01 for most, 1 for JPY, 0.001 for KWD)."""
    return Decimal(1).scaleb(-MINOR_UNITS.get(currency, 2))


def in_reporting(amount: Decimal, factor: Decimal | None, *, reporting_currency: str) -> Decimal | None:
    """Return an amount converted with a factor, rounded to the reporting currency's minor units."""
    if factor is None:
        return None
    return (amount * factor).quantize(smallest_unit(reporting_currency), rounding=ROUND_HALF_EVEN)
