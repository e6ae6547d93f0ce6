"""Validation and enrichment of tracking calls, and the event documents they become."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta
from typing import Any

import orjson
import pytest
from cdp_common.events import TrackingEventReceived, decode_envelope
from cdp_ingest.domain.calls import Limits, build_event, event_id, merge_batch_defaults, partition_key
from cdp_ingest.domain.errors import CallError
from cdp_ingest.handlers import envelope_bytes

NOW = datetime(2026, 11, 20, 9, 15, 2, tzinfo=UTC)
LIMITS = Limits()


def build(call: dict[str, Any], call_type: str = "track", **kwargs: Any) -> dict[str, Any]:
    return build_event(
        call=call,
        call_type=call_type,
        source_id="src_1",
        received_at=NOW,
        limits=kwargs.pop("limits", LIMITS),
        **kwargs,
    )


def refusal(call: dict[str, Any], call_type: str = "track", **kwargs: Any) -> CallError:
    with pytest.raises(CallError) as caught:
        build(call, call_type, **kwargs)
    return caught.value


CALLS: list[tuple[str, dict[str, Any]]] = [
    ("identify", {"userId": "u1", "traits": {"email": "a@b.c"}}),
    ("track", {"anonymousId": "a1", "event": "Signed Up", "properties": {"plan": "pro"}}),
    ("page", {"anonymousId": "a1", "name": "Home", "category": "Docs", "properties": {"path": "/"}}),
    ("screen", {"userId": 42, "name": "Settings"}),
    ("group", {"userId": "u1", "groupId": "g1", "traits": {"name": "ACME"}}),
    ("alias", {"previousId": "a1", "userId": "u1"}),
]


@pytest.mark.parametrize(("call_type", "call"), CALLS)
def test_every_call_type_becomes_a_valid_event_envelope(call_type: str, call: dict[str, Any]) -> None:
    event = build(call, call_type, client_ip="203.0.113.9")
    key, value = envelope_bytes(event, now=NOW)
    envelope = decode_envelope(value)
    assert isinstance(envelope.data, TrackingEventReceived)
    assert envelope.data.type == call_type
    assert envelope.subject == key
    assert envelope.id == event_id(source_id="src_1", message_id=envelope.data.messageId)
    assert envelope.data.context["ip"] == "203.0.113.9"
    assert envelope.data.receivedAt == NOW


def test_identify_traits_sent_only_in_the_context_become_the_traits() -> None:
    rudder = build({"userId": "u", "context": {"traits": {"plan": "pro"}}}, "identify")
    assert rudder["traits"] == {"plan": "pro"}
    segment = build(
        {"userId": "u", "traits": {"plan": "free"}, "context": {"traits": {"plan": "pro"}}}, "identify"
    )
    assert segment["traits"] == {"plan": "free"}
    assert build({"userId": "u", "event": "E", "context": {"traits": {"a": 1}}})["traits"] == {}


def test_group_and_alias_keep_their_ids() -> None:
    assert build(CALLS[4][1], "group")["groupId"] == "g1"
    alias = build(CALLS[5][1], "alias")
    assert (alias["previousId"], alias["userId"]) == ("a1", "u1")
    assert build(CALLS[3][1], "screen")["userId"] == "42"


def test_the_timestamp_is_corrected_for_the_clients_clock() -> None:
    event = build(
        {
            "userId": "u",
            "event": "X",
            "sentAt": "2026-11-20T10:15:02Z",  # the device clock is an hour ahead
            "originalTimestamp": "2026-11-20T10:15:00Z",
        }
    )
    assert event["timestamp"] == NOW - timedelta(seconds=2)
    assert event["sentAt"] == datetime(2026, 11, 20, 10, 15, 2, tzinfo=UTC)
    assert event["originalTimestamp"] == datetime(2026, 11, 20, 10, 15, tzinfo=UTC)
    explicit = build({"userId": "u", "event": "X", "timestamp": "2026-01-01T00:00:00+02:00"})
    assert explicit["timestamp"] == datetime(2025, 12, 31, 22, tzinfo=UTC)


def test_a_given_ip_is_kept_and_a_missing_message_id_is_generated() -> None:
    event = build({"userId": "u", "event": "X", "context": {"ip": "198.51.100.1"}}, client_ip="10.0.0.1")
    assert event["context"]["ip"] == "198.51.100.1"
    assert len(event["messageId"]) == 36


def test_external_ids_identify_a_call_and_pick_the_kafka_key_by_priority() -> None:
    event = build(
        {
            "event": "Email Opened",
            "context": {
                "externalIds": [
                    {"id": "crm-7", "type": "crm_id", "collection": "users", "encoding": "none"},
                    {"id": " Ada@Example.com ", "type": "email", "collection": "users", "encoding": "none"},
                ]
            },
        }
    )
    assert partition_key(event) == "email:ada@example.com"
    assert partition_key({**event, "anonymousId": "a1"}) == "a1"
    assert partition_key({**event, "userId": "u1", "anonymousId": "a1"}) == "u1"


@pytest.mark.parametrize(
    ("call", "call_type", "code", "field"),
    [
        ({"event": "X"}, "track", "no_user_anon_id", "userId"),
        ({"userId": "u"}, "track", "missing_event", "event"),
        ({"userId": "u", "event": ""}, "track", "missing_event", "event"),
        ({"userId": "u"}, "group", "missing_group_id", "groupId"),
        ({"userId": "u"}, "alias", "missing_previous_id", "previousId"),
        ({"previousId": "a"}, "alias", "no_user_id", "userId"),
        ({"userId": True, "event": "X"}, "track", "invalid_field", "userId"),
        ({"userId": {"a": 1}, "event": "X"}, "track", "invalid_field", "userId"),
        ({"userId": "u" * 1001, "event": "X"}, "track", "invalid_field", "userId"),
        ({"userId": "u", "event": "X", "messageId": "m" * 101}, "track", "invalid_message_id", "messageId"),
        ({"userId": "u", "event": "X", "properties": []}, "track", "invalid_field", "properties"),
        ({"userId": "u", "event": "X", "context": "x"}, "track", "invalid_field", "context"),
        ({"userId": "u", "event": "X", "timestamp": "yesterday"}, "track", "invalid_timestamp", "timestamp"),
        ({"userId": "u", "event": "X", "sentAt": 17}, "track", "invalid_timestamp", "sentAt"),
        (
            {"userId": "u", "event": "X", "timestamp": "2031-01-01T00:00:00Z"},
            "track",
            "timestamp_out_of_range",
            "timestamp",
        ),
        (
            {"userId": "u", "event": "X", "timestamp": "2001-01-01T00:00:00Z"},
            "track",
            "timestamp_out_of_range",
            "timestamp",
        ),
        (
            {
                "userId": "u",
                "event": "X",
                "sentAt": "2026-11-20T09:15:02Z",
                "originalTimestamp": "2021-01-01T00:00:00Z",
            },
            "track",
            "timestamp_out_of_range",
            "originalTimestamp",
        ),
        (
            {"userId": "u", "event": "X", "properties": {"a": "x\x00y"}},
            "track",
            "nul_character",
            "properties.a",
        ),
        (
            {"userId": "u", "event": "X", "properties": {"a\x00": 1}},
            "track",
            "nul_character",
            "properties.a\x00",
        ),
        (
            {"userId": "u", "event": "X", "properties": {"a": float("nan")}},
            "track",
            "non_finite_number",
            "properties.a",
        ),
        (
            {"userId": "u", "event": "X", "properties": {"a": "x" * 8193}},
            "track",
            "string_too_long",
            "properties.a",
        ),
        (
            {"userId": "u", "event": "X", "properties": {"k" * 257: 1}},
            "track",
            "string_too_long",
            "properties." + "k" * 257,
        ),
        (
            {"userId": "u", "event": "X", "properties": {f"p{i}": i for i in range(251)}},
            "track",
            "too_many_properties",
            "properties",
        ),
        (
            {"userId": "u", "event": "X", "properties": {"l": list(range(1001))}},
            "track",
            "array_too_long",
            "properties.l",
        ),
        (
            {"userId": "u", "event": "X", "context": {"externalIds": {"id": 1}}},
            "track",
            "invalid_field",
            "context.externalIds",
        ),
        (
            {"event": "X", "context": {"externalIds": [{"id": "", "type": "email"}]}},
            "track",
            "invalid_field",
            "context.externalIds[0].id",
        ),
        ({"userId": "u"}, "bogus", "invalid_type", "type"),
    ],
)
def test_bad_calls_are_refused_saying_what_and_where(
    call: dict[str, Any], call_type: str, code: str, field: str
) -> None:
    error = refusal(call, call_type)
    assert (error.code, error.field) == (code, field)
    assert error.status == 400
    assert error.as_body()["details"] == {"field": field}


def test_nesting_deeper_than_the_limit_is_refused_with_its_path() -> None:
    deep: dict[str, Any] = {"leaf": 1}
    for _ in range(20):
        deep = {"n": deep}
    error = refusal({"userId": "u", "event": "X", "properties": deep})
    assert error.code == "too_deep"
    assert error.field is not None
    assert error.field.startswith("properties.n.n.")
    nested_lists = {"userId": "u", "event": "X", "properties": {"l": [[[[1]]]]}}
    assert refusal(nested_lists, limits=Limits(max_depth=4)).field == "properties.l[0][0]"


@pytest.mark.parametrize(
    ("properties", "field"),
    [
        ({"total": "12.00", "order_id": "o1"}, "properties.total"),
        ({"total": 12, "currency": "euro", "order_id": "o1"}, "properties.currency"),
        ({"total": 12, "currency": "eur", "order_id": "o1"}, "properties.currency"),
        ({"total": 12, "currency": "EUR\n", "order_id": "o1"}, "properties.currency"),
        ({"total": 12, "currency": "ÄÖÜ", "order_id": "o1"}, "properties.currency"),
        ({"total": 12, "currency": 978, "order_id": "o1"}, "properties.currency"),
        # Of several malformed amounts, the first in Segment's field order is named.
        ({"revenue": "1", "total": "2", "order_id": "o1"}, "properties.total"),
        ({"total": 12}, "properties.order_id"),
        ({"order_id": "o1", "products": {"sku": "a"}}, "properties.products"),
        ({"order_id": "o1", "products": ["a"]}, "properties.products[0]"),
        ({"order_id": "o1", "products": [{"price": "9"}]}, "properties.products[0].price"),
        ({"order_id": "o1", "products": [{"price": 9, "quantity": -1}]}, "properties.products[0].quantity"),
    ],
)
def test_malformed_order_completed_events_are_refused(properties: dict[str, Any], field: str) -> None:
    error = refusal({"userId": "u", "event": "Order Completed", "properties": properties})
    assert (error.code, error.field) == ("invalid_ecommerce_event", field)


def test_well_formed_ecommerce_and_unknown_events_pass() -> None:
    build(
        {
            "userId": "u",
            "event": "Order Completed",
            "properties": {
                "order_id": 5,
                "total": 27.5,
                "currency": "EUR",
                "products": [{"sku": "s", "price": 19, "quantity": 1}],
            },
        }
    )
    build({"userId": "u", "event": "Product Added", "properties": {"price": 3, "quantity": 2}})
    build({"userId": "u", "event": "Custom Thing", "properties": {"total": "anything"}})


def test_batch_defaults_merge_into_items_without_overriding_them() -> None:
    batch = {
        "context": {"ip": "1.2.3.4", "locale": "de"},
        "integrations": {"All": False},
        "sentAt": "2026-01-01T00:00:00Z",
    }
    item = {"type": "track", "context": {"locale": "en"}}
    merged = merge_batch_defaults(item, batch)
    assert merged["context"] == {"ip": "1.2.3.4", "locale": "en"}
    assert merged["integrations"] == {"All": False}
    assert merged["sentAt"] == "2026-01-01T00:00:00Z"
    assert item == {"type": "track", "context": {"locale": "en"}}


def test_event_ids_are_uuid5_of_the_source_and_message_id() -> None:
    import uuid

    from cdp_ingest.domain.calls import MESSAGE_NAMESPACE

    for message in ("m", "ajs-next-6c1f0d9e", "ü" * 100):
        expected = str(uuid.uuid5(MESSAGE_NAMESPACE, f"src_1:{message}"))
        assert event_id(source_id="src_1", message_id=message) == expected


def test_event_ids_are_scoped_by_source() -> None:
    assert event_id(source_id="a", message_id="m") == event_id(source_id="a", message_id="m")
    assert event_id(source_id="a", message_id="m") != event_id(source_id="b", message_id="m")


def test_envelope_bytes_are_plain_json() -> None:
    _, value = envelope_bytes(build({"userId": "u", "event": "X"}), now=NOW)
    document = orjson.loads(value)
    assert document["type"] == "cdp.event.received.v1"
    assert document["time"].endswith("Z")


def test_spliced_envelopes_are_the_json_of_the_whole_envelope() -> None:
    hostile = 'u"\\\n\u00e9\U0001f600</script>' + "x" * 600
    event = build({"userId": hostile, "event": "X", "properties": {"note": 'a"b'}})
    key, value = envelope_bytes(event, now=NOW)
    assert key == hostile
    assert orjson.loads(value) == orjson.loads(
        orjson.dumps(
            {
                "specversion": "1.0",
                "id": event_id(source_id="src_1", message_id=event["messageId"]),
                "type": "cdp.event.received.v1",
                "source": "ingest",
                "time": NOW,
                "subject": hostile[:500],
                "datacontenttype": "application/json",
                "data": event,
            },
            option=orjson.OPT_UTC_Z,
        )
    )
