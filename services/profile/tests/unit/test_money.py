"""Money in the reporting currency: cross rates through the base, rounding, and no rate at all."""

from __future__ import annotations

from datetime import date
from decimal import Decimal

from cdp_profile.domain.money import DayRates, conversion_factor, in_reporting, smallest_unit

# The ECB's euro reference rates of 5 January 2024.
ECB_DAY = DayRates(
    day=date(2024, 1, 5),
    base="EUR",
    rates={"USD": Decimal("1.0921"), "GBP": Decimal("0.8597"), "JPY": Decimal("158.08")},
)


def value(amount: str, currency: str, reporting_currency: str, rates: DayRates = ECB_DAY) -> Decimal | None:
    factor = conversion_factor(rates, currency=currency, reporting_currency=reporting_currency)
    return in_reporting(Decimal(amount), factor, reporting_currency=reporting_currency)


def test_an_amount_in_a_quoted_currency_is_converted_into_the_base() -> None:
    assert value("109.21", "USD", "EUR") == Decimal("100.00")


def test_two_quoted_currencies_convert_through_the_base() -> None:
    # 100 USD is 100 / 1.0921 EUR, which is that times 0.8597 GBP.
    assert value("100", "USD", "GBP") == Decimal("78.72")


def test_the_base_into_a_quoted_reporting_currency() -> None:
    assert value("10", "EUR", "USD") == Decimal("10.92")


def test_the_same_currency_is_the_amount_itself_even_without_rates() -> None:
    empty = DayRates(day=date(2024, 1, 5), base="EUR", rates={})
    assert value("12.34", "CHF", "CHF", empty) == Decimal("12.34")


def test_a_currency_without_a_rate_is_never_converted_at_one() -> None:
    assert conversion_factor(ECB_DAY, currency="CHF", reporting_currency="EUR") is None
    assert value("100", "CHF", "EUR") is None
    # Nor when it is the reporting currency that has no rate.
    assert value("100", "USD", "CHF") is None


def test_values_are_rounded_to_the_reporting_currencys_minor_units() -> None:
    # 100 USD in yen: 100 / 1.0921 * 158.08 = 14474.86…, and yen have no minor unit.
    assert value("100", "USD", "JPY") == Decimal("14475")
    # Half a cent goes to the even cent: a bank's rounding, no drift upwards over many orders.
    one_to_one = DayRates(day=date(2024, 1, 5), base="EUR", rates={"XTS": Decimal(1)})
    assert value("0.125", "XTS", "EUR", one_to_one) == Decimal("0.12")
    assert value("0.135", "XTS", "EUR", one_to_one) == Decimal("0.14")
    assert [smallest_unit(c) for c in ("EUR", "JPY", "KWD")] == [
        Decimal("0.01"),
        Decimal(1),
        Decimal("0.001"),
    ]
