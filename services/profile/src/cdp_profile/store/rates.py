"""The profile store: daily reference exchange rates and the value of an amount in the reporting
currency on a day (the latest earlier day with rates when that day has none)."""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from datetime import date
from decimal import Decimal

import sqlalchemy as sa
from cdp_common.db import forget_for_transaction, once_per_transaction
from sqlalchemy.dialects import postgresql
from sqlalchemy.dialects.postgresql import insert
from sqlalchemy.ext.asyncio import AsyncSession

from cdp_profile.domain.money import DayRates, conversion_factor, in_reporting
from cdp_profile.store.tables import metadata

exchange_rates = sa.Table(
    "exchange_rates",
    metadata,
    sa.Column("currency", sa.Text, primary_key=True),
    sa.Column("day", sa.Date, primary_key=True),
    sa.Column("base", sa.Text, primary_key=True),
    sa.Column("rate", sa.Numeric, nullable=False),
    sa.Column("loaded_at", sa.DateTime(timezone=True), nullable=False, server_default=sa.func.now()),
)


@dataclass(frozen=True)
class RateInEffect:
    """A currency's rate on its latest day with rates: against the day's base, and in the reporting currency."""

    day: date
    base: str
    rate: Decimal
    value_of_one: Decimal


# What a transaction looked up, by (currency, reporting currency, day). Kept per transaction, not
# per process, so rates loaded on one replica count on every replica at once.
LOOKED_UP = "exchange_rates_looked_up"
LookedUp = dict[tuple[str, str, date], RateInEffect | None]


async def _looked_up(session: AsyncSession) -> LookedUp:
    async def empty() -> LookedUp:
        return {}

    return await once_per_transaction(session, LOOKED_UP, empty)


async def save_rates(*, session: AsyncSession, day: date, base: str, rates: Mapping[str, Decimal]) -> int:
    """Store one day's rates against a base (the base itself at 1); return how many were stored."""
    return await save_days_of_rates(session=session, days=[(day, base, rates)])


async def save_days_of_rates(
    *, session: AsyncSession, days: Sequence[tuple[date, str, Mapping[str, Decimal]]]
) -> int:
    """Store days of rates, each against its base (at 1), in one statement; return how many were stored."""
    # One row per key, the later day of a list winning: a statement may not change a row twice.
    rows = {(c, day, base): r for day, base, rates in days for c, r in {**rates, base: Decimal(1)}.items()}
    loaded = (
        sa.func.unnest(
            sa.cast([c for c, _, _ in rows], postgresql.ARRAY(sa.Text)),
            sa.cast([d for _, d, _ in rows], postgresql.ARRAY(sa.Date)),
            sa.cast([b for _, _, b in rows], postgresql.ARRAY(sa.Text)),
            sa.cast(list(rows.values()), postgresql.ARRAY(sa.Numeric)),
        )
        .table_valued("currency", "day", "base", "rate")
        .render_derived(name="loaded")
    )
    statement = insert(exchange_rates).from_select(
        ["currency", "day", "base", "rate"],
        sa.select(loaded.c.currency, loaded.c.day, loaded.c.base, loaded.c.rate),
    )
    await session.execute(
        statement.on_conflict_do_update(
            index_elements=["currency", "day", "base"],
            set_={"rate": statement.excluded.rate, "loaded_at": sa.func.now()},
        )
    )
    forget_for_transaction(session, LOOKED_UP)
    return len(rows)


async def rate_in_effect(
    *, session: AsyncSession, currency: str, day: date, reporting_currency: str
) -> RateInEffect | None:
    """Return a currency's rate in effect on a day (its latest day up to then with both rates), or None."""
    known, key = await _looked_up(session), (currency, reporting_currency, day)
    if key in known:
        return known[key]
    source, target = exchange_rates.alias("source"), exchange_rates.alias("target")
    row = (
        await session.execute(
            sa.select(source.c.day, source.c.base, source.c.rate, target.c.rate.label("target_rate"))
            .join(
                target,
                sa.and_(
                    target.c.currency == reporting_currency,
                    target.c.day == source.c.day,
                    target.c.base == source.c.base,
                ),
            )
            .where(source.c.currency == currency, source.c.day <= day)
            .order_by(source.c.day.desc(), source.c.base)
            .limit(1)
        )
    ).first()
    found = None
    if row is not None:
        rates = DayRates(
            day=row.day, base=row.base, rates={currency: row.rate, reporting_currency: row.target_rate}
        )
        factor = conversion_factor(rates, currency=currency, reporting_currency=reporting_currency)
        if factor is not None:
            found = RateInEffect(day=row.day, base=row.base, rate=row.rate, value_of_one=factor)
    known[key] = found
    return found


async def value_in_reporting(
    *, session: AsyncSession, amount: Decimal, currency: str, day: date, reporting_currency: str
) -> Decimal | None:
    """Return an amount in the reporting currency at its day's rate; None when there is no rate."""
    if currency == reporting_currency:
        return in_reporting(amount, Decimal(1), reporting_currency=reporting_currency)
    found = await rate_in_effect(
        session=session, currency=currency, day=day, reporting_currency=reporting_currency
    )
    return in_reporting(
        amount, None if found is None else found.value_of_one, reporting_currency=reporting_currency
    )
