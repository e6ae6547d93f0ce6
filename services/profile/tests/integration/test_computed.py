"""Computed traits on the real PostgreSQL: built-ins, user-defined with backfill, windows that age out, split."""

from __future__ import annotations

from datetime import timedelta
from typing import Any

import pytest
from cdp_common.db import transaction
from cdp_common.events import ProfileSplit, ProfileUpdated
from cdp_profile import handlers, store
from cdp_profile.domain.computed import Definition, PropertyFilter, fold_all
from cdp_profile.domain.identity import IdentifierKey
from cdp_profile.jobs import expire_windows

from ..conftest import T0, ProfileDb, tracking, uid

pytestmark = pytest.mark.integration


def order(user: str, total: float, *, days_ago: float, db: ProfileDb, **props: Any) -> Any:
    return tracking(
        user_id=user,
        event="Order Completed",
        at=db.clock.now - timedelta(days=days_ago),
        properties={"total": total, "currency": "EUR", **props},
    )


async def computed_of(db: ProfileDb, user: str) -> dict[str, Any]:
    async with transaction(db.sessions) as session:
        profile_id = await store.resolve_identifier(session=session, key=IdentifierKey("user_id", user))
        assert profile_id is not None
        profile = await store.load_profile(session=session, profile_id=profile_id)
        assert profile is not None
        return await handlers.served_computed(session=session, profile=profile)


async def define(db: ProfileDb, definition: Definition) -> dict[str, Any] | None:
    """Define a trait and run its backfill job to the end, as the service's job runner does."""
    async with transaction(db.sessions) as session:
        created = await handlers.define_computed_trait(session=session, definition=definition)
    if created is None:
        return None
    await db.run_job(created["job"]["id"])
    async with transaction(db.sessions) as session:
        return await store.get_definition(session=session, key=definition.key)


async def test_builtin_commerce_traits_net_of_refunds_per_currency(db: ProfileDb) -> None:
    user = uid()
    await db.resolve(
        order(
            user,
            100,
            days_ago=10,
            db=db,
            order_id="o1",
            payment_method="card",
            products=[{"category": "Games"}],
        ),
        order(
            user,
            50,
            days_ago=5,
            db=db,
            order_id="o2",
            payment_method="paypal",
            products=[{"category": "Books"}],
        ),
        order(
            user,
            30,
            days_ago=2,
            db=db,
            order_id="o3",
            payment_method="card",
            products=[{"category": "Games"}],
        ),
        tracking(
            user_id=user,
            event="Order Completed",
            properties={"order_id": "o4", "total": 20, "currency": "usd"},
        ),
        tracking(
            user_id=user,
            event="Order Refunded",
            properties={"order_id": "o1", "total": 40, "currency": "EUR"},
        ),
        tracking(user_id=user, type="page", name="Home"),
    )
    computed = await computed_of(db, user)
    assert computed["orders"] == 4
    assert computed["revenue"] == {"EUR": 140.0, "USD": 20.0}
    assert computed["average_order_value"] == {"EUR": round(140 / 3, 2), "USD": 20.0}
    assert computed["favourite_category"] == "Games"
    assert computed["preferred_payment_method"] == "card"
    assert computed["page_views"] == 1
    assert computed["rfm_frequency"] == 4
    assert computed["refunded_orders"] == 1
    assert computed["event_counts"]["Order Completed"] == 4


async def test_a_new_definition_is_backfilled_then_kept_current(db: ProfileDb) -> None:
    user, other = uid(), uid()
    await db.resolve(
        order(user, 10, days_ago=3, db=db, coupon="X"),
        order(user, 25, days_ago=2, db=db),
        order(other, 5, days_ago=1, db=db),
    )
    created = await define(
        db,
        Definition(
            key="big_order_total",
            aggregation="sum",
            event_name="Order Completed",
            property="total",
            filters=(PropertyFilter(property="total", op="gte", value=10),),
        ),
    )
    assert created is not None
    assert created["backfilled_profiles"] == 1
    assert (await computed_of(db, user))["big_order_total"] == 35.0
    assert "big_order_total" not in await computed_of(db, other)
    await db.resolve(order(user, 40, days_ago=0, db=db))
    assert (await computed_of(db, user))["big_order_total"] == 75.0
    update = [e for e in await db.published() if isinstance(e.data, ProfileUpdated)][-1]
    assert update.data.changed_computed_traits["big_order_total"] == 75.0
    # The backfill kept 35.0 as a state without publishing it; the profile's next change publishes
    # the trait for the first time, so its previous value is one nobody was told of.
    assert update.data.previous_computed_traits["big_order_total"] is None
    assert await define(db, Definition(key="big_order_total", aggregation="count")) is None


@pytest.mark.parametrize(
    ("aggregation", "expected"),
    [
        ("count", 3),
        ("avg", 20.0),
        ("min", 10),
        ("max", 30),
        ("first", "a"),
        ("last", "c"),
        ("most_frequent", "a"),
        ("unique", ["a", "c"]),
    ],
)
async def test_every_aggregation(db: ProfileDb, aggregation: str, expected: Any) -> None:
    user = uid()
    prop = "total" if aggregation in ("avg", "min", "max") else "sku"
    await db.resolve(
        order(user, 10, days_ago=3, db=db, sku="a"),
        order(user, 20, days_ago=2, db=db, sku="a"),
        order(user, 30, days_ago=1, db=db, sku="c"),
    )
    await define(
        db,
        Definition(key="t", aggregation=aggregation, event_name="Order Completed", property=prop),  # type: ignore[arg-type]
    )
    assert (await computed_of(db, user))["t"] == expected


async def test_windowed_trait_changes_as_events_age_out_with_no_new_event(db: ProfileDb) -> None:
    user = uid()
    await define(
        db, Definition(key="orders_7d", aggregation="count", event_name="Order Completed", window_days=7)
    )
    await db.resolve(order(user, 10, days_ago=6, db=db), order(user, 10, days_ago=2, db=db))
    assert (await computed_of(db, user))["orders_7d"] == 2

    async def expire() -> int:
        async with db.sessions() as session:
            return await expire_windows(session=session, context=db.context)

    assert await expire() == 0
    db.clock.advance(days=1, hours=1)
    assert await expire() == 1
    assert (await computed_of(db, user))["orders_7d"] == 1
    update = [e for e in await db.published() if isinstance(e.data, ProfileUpdated)][-1]
    assert update.data.event_id is None
    assert update.data.changed_computed_traits == {"orders_7d": 1}
    db.clock.advance(days=5)
    assert await expire() == 1
    assert (await computed_of(db, user))["orders_7d"] == 0
    assert await expire() == 0


async def test_merge_then_split_rederives_both_profiles_from_their_own_events(db: ProfileDb) -> None:
    anon, user = uid("a"), uid()
    await define(db, Definition(key="views", aggregation="count", event_type="page"))
    browsing, customer = await db.resolve(
        tracking(anonymous_id=anon, type="page", name="Home", context_traits={"colour": "red"}),
        tracking(user_id=user, event="Order Completed", properties={"total": 9, "currency": "EUR"}),
    )
    assert customer is not None
    assert browsing is not None
    merge_event = tracking(user_id=user, anonymous_id=anon, context_traits={"plan": "pro"})
    [survivor] = await db.resolve(merge_event)
    assert survivor == customer
    merged = await computed_of(db, user)
    assert merged["views"] == 1
    assert merged["orders"] == 1
    async with transaction(db.sessions) as session:
        [entry] = await store.ledger_of(session=session, profile_ids=[customer])
        result = await handlers.split_merge(session=session, context=db.context, merge_id=entry["merge_id"])
    assert result["restored_profile_id"] == browsing
    async with transaction(db.sessions) as session:
        restored = await store.load_profile(session=session, profile_id=browsing)
        kept = await store.load_profile(session=session, profile_id=customer)
        ledger = await store.ledger_of(session=session, profile_ids=[customer])
        with pytest.raises(handlers.SplitRefused):
            await handlers.split_merge(session=session, context=db.context, merge_id=entry["merge_id"])
    assert restored is not None
    assert kept is not None
    assert restored.status == "active"
    assert restored.identifiers == [IdentifierKey("anonymous_id", anon)]
    assert {name: t.value for name, t in restored.traits.items()} == {"colour": "red"}
    assert restored.computed["views"] == 1
    assert restored.computed["orders"] == 0
    assert {name: t.value for name, t in kept.traits.items()} == {"plan": "pro"}
    assert kept.computed["views"] == 0
    assert kept.computed["orders"] == 1
    assert [e["kind"] for e in ledger] == ["merge", "split"]
    splits = [e for e in await db.published() if isinstance(e.data, ProfileSplit)]
    assert sorted(e.subject for e in splits) == sorted([browsing, customer])


async def test_a_split_sticks_until_an_operator_merges_the_two_again(db: ProfileDb) -> None:
    anon, user = uid("a"), uid()
    browsing, customer = await db.resolve(tracking(anonymous_id=anon), tracking(user_id=user))
    assert browsing is not None
    assert customer is not None
    await db.resolve(tracking(user_id=user, anonymous_id=anon))
    async with transaction(db.sessions) as session:
        [entry] = await store.ledger_of(session=session, profile_ids=[customer])
        await handlers.split_merge(session=session, context=db.context, merge_id=entry["merge_id"])
    # The same device signing in again does not undo the operator's split: the event goes to
    # the customer by the more trusted identifier, and the device's id stays where it was.
    again = await db.resolve(
        tracking(user_id=user, anonymous_id=anon), tracking(anonymous_id=anon), tracking(user_id=user)
    )
    assert again == [customer, browsing, customer]
    async with transaction(db.sessions) as session:
        ledger = await store.ledger_of(session=session, profile_ids=[customer, browsing])
        device = await store.load_profile(session=session, profile_id=browsing)
    assert [e["kind"] for e in ledger] == ["merge", "split"]
    assert device is not None
    assert device.status == "active"
    assert device.identifiers == [IdentifierKey("anonymous_id", anon)]
    async with transaction(db.sessions) as session:
        merged = await handlers.merge_profiles(
            session=session, context=db.context, profile_ids=[browsing, customer], rule="operator", reason={}
        )
    assert merged == {"profile_id": customer, "absorbed_profile_ids": [browsing]}
    [after] = await db.resolve(tracking(anonymous_id=anon))
    assert after == customer


async def test_a_count_backfilled_in_sql_holds_the_state_the_folds_reach(db: ProfileDb) -> None:
    user = uid()
    same_moment = T0 + timedelta(days=1, hours=-2)
    await db.resolve(
        tracking(user_id=user, event="Product Viewed", at=same_moment, event_id=f"b-{user}"),
        tracking(user_id=user, event="Product Viewed", at=same_moment, event_id=f"B-{user}"),
        tracking(user_id=user, event="Product Viewed", at=T0 + timedelta(hours=3, microseconds=5)),
        tracking(user_id=user, event="Page Viewed", at=T0),
    )
    definition = Definition(key="viewed", aggregation="count", event_name="Product Viewed", window_days=30)
    await define(db, definition)
    async with transaction(db.sessions) as session:
        profile_id = await store.resolve_identifier(session=session, key=IdentifierKey("user_id", user))
        assert profile_id is not None
        states = await store.defined_states(session=session, profile_id=profile_id)
        stored_events = await store.events_for_fold(session=session, profile_id=profile_id)
    folded = fold_all(stored_events, definition, now=db.clock())
    assert states["viewed"] == folded
    assert folded["count"] == 3
    assert (await computed_of(db, user))["viewed"] == 3
