"""One order is one order: the order fold and the figures a profile derives from its orders."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta
from decimal import Decimal
from itertools import count
from typing import Any

from cdp_profile.domain.computed import StoredEvent, book_order, combine_builtin, derive_builtin, fold_builtin
from cdp_profile.domain.orders import Order, amend, entry_of, published_fields

T = datetime(2026, 3, 1, 10, tzinfo=UTC)
_n = count(1)

TEA = {"sku": "TEA", "name": "Assam", "category": "Tea", "price": 70, "quantity": 1}
CUP = {"sku": "CUP", "name": "Cup", "category": "Kitchen", "price": 15, "quantity": 2}


def order_event(name: str, *, minutes: float = 0, **properties: Any) -> StoredEvent:
    return StoredEvent(
        event_id=f"e{next(_n)}",
        type="track",
        name=name,
        timestamp=T + timedelta(minutes=minutes),
        properties={"order_id": "o-1", **properties},
    )


def fold(*steps: tuple[str, StoredEvent]) -> Order:
    order: Order | None = None
    for source, event in steps:
        order = amend(order, event, source_id=source)
    assert order is not None
    return order


def completed(**extra: Any) -> StoredEvent:
    return order_event("Order Completed", total=100, currency="EUR", products=[TEA, CUP], **extra)


def test_the_same_order_from_web_and_pos_is_one_order_and_the_later_one_only_completes_it() -> None:
    web = completed()
    pos = order_event(
        "Order Completed", minutes=1, total=120, currency="EUR", coupon="SPRING", products=[TEA]
    )
    order = fold(("web", web), ("pos", pos))
    assert order.total == Decimal(100)
    assert [line.sku for line in order.lines] == ["TEA", "CUP"]
    assert order.coupon == "SPRING"
    assert order.sources == ("web", "pos")
    assert order.first_event_id == web.event_id
    assert (order.state, order.net) == ("completed", Decimal(100))


def test_a_refund_by_line_leaves_the_rest_and_counts_once_whoever_sends_it() -> None:
    refund = {"total": 30, "currency": "EUR", "products": [{**CUP, "product_id": "CUP"}]}
    order = fold(
        ("web", completed()),
        ("pos", order_event("Order Refunded", minutes=5, **refund)),
        ("web", order_event("Order Refunded", minutes=6, **refund)),
    )
    assert (order.state, order.net, order.refunded) == ("partially_refunded", Decimal(70), Decimal(30))
    assert order.categories() == {"Tea": 1}
    lines = published_fields(order, Decimal(70))["lines"]
    assert [(line["sku"], line["returned"]) for line in lines] == [("TEA", 0), ("CUP", 2)]


def test_a_line_is_never_returned_more_often_than_bought() -> None:
    one_cup: dict[str, Any] = {"products": [{"sku": "CUP", "quantity": 1}]}
    order = fold(
        ("pos", completed()),
        ("pos", order_event("Order Refunded", refund_id="r1", **one_cup)),
        ("pos", order_event("Order Refunded", refund_id="r2", **one_cup)),
        ("pos", order_event("Order Refunded", refund_id="r3", **one_cup)),
    )
    # Priced by the order's lines: two cups of 15 came back, the third refund had nothing left.
    assert (order.refunded, order.net) == (Decimal(30), Decimal(70))


def test_whole_refunds_and_cancellations_leave_nothing_to_count() -> None:
    refunded = fold(("web", completed()), ("web", order_event("Order Refunded")))
    assert (refunded.state, refunded.net, refunded.categories()) == ("refunded", Decimal(0), {})
    cancelled = fold(("web", completed()), ("pos", order_event("Order Cancelled")))
    assert (cancelled.state, cancelled.net) == ("cancelled", Decimal(0))


def test_an_update_replaces_what_it_carries_and_a_refund_before_the_order_waits_for_it() -> None:
    updated = fold(("web", completed()), ("web", order_event("Order Updated", total=90, coupon="TEN")))
    assert (updated.total, updated.coupon, len(updated.lines)) == (Decimal(90), "TEN", 2)
    refund = order_event("Order Refunded", total=40)
    assert fold(("pos", refund)).state == "pending"
    late = order_event("Order Completed", minutes=-60, total=100, currency="EUR")
    early = fold(("pos", refund), ("web", late))
    assert (early.state, early.net) == ("partially_refunded", Decimal(60))
    assert early.ordered_at == late.timestamp


def profile_state(*orders: tuple[Order, Decimal | None]) -> dict[str, Any]:
    state = fold_builtin({}, order_event("Page Viewed"))
    for order, value in orders:
        state = book_order(state, order.order_id, entry_of(order, value))
    return state


def test_figures_follow_the_orders_and_leave_out_orders_without_a_rate() -> None:
    eur = fold(("web", completed(order_id="a")))
    usd = fold(
        ("web", order_event("Order Completed", order_id="b", total=50, currency="USD", products=[CUP]))
    )
    cancelled = fold(("web", completed(order_id="c")), ("web", order_event("Order Cancelled", order_id="c")))
    sek = fold(("pos", order_event("Order Completed", order_id="d", total=300, currency="SEK")))
    computed = derive_builtin(
        profile_state((eur, Decimal(100)), (usd, Decimal("45.50")), (cancelled, Decimal(0)), (sek, None))
    )
    assert computed["orders"] == 3
    assert computed["revenue"] == {"EUR": 100.0, "SEK": 300.0, "USD": 50.0}
    assert computed["average_order_value"] == {"EUR": 100.0, "SEK": 300.0, "USD": 50.0}
    assert computed["net_revenue"] == 145.5
    assert computed["rfm_monetary"] == 145.5
    assert computed["rfm_frequency"] == 3
    assert computed["favourite_category"] == "Kitchen"
    assert computed["last_order_date"] == "2026-03-01"


def test_amending_an_order_replaces_its_contribution_instead_of_adding_to_it() -> None:
    order = fold(("web", completed()))
    state = profile_state((order, Decimal(100)))
    again = fold(("web", completed()), ("pos", completed()))
    state = book_order(state, again.order_id, entry_of(again, Decimal(100)))
    assert (derive_builtin(state)["orders"], derive_builtin(state)["net_revenue"]) == (1, 100.0)
    refunded = amend(again, order_event("Order Refunded", total=30), source_id="pos")
    assert refunded is not None
    state = book_order(state, refunded.order_id, entry_of(refunded, Decimal(70)))
    computed = derive_builtin(state)
    assert (computed["orders"], computed["net_revenue"], computed["refunded_orders"]) == (1, 70.0, 1)


def test_two_profiles_orders_combine_into_the_merged_profile_s_figures() -> None:
    first = fold(("web", completed(order_id="a")))
    second = fold(("pos", completed(order_id="b", payment_method="cash")))
    left, right = profile_state((first, Decimal(100))), profile_state((second, Decimal(100)))
    both = profile_state((first, Decimal(100)), (second, Decimal(100)))
    both = fold_builtin(both, order_event("Page Viewed"))
    assert derive_builtin(combine_builtin(left, right)) == derive_builtin(both)
    assert derive_builtin(both)["orders"] == 2
