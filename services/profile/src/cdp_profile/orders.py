"""Orders as resolution records them, in the transaction that resolves each order event.

An order event amends the one order its order id names (creating it on the first arrival), on the
profile that holds the order's first event: the order is recorded there even when a later event
of it comes attached to another profile (a POS sale on a loyalty card not linked yet). The
order's contribution to its profile's built-in state is replaced, so every figure follows the
amended order, and each change consumers can see goes out as `OrderRecorded` on
cdp.profiles.v1, after the profile's own change. Merges move orders with their profile; a split
puts each back on the profile that holds its first event.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, replace
from datetime import UTC, date, datetime
from decimal import Decimal
from typing import Any

from cdp_common.envelope import Envelope
from cdp_common.events import OrderLine, OrderRecorded, make_envelope
from cdp_common.jobs import Job, Step, submit_job
from cdp_common.outbox import add_to_outbox
from sqlalchemy.ext.asyncio import AsyncSession

from cdp_profile import store
from cdp_profile.changes import publish_update
from cdp_profile.context import SERVICE, ProfileContext
from cdp_profile.domain.computed import (
    ORDER_BOOK,
    Definition,
    StoredEvent,
    book_order,
    fold_builtin,
    refreshed_builtins,
)
from cdp_profile.domain.orders import Order, amend, entry_of, order_id_of, published_fields
from cdp_profile.metrics import ORDERS_RECORDED

# What an order's value in the reporting currency depends on: currency, day, net amount.
Valuation = tuple[str, date, Decimal]
OrderValues = dict[Valuation, Decimal | None]


def valuation_of(order: Order) -> Valuation:
    """Return what an order's value depends on."""
    return order.currency_code, order.ordered_at.astimezone(UTC).date(), order.net


@dataclass(frozen=True)
class OrderChange:
    """An order before and after one of its events."""

    before: store.StoredOrder | None
    after: store.StoredOrder
    event_id: str

    @property
    def seen(self) -> bool:
        """Whether consumers learn something new: the order is new or a published field changed."""
        if self.before is None:
            return True
        return published_fields(self.before.order, self.before.value) != published_fields(
            self.after.order, self.after.value
        )


def _kept_value(before: store.StoredOrder | None, order: Order, reporting_currency: str) -> bool:
    return (
        before is not None
        and before.reporting_currency == reporting_currency
        and valuation_of(before.order) == valuation_of(order)
    )


async def _value_of(*, session: AsyncSession, context: ProfileContext, order: Order) -> Decimal | None:
    currency, day, net = valuation_of(order)
    return await store.value_in_reporting(
        session=session, amount=net, currency=currency, day=day, reporting_currency=context.reporting_currency
    )


# --- one event at a time -----------------------------------------------------------------------


async def record_order(
    *,
    session: AsyncSession,
    context: ProfileContext,
    profile: store.StoredProfile,
    event: StoredEvent,
    source_id: str,
    definitions: Sequence[Definition],
) -> OrderChange | None:
    """Amend the order a newly stored event names and book it on its profile; None for no order event.

    When the order counts on another profile, that profile's change and the order's message are
    published here; otherwise the caller publishes the message after the profile's change.
    """
    order_id = order_id_of(event)
    if order_id is None:
        return None
    before = (await store.orders_by_id(session=session, order_ids=[order_id])).get(order_id)
    order = amend(before.order if before else None, event, source_id=source_id)
    assert order is not None
    if _kept_value(before, order, context.reporting_currency):
        assert before is not None
        value = before.value
    else:
        value = await _value_of(session=session, context=context, order=order)
    after = store.StoredOrder(
        profile_id=before.profile_id if before else profile.id,
        order=order,
        value=value,
        reporting_currency=context.reporting_currency,
    )
    await store.save_orders(session=session, saved=[after])
    change = OrderChange(before=before, after=after, event_id=event.event_id)
    if after.profile_id == profile.id:
        profile.aggregates = book_order(profile.aggregates, order_id, entry_of(order, value))
        return change
    version = await _rebook(session=session, context=context, stored=after, definitions=definitions)
    await publish_order(session=session, context=context, change=change, version=version)
    return change


async def _rebook(
    *,
    session: AsyncSession,
    context: ProfileContext,
    stored: store.StoredOrder,
    definitions: Sequence[Definition],
) -> int:
    """Replace an order's contribution on the profile it counts on; return that profile's version."""
    owner = (await store.lock_profiles(session=session, profile_ids=[stored.profile_id]))[stored.profile_id]
    order_id = stored.order.order_id
    entry = entry_of(stored.order, stored.value)
    if owner.aggregates.get(ORDER_BOOK, {}).get(order_id) == entry:
        return owner.version
    traits_now = {name: trait.value for name, trait in owner.traits.items()}
    computed_before = dict(owner.computed)
    owner.aggregates = book_order(owner.aggregates, order_id, entry)
    owner.computed = refreshed_builtins(owner.computed, owner.aggregates, definitions)
    return await publish_update(
        session=session,
        context=context,
        profile=owner,
        traits_before=traits_now,
        computed_before=computed_before,
    )


async def publish_order(
    *, session: AsyncSession, context: ProfileContext, change: OrderChange, version: int
) -> None:
    """Publish an order's change when consumers can see it, at its profile's version."""
    if change.seen:
        await add_to_outbox(
            session=session, topic=context.profiles_topic, envelope=order_message(change, version=version)
        )


def order_message(change: OrderChange, *, version: int) -> Envelope[Any]:
    """Return the message of an order as recorded or amended by an event."""
    return _order_envelope(
        change.after,
        version=version,
        event_id=change.event_id,
        message_id=f"order:{change.after.order.order_id}:{change.event_id}",
    )


def _order_envelope(
    stored: store.StoredOrder, *, version: int, event_id: str | None, message_id: str
) -> Envelope[Any]:
    fields = published_fields(stored.order, stored.value)
    ORDERS_RECORDED.labels(fields["state"]).inc()
    payload = OrderRecorded(
        profile_id=stored.profile_id,
        version=version,
        order_id=stored.order.order_id,
        event_id=event_id,
        reporting_currency=stored.reporting_currency,
        **{**fields, "lines": [OrderLine(**line) for line in fields["lines"]]},
    )
    return make_envelope(payload=payload, source=SERVICE, subject=stored.profile_id, id=message_id)


# --- a batch of events (resolution's view) -----------------------------------------------------


def order_ids_of(events: Sequence[StoredEvent]) -> list[str]:
    """Return the orders a stretch of events names."""
    return [order_id for event in events if (order_id := order_id_of(event)) is not None]


def order_elsewhere(known: dict[str, store.StoredOrder], event: StoredEvent, profile_id: str | None) -> bool:
    """Whether an event's order counts on a profile other than the one the event resolves to."""
    order_id = order_id_of(event)
    held = known.get(order_id) if order_id is not None else None
    return held is not None and held.profile_id != profile_id


async def value_ahead(
    *,
    session: AsyncSession,
    context: ProfileContext,
    known: dict[str, store.StoredOrder],
    values: OrderValues,
    event: StoredEvent,
    source_id: str,
) -> None:
    """Look up the value the event's order will have once amended, so the view can record it."""
    order_id = order_id_of(event)
    if order_id is None:
        return
    before = known.get(order_id)
    order = amend(before.order if before else None, event, source_id=source_id)
    assert order is not None
    key = valuation_of(order)
    if key not in values and not _kept_value(before, order, context.reporting_currency):
        values[key] = await _value_of(session=session, context=context, order=order)


def record_in_view(
    *,
    known: dict[str, store.StoredOrder],
    values: OrderValues,
    event: StoredEvent,
    source_id: str,
    profile: store.StoredProfile,
    reporting_currency: str,
) -> OrderChange | None:
    """Amend the event's order in the view and book it on the profile (its own, as the view checked)."""
    order_id = order_id_of(event)
    if order_id is None:
        return None
    before = known.get(order_id)
    order = amend(before.order if before else None, event, source_id=source_id)
    assert order is not None
    value = (
        before.value
        if before and _kept_value(before, order, reporting_currency)
        else values[valuation_of(order)]
    )
    after = store.StoredOrder(
        profile_id=profile.id, order=order, value=value, reporting_currency=reporting_currency
    )
    known[order_id] = after
    profile.aggregates = book_order(profile.aggregates, order_id, entry_of(order, value))
    return OrderChange(before=before, after=after, event_id=event.event_id)


# --- rates that came after their orders ------------------------------------------------------


async def value_orders_without_rate(
    *,
    session: AsyncSession,
    context: ProfileContext,
    currencies: Sequence[str] | None,
    after: tuple[str, datetime, str] | None,
    limit: int,
) -> tuple[int, tuple[str, datetime, str] | None]:
    """Value up to `limit` orders kept without a rate in these currencies (None: in any), now that
    rates may have come; each one valued counts on its profile again and is published. Return how
    many were valued and where to carry on (None when none is left)."""
    await store.serialise_writers(session=session)
    found = await store.orders_without_rate(session=session, currencies=currencies, after=after, limit=limit)
    definitions = (await store.load_configuration(session=session)).definitions
    valued = 0
    for stored in found:
        value = await _value_of(session=session, context=context, order=stored.order)
        if value is None:
            continue
        now = replace(stored, value=value, reporting_currency=context.reporting_currency)
        await store.save_orders(session=session, saved=[now])
        version = await _rebook(session=session, context=context, stored=now, definitions=definitions)
        envelope = _order_envelope(
            now,
            version=version,
            event_id=None,
            # Consumers take an id they saw as a redelivery: an order valued again, after an
            # amendment left it without a rate, goes out under its amendment's time.
            message_id=f"order:{stored.order.order_id}:valued:{stored.order.updated_at.isoformat()}",
        )
        await add_to_outbox(session=session, topic=context.profiles_topic, envelope=envelope)
        valued += 1
    if len(found) < limit:
        return valued, None
    last = found[-1]
    return valued, (last.order.currency_code, last.order.ordered_at, last.order.order_id)


# The job that values the orders kept without a rate once rates of their currencies are loaded.
VALUATION_JOB = "orders_valuation"


async def value_after_rates(
    *, session: AsyncSession, context: ProfileContext, loaded: Sequence[tuple[str, Sequence[str]]]
) -> dict[str, Any]:
    """Queue the valuation of the orders kept without a rate that rates just loaded may value; return
    the job (one already queued for the same currencies does).

    `loaded` holds each day's base and the currencies it gave rates for: rates against the reporting
    currency value those currencies; rates against another base that include the reporting
    currency may value any currency.
    """
    reporting = context.reporting_currency
    named: set[str] | None = set()
    for base, currencies in loaded:
        if base == reporting:
            named = None if named is None else named | set(currencies)
        elif reporting in currencies:
            named = None
        if named is None:
            break
    params = {"currencies": None if named is None else sorted(named)}
    queued = await store.queued_job(session=session, kind=VALUATION_JOB, params=params)
    return queued or await submit_job(session=session, kind=VALUATION_JOB, params=params)


class OrdersValuation:
    """Values the orders kept without a rate, a batch per step, in currency, time and id order."""

    def __init__(self, *, context: ProfileContext, batch_size: int = 500) -> None:
        self._context = context
        self._batch_size = batch_size

    async def plan(self, *, session: AsyncSession, job: Job) -> int | None:
        """Return nothing: how many orders a rate values is known once they are looked at."""
        return None

    async def step(self, *, session: AsyncSession, job: Job) -> Step:
        """Value the next batch, or finish when none is left."""
        cursor: dict[str, Any] = job.cursor or {"after": None, "valued": 0}
        after = cursor["after"]
        valued, last = await value_orders_without_rate(
            session=session,
            context=self._context,
            currencies=job.params.get("currencies"),
            after=None if after is None else (after[0], datetime.fromisoformat(after[1]), after[2]),
            limit=self._batch_size,
        )
        moved = {
            "after": None if last is None else [last[0], last[1].isoformat(), last[2]],
            "valued": cursor["valued"] + valued,
        }
        if last is None:
            return Step(
                cursor=moved, advanced=valued, finished=True, result={"orders_valued": moved["valued"]}
            )
        return Step(cursor=moved, advanced=valued)


# --- splits, reads -----------------------------------------------------------------------------


async def booked(*, session: AsyncSession, profile_id: str, aggregates: dict[str, Any]) -> dict[str, Any]:
    """Return a profile's built-in state with every order that counts on it booked."""
    for stored in await store.orders_of_profile(session=session, profile_id=profile_id):
        aggregates = book_order(aggregates, stored.order.order_id, entry_of(stored.order, stored.value))
    return aggregates


async def announce_orders(
    *,
    session: AsyncSession,
    context: ProfileContext,
    order_ids: Sequence[str],
    versions: dict[str, int],
    cause: str,
) -> None:
    """Publish orders as they stand (put back on another profile by a split, or built from events),
    on their profile's key."""
    for order_id, stored in (await store.orders_by_id(session=session, order_ids=order_ids)).items():
        envelope = _order_envelope(
            stored,
            version=versions[stored.profile_id],
            event_id=None,
            message_id=f"order:{order_id}:{cause}",
        )
        await add_to_outbox(session=session, topic=context.profiles_topic, envelope=envelope)


# --- orders of the events stored before orders existed ---------------------------------------

ORDERS_JOB = "orders_from_events"


class OrdersFromEvents:
    """Builds the orders of the events stored before orders existed, a batch of profiles per step.

    A live profile whose built-in state still counts order events gets its orders folded from its
    own order events in the order they arrived (an order another profile already holds stays
    there), its built-in state folded afresh, and its change and orders published. The migration
    that made orders queues this job when the event store holds order events; the cursor commits
    with each batch, and a step holds the writers' lock as the event flow does.
    """

    def __init__(self, *, context: ProfileContext, batch_size: int = 200) -> None:
        self._context = context
        self._batch_size = batch_size

    async def plan(self, *, session: AsyncSession, job: Job) -> int | None:
        """Return how many profiles the job goes through."""
        return await store.count_profiles(session=session)

    async def step(self, *, session: AsyncSession, job: Job) -> Step:
        """Rebuild the next batch of profiles, or finish when none is left."""
        cursor: dict[str, Any] = job.cursor or {"after": "", "rebuilt": 0}
        count, high = await store.next_profile_range(
            session=session, after=cursor["after"], limit=self._batch_size
        )
        if high is None:
            result = {"profiles_rebuilt": cursor["rebuilt"]}
            return Step(cursor=cursor, advanced=0, finished=True, total=job.done, result=result)
        await store.serialise_writers(session=session)
        definitions = (await store.load_configuration(session=session)).definitions
        found = await store.profiles_counting_events(session=session, after=cursor["after"], high=high)
        for profile in found:
            await _rebuild(session=session, context=self._context, profile=profile, definitions=definitions)
        return Step(cursor={"after": high, "rebuilt": cursor["rebuilt"] + len(found)}, advanced=count)


async def _rebuild(
    *,
    session: AsyncSession,
    context: ProfileContext,
    profile: store.StoredProfile,
    definitions: Sequence[Definition],
) -> None:
    """Fold a profile's orders from its own order events and its built-in state afresh; publish both."""
    folded: dict[str, Order] = {}
    for event, source_id in await store.order_events_of_profile(session=session, profile_id=profile.id):
        order_id = order_id_of(event)
        order = amend(folded.get(order_id) if order_id else None, event, source_id=source_id)
        if order is not None:
            folded[order.order_id] = order
    held = await store.orders_by_id(session=session, order_ids=list(folded))
    saved = [
        store.StoredOrder(
            profile_id=profile.id,
            order=order,
            value=await _value_of(session=session, context=context, order=order),
            reporting_currency=context.reporting_currency,
        )
        for order_id, order in folded.items()
        if order_id not in held or held[order_id].profile_id == profile.id
    ]
    await store.save_orders(session=session, saved=saved)
    aggregates: dict[str, Any] = {}
    for event in await store.events_for_fold(session=session, profile_id=profile.id):
        aggregates = fold_builtin(aggregates, event)
    traits_now = {name: trait.value for name, trait in profile.traits.items()}
    computed_before = dict(profile.computed)
    profile.aggregates = await booked(session=session, profile_id=profile.id, aggregates=aggregates)
    profile.computed = refreshed_builtins(profile.computed, profile.aggregates, definitions)
    version = await publish_update(
        session=session,
        context=context,
        profile=profile,
        traits_before=traits_now,
        computed_before=computed_before,
    )
    await announce_orders(
        session=session,
        context=context,
        order_ids=[s.order.order_id for s in saved],
        versions={profile.id: version},
        cause="from_events",
    )


def order_document(stored: store.StoredOrder) -> dict[str, Any]:
    """Return the API form of an order."""
    order = stored.order
    fields = published_fields(order, stored.value)
    return {
        "order_id": order.order_id,
        **fields,
        "time": order.ordered_at.isoformat(),
        "reporting_currency": stored.reporting_currency,
        # A currency without any rate leaves the order out of money figures until rates come.
        "rate_missing": stored.value is None,
        "payment_method": order.payment_method,
        "sources": list(order.sources),
        "first_event_id": order.first_event_id,
        "updated_at": order.updated_at.isoformat(),
    }
