"""The profile store: orders, one row per order id, on the profile that holds its first event."""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from datetime import datetime
from decimal import Decimal
from typing import Any

import sqlalchemy as sa
from cdp_common.jobs import job_body, jobs_table
from sqlalchemy.dialects import postgresql
from sqlalchemy.ext.asyncio import AsyncSession

from cdp_profile.domain.computed import StoredEvent
from cdp_profile.domain.orders import ORDER_EVENTS, Order, order_of
from cdp_profile.store.tables import StoredProfile, _profile_of, events, metadata, profiles

orders = sa.Table(
    "orders",
    metadata,
    sa.Column("order_id", sa.Text, primary_key=True),
    sa.Column("profile_id", sa.Text, nullable=False),
    sa.Column("state", sa.Text, nullable=False),
    sa.Column("currency", sa.Text, nullable=False),
    sa.Column("total", sa.Numeric),
    sa.Column("refunded", sa.Numeric, nullable=False),
    sa.Column("net", sa.Numeric, nullable=False),
    sa.Column("value", sa.Numeric),
    sa.Column("reporting_currency", sa.Text, nullable=False),
    sa.Column("coupon", sa.Text),
    sa.Column("payment_method", sa.Text),
    sa.Column("lines", postgresql.JSONB, nullable=False),
    sa.Column("detail", postgresql.JSONB, nullable=False),
    sa.Column("sources", postgresql.ARRAY(sa.Text), nullable=False),
    sa.Column("first_event_id", sa.Text, nullable=False),
    sa.Column("ordered_at", sa.DateTime(timezone=True), nullable=False),
    sa.Column("updated_at", sa.DateTime(timezone=True), nullable=False),
    sa.Column("recorded_at", sa.DateTime(timezone=True), nullable=False, server_default=sa.func.now()),
)


@dataclass(frozen=True)
class StoredOrder:
    """An order, the profile it counts on, and its net in the reporting currency (None: no rate)."""

    profile_id: str
    order: Order
    value: Decimal | None
    reporting_currency: str


def _stored(row: Any) -> StoredOrder:
    detail = dict(row.detail)
    return StoredOrder(
        profile_id=row.profile_id,
        order=order_of(
            order_id=row.order_id,
            first_event_id=row.first_event_id,
            ordered_at=row.ordered_at,
            updated_at=row.updated_at,
            currency=detail.get("currency"),
            total=row.total,
            refunded=row.refunded,
            lines=row.lines,
            coupon=row.coupon,
            payment_method=row.payment_method,
            sources=list(row.sources),
            detail=detail,
        ),
        value=row.value,
        reporting_currency=row.reporting_currency,
    )


def _row(stored: StoredOrder) -> dict[str, Any]:
    order = stored.order
    return {
        "order_id": order.order_id,
        "profile_id": stored.profile_id,
        "state": order.state,
        "currency": order.currency_code,
        "total": order.gross,
        "refunded": order.refunded,
        "net": order.net,
        "value": stored.value,
        "reporting_currency": stored.reporting_currency,
        "coupon": order.coupon,
        "payment_method": order.payment_method,
        "lines": [line.to_json() for line in order.lines],
        "detail": {**order.to_json(), "currency": order.currency},
        "sources": list(order.sources),
        "first_event_id": order.first_event_id,
        "ordered_at": order.ordered_at,
        "updated_at": order.updated_at,
    }


async def orders_by_id(*, session: AsyncSession, order_ids: Sequence[str]) -> dict[str, StoredOrder]:
    """Return the orders of these ids that exist."""
    if not order_ids:
        return {}
    rows = await session.execute(sa.select(orders).where(orders.c.order_id.in_(sorted(set(order_ids)))))
    return {row.order_id: _stored(row) for row in rows}


async def save_orders(*, session: AsyncSession, saved: Sequence[StoredOrder]) -> None:
    """Insert or replace orders."""
    if not saved:
        return
    statement = postgresql.insert(orders)
    columns = {
        c.name: statement.excluded[c.name] for c in orders.c if c.name not in ("order_id", "recorded_at")
    }
    await session.execute(
        statement.on_conflict_do_update(index_elements=[orders.c.order_id], set_=columns),
        [_row(stored) for stored in saved],
    )


async def orders_of_profile(*, session: AsyncSession, profile_id: str) -> list[StoredOrder]:
    """Return every order that counts on a profile."""
    rows = await session.execute(sa.select(orders).where(orders.c.profile_id == profile_id))
    return [_stored(row) for row in rows]


async def list_orders(
    *, session: AsyncSession, profile_id: str, after: tuple[datetime, str] | None, limit: int
) -> list[StoredOrder]:
    """Return a page of a profile's orders, newest first."""
    query = sa.select(orders).where(orders.c.profile_id == profile_id)
    if after is not None:
        query = query.where(sa.tuple_(orders.c.ordered_at, orders.c.order_id) < sa.tuple_(*after))
    rows = await session.execute(
        query.order_by(orders.c.ordered_at.desc(), orders.c.order_id.desc()).limit(limit)
    )
    return [_stored(row) for row in rows]


async def orders_without_rate(
    *,
    session: AsyncSession,
    currencies: Sequence[str] | None,
    after: tuple[str, datetime, str] | None,
    limit: int,
) -> list[StoredOrder]:
    """Return the next orders kept without a rate in these currencies (None: any), by currency, time
    and id."""
    key = sa.tuple_(orders.c.currency, orders.c.ordered_at, orders.c.order_id)
    query = sa.select(orders).where(orders.c.value.is_(None))
    if currencies is not None:
        query = query.where(orders.c.currency.in_(list(currencies)))
    if after is not None:
        query = query.where(key > sa.tuple_(*after))
    rows = await session.execute(query.order_by(*key.clauses).limit(limit))
    return [_stored(row) for row in rows]


async def queued_job(*, session: AsyncSession, kind: str, params: dict[str, Any]) -> dict[str, Any] | None:
    """Return a job of this kind and these params that has not started yet, if any."""
    row = (
        await session.execute(
            sa.select(jobs_table)
            .where(
                jobs_table.c.kind == kind,
                jobs_table.c.state == "queued",
                jobs_table.c.params == sa.cast(params, postgresql.JSONB),
            )
            .limit(1)
        )
    ).first()
    return None if row is None else job_body(row)


async def move_orders(*, session: AsyncSession, absorbed_id: str, survivor_id: str) -> None:
    """Move a merged-away profile's orders to its survivor."""
    await session.execute(
        orders.update().where(orders.c.profile_id == absorbed_id).values(profile_id=survivor_id)
    )


async def follow_first_events(*, session: AsyncSession, profile_ids: Sequence[str]) -> list[str]:
    """Put these profiles' orders back on the profile that holds each one's first event (after a
    split); return the ids of the orders that moved."""
    moved = await session.execute(
        orders.update()
        .where(
            orders.c.profile_id.in_(list(profile_ids)),
            events.c.event_id == orders.c.first_event_id,
            events.c.profile_id != orders.c.profile_id,
        )
        .values(profile_id=events.c.profile_id)
        .returning(orders.c.order_id)
    )
    return sorted(moved.scalars())


# --- profiles whose built-in state predates orders ------------------------------------------------

# Keys only the built-in state of before orders had (it counted order events instead).
_FORMER_KEYS = ["orders", "gross", "refunds", "order_categories"]


async def profiles_counting_events(*, session: AsyncSession, after: str, high: str) -> list[StoredProfile]:
    """Lock and return the live profiles in (after, high] whose state still counts order events."""
    rows = await session.execute(
        sa.select(profiles)
        .where(
            profiles.c.id > after,
            profiles.c.id <= high,
            profiles.c.status == "active",
            profiles.c.aggregates.has_any(sa.cast(_FORMER_KEYS, postgresql.ARRAY(sa.Text))),
        )
        .order_by(profiles.c.id)
        .with_for_update()
    )
    return [_profile_of(row) for row in rows]


async def order_events_of_profile(*, session: AsyncSession, profile_id: str) -> list[tuple[StoredEvent, str]]:
    """Return a profile's order events in the order they arrived, each with its source."""
    rows = await session.execute(
        sa.select(
            events.c.event_id,
            events.c.type,
            events.c.name,
            events.c.timestamp,
            events.c.properties,
            events.c.source_id,
        )
        .where(
            events.c.profile_id == profile_id,
            events.c.type == "track",
            events.c.name.in_(sorted(ORDER_EVENTS)),
        )
        .order_by(events.c.seq)
    )
    return [(StoredEvent(r.event_id, r.type, r.name, r.timestamp, r.properties), r.source_id) for r in rows]
