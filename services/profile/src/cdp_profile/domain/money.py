"""Money in the reporting currency: an amount in any currency converted at the reference rates of
its day, through the rates' base currency (cross rates), never at 1 when a rate is missing."""

from __future__ import annotations

import re
from dataclasses import dataclass
from datetime import date
from decimal import ROUND_HALF_EVEN, Decimal, InvalidOperation

CURRENCY = re.compile(r"^[A-Z]{3}$")
CENT = Decimal("0.01")
# Larger than any currency's units per unit of another (the Iranian rial is about 10**6 per euro).
MAX_RATE = Decimal("1e12")


class RateError(ValueError):
    """A rate or currency code that cannot be used."""


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


def currency_code(value: str) -> str:
    """Return an ISO 4217 code as given, or raise RateError."""
    if not CURRENCY.fullmatch(value):
        raise RateError(f"{value!r} is not a three-letter upper-case currency code")
    return value


def rate_value(value: object) -> Decimal:
    """Return a rate as a positive finite Decimal, or raise RateError."""
    if isinstance(value, bool) or not isinstance(value, int | float | str | Decimal):
        raise RateError(f"{value!r} is not a number")
    try:
        rate = Decimal(str(value))
    except InvalidOperation as exc:
        raise RateError(f"{value!r} is not a number") from exc
    if not rate.is_finite() or rate <= 0 or rate > MAX_RATE:
        raise RateError(f"{value!r} is not a positive finite number up to {MAX_RATE}")
    return rate


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
