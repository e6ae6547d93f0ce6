"""Money in the reporting currency: cross rates through the base, rounding, and no rate at all."""

from __future__ import annotations

from datetime import date
from decimal import Decimal

from cdp_profile.domain.money import (
    DayRates,
    conversion_factor,
    in_reporting,
)

ECB_DAY = DayRates(
    day=date(2024, 1, 5), base="EUR", rates={"USD": Decimal("1.0921"), "GBP": Decimal("0.8597")}
)


def test_an_amount_in_a_quoted_currency_is_converted_into_the_base() -> None:
    factor = conversion_factor(ECB_DAY, currency="USD", reporting_currency="EUR")
    assert in_reporting(Decimal("109.21"), factor) == Decimal("100.00")


def test_two_quoted_currencies_convert_through_the_base() -> None:
    factor = conversion_factor(ECB_DAY, currency="USD", reporting_currency="GBP")
    # 100 USD is 100 / 1.0921 EUR, which is that times 0.8597 GBP.
    assert in_reporting(Decimal(100), factor) == Decimal("78.72")


def test_the_base_into_a_quoted_reporting_currency() -> None:
    factor = conversion_factor(ECB_DAY, currency="EUR", reporting_currency="USD")
    assert in_reporting(Decimal("10"), factor) == Decimal("10.92")


def test_the_same_currency_is_the_amount_itself_even_without_rates() -> None:
    empty = DayRates(day=date(2024, 1, 5), base="EUR", rates={})
    assert in_reporting(
        Decimal("12.345"), conversion_factor(empty, currency="CHF", reporting_currency="CHF")
    ) == (Decimal("12.34"))


def test_a_currency_without_a_rate_is_never_converted_at_one() -> None:
    assert conversion_factor(ECB_DAY, currency="CHF", reporting_currency="EUR") is None
    assert in_reporting(Decimal(100), None) is None
