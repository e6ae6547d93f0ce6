"""Exchange rates on the real PostgreSQL: an amount valued at the rate of its day, the latest earlier
day when its day has none, through the base when the reporting currency is not the base, and not
at all without a rate; a load is seen at once, also by a transaction that looked before."""

from __future__ import annotations

from datetime import date
from decimal import Decimal

import pytest
from cdp_common.db import transaction
from cdp_profile import store
from sqlalchemy.ext.asyncio import AsyncSession

from ..conftest import ProfileDb

pytestmark = pytest.mark.integration

FRIDAY, MONDAY = date(2024, 1, 5), date(2024, 1, 8)


async def load_ecb_days(session: AsyncSession) -> None:
    # The ECB's euro reference rates of two days (none published over the weekend between).
    await store.save_rates(
        session=session, day=FRIDAY, base="EUR", rates={"USD": Decimal("1.0921"), "GBP": Decimal("0.8597")}
    )
    await store.save_rates(session=session, day=MONDAY, base="EUR", rates={"USD": Decimal("1.0946")})


async def test_an_amount_is_valued_at_the_rate_of_its_day_or_the_latest_earlier_one(db: ProfileDb) -> None:
    async with transaction(db.sessions) as session:
        await load_ecb_days(session)

        async def eur(amount: str, currency: str, day: date) -> Decimal | None:
            return await store.value_in_reporting(
                session=session, amount=Decimal(amount), currency=currency, day=day, reporting_currency="EUR"
            )

        assert await eur("109.21", "USD", FRIDAY) == Decimal("100.00")
        # Sunday has no rates: Friday's stand.
        assert await eur("109.21", "USD", date(2024, 1, 7)) == Decimal("100.00")
        assert await eur("109.46", "USD", MONDAY) == Decimal("100.00")
        # No pound on Monday: Friday's pound stands.
        assert await eur("85.97", "GBP", MONDAY) == Decimal("100.00")
        # Before the first day, and a currency never loaded: no value, never the amount at 1.
        assert await eur("100", "USD", date(2024, 1, 4)) is None
        assert await eur("100", "CHF", MONDAY) is None
        assert await eur("12.50", "EUR", date(1990, 1, 1)) == Decimal("12.50")


async def test_a_reporting_currency_other_than_the_base_goes_through_the_base(db: ProfileDb) -> None:
    async with transaction(db.sessions) as session:
        await load_ecb_days(session)
        usd = await store.value_in_reporting(
            session=session, amount=Decimal(100), currency="GBP", day=FRIDAY, reporting_currency="USD"
        )
        # 100 GBP = 100 / 0.8597 EUR = that times 1.0921 USD.
        assert usd == Decimal("127.03")
        found = await store.rate_in_effect(
            session=session, currency="EUR", day=date(2024, 1, 9), reporting_currency="USD"
        )
        assert found is not None
        assert (found.value_of_one, found.day, found.base, found.rate) == (
            Decimal("1.0946"),
            MONDAY,
            "EUR",
            Decimal(1),
        )


async def test_rates_loaded_later_are_seen_by_the_transaction_that_found_none(db: ProfileDb) -> None:
    async with transaction(db.sessions) as session:
        missing = await store.value_in_reporting(
            session=session, amount=Decimal(100), currency="USD", day=FRIDAY, reporting_currency="EUR"
        )
        assert missing is None
        await load_ecb_days(session)
        found = await store.value_in_reporting(
            session=session, amount=Decimal("10.921"), currency="USD", day=FRIDAY, reporting_currency="EUR"
        )
        assert found == Decimal("10.00")
        # A rate loaded again for a day replaces the one before.
        await store.save_rates(session=session, day=FRIDAY, base="EUR", rates={"USD": Decimal("1.25")})
        assert await store.value_in_reporting(
            session=session, amount=Decimal(10), currency="USD", day=FRIDAY, reporting_currency="EUR"
        ) == Decimal("8.00")
    # Another transaction, as another replica would, reads what was committed.
    async with transaction(db.sessions) as session:
        assert await store.value_in_reporting(
            session=session, amount=Decimal(10), currency="USD", day=FRIDAY, reporting_currency="EUR"
        ) == Decimal("8.00")


async def test_days_are_stored_in_one_go_and_a_day_listed_twice_takes_its_later_rates(db: ProfileDb) -> None:
    days = [
        (FRIDAY, "EUR", {"USD": Decimal("1.0921"), "GBP": Decimal("0.8597")}),
        (MONDAY, "EUR", {"USD": Decimal("1.0946")}),
        (FRIDAY, "EUR", {"USD": Decimal("1.25")}),
    ]
    async with transaction(db.sessions) as session:
        # Friday: USD, GBP and the euro; Monday: USD and the euro.
        assert await store.save_days_of_rates(session=session, days=days) == 5
    async with transaction(db.sessions) as session:
        friday = await store.rate_in_effect(
            session=session, currency="USD", day=FRIDAY, reporting_currency="EUR"
        )
        pound = await store.rate_in_effect(
            session=session, currency="GBP", day=MONDAY, reporting_currency="EUR"
        )
    assert friday is not None
    assert friday.rate == Decimal("1.25")
    assert pound is not None
    assert (pound.day, pound.rate) == (FRIDAY, Decimal("0.8597"))
