"""Typed transactions and the Order Completed / Order Refunded events they become."""

from __future__ import annotations

from datetime import UTC, datetime
from typing import Any

import pytest
from cdp_ingest.domain.calls import Limits, build_event, event_id, partition_key
from cdp_ingest.domain.errors import CallError
from cdp_ingest.domain.transactions import parse_transaction, transaction_call

NOW = datetime(2026, 11, 20, 9, 0, tzinfo=UTC)


def store_sale(**changes: Any) -> dict[str, Any]:
    document: dict[str, Any] = {
        "order_id": "POS-1001",
        "customer": {"email": "Ada@Example.com", "phone": "+49 30 1234567"},
        "items": [{"sku": "TEA-1", "name": "Green tea", "category": "Tea", "price": 4.5, "quantity": 2}],
        "total": 9.0,
        "currency": "EUR",
        "channel": "store",
        "store_id": "berlin-1",
        "payment_method": "card",
        "time": "2026-11-19T17:30:00+01:00",
    }
    document.update(changes)
    return document


def test_a_store_purchase_becomes_an_order_completed_event() -> None:
    call = transaction_call(parse_transaction(store_sale()))
    event = build_event(call=call, call_type="track", source_id="src_pos", received_at=NOW, limits=Limits())
    assert event["event"] == "Order Completed"
    assert event["properties"]["order_id"] == "POS-1001"
    assert event["properties"]["total"] == 9.0
    assert event["properties"]["store_id"] == "berlin-1"
    assert event["properties"]["products"][0]["category"] == "Tea"
    assert event["timestamp"] == datetime(2026, 11, 19, 16, 30, tzinfo=UTC)
    assert event["context"]["traits"]["email"] == "Ada@Example.com"
    assert partition_key(event) == "email:ada@example.com"


def test_a_resent_transaction_has_the_same_envelope_id_and_a_refund_another() -> None:
    first = transaction_call(parse_transaction(store_sale()))
    again = transaction_call(parse_transaction(store_sale(total=9.0)))
    refund = transaction_call(parse_transaction(store_sale(kind="refund")))
    ids = {event_id(source_id="s", message_id=c["messageId"]) for c in (first, again)}
    assert len(ids) == 1
    assert event_id(source_id="s", message_id=refund["messageId"]) not in ids
    assert refund["event"] == "Order Refunded"


@pytest.mark.parametrize(
    ("changes", "field"),
    [
        ({"order_id": ""}, "order_id"),
        ({"customer": {}}, "customer"),
        ({"customer": {"email": "not-an-email"}}, "customer.email"),
        ({"currency": "eur"}, "currency"),
        ({"channel": "fax"}, "channel"),
        ({"store_id": None}, None),
        ({"total": "nine"}, "total"),
        ({"time": "2026-11-19T17:30:00"}, "time"),
        ({"items": [{"sku": "A", "price": 1, "quantity": 0}]}, "items.0.quantity"),
        ({"surprise": 1}, "surprise"),
    ],
)
def test_invalid_transactions_are_refused_with_the_field(changes: dict[str, Any], field: str | None) -> None:
    with pytest.raises(CallError) as caught:
        parse_transaction(store_sale(**changes))
    assert caught.value.code == "invalid_transaction"
    assert caught.value.field == field


def test_an_online_transaction_needs_no_store() -> None:
    call = transaction_call(
        parse_transaction(store_sale(channel="online", store_id=None, customer={"user_id": "u9"}))
    )
    assert call["userId"] == "u9"
    assert "store_id" not in call["properties"]
