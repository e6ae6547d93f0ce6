"""The tracking API's bodies as JSON Schema, for ingest's OpenAPI document.

The tracking routes read their bodies themselves (from any Segment or RudderStack library, as
`text/plain` from browsers, gzip-compressed or not), so these schemas describe what a call may
carry; the rules are the API's own, each refusal a 400 with its code.
"""

from __future__ import annotations

from typing import Any

from cdp_ingest.domain.transactions import Transaction

_OBJECT: dict[str, Any] = {"type": "object", "additionalProperties": True}
_TEXT: dict[str, Any] = {"type": "string"}
_TIME: dict[str, Any] = {"type": "string", "format": "date-time"}

# Ids may be numbers, as some libraries send them; they are kept as their text.
_ID: dict[str, Any] = {"anyOf": [{"type": "string"}, {"type": "number"}]}

_COMMON: dict[str, Any] = {
    "userId": {**_ID, "description": "the person's id in your system"},
    "anonymousId": {**_ID, "description": "the device's or browser's id, before a userId is known"},
    "messageId": {**_ID, "description": "unique per call: a call sent again with it is taken once"},
    "timestamp": {**_TIME, "description": "when it happened (corrected for the device's clock)"},
    "sentAt": {**_TIME, "description": "when the device sent it"},
    "context": {**_OBJECT, "description": "traits, externalIds, ip, page, device, …"},
    "integrations": _OBJECT,
    "writeKey": {**_TEXT, "description": "the source's write key, when not sent as HTTP Basic"},
}

_CALLS: dict[str, dict[str, Any]] = {
    "identify": {"traits": _OBJECT},
    "track": {
        "event": {**_TEXT, "description": "the event's name, e.g. `Order Completed`"},
        "properties": _OBJECT,
    },
    "page": {"name": _TEXT, "category": _TEXT, "properties": _OBJECT},
    "screen": {"name": _TEXT, "category": _TEXT, "properties": _OBJECT},
    "group": {"groupId": _TEXT, "traits": _OBJECT},
    "alias": {"previousId": _TEXT},
}


def _call(call_type: str, *, typed: bool = False) -> dict[str, Any]:
    properties = {**_COMMON, **_CALLS[call_type]}
    schema: dict[str, Any] = {
        "title": f"{call_type.capitalize()}Call",
        "type": "object",
        "properties": properties,
        "additionalProperties": True,
    }
    if typed:
        schema["properties"] = {"type": {"type": "string", "enum": [call_type]}, **properties}
        schema["required"] = ["type"]
    return schema


def _components() -> dict[str, dict[str, Any]]:
    transaction = Transaction.model_json_schema(ref_template="#/components/schemas/{model}")
    nested = transaction.pop("$defs", {})
    calls = {f"{t.capitalize()}Call": _call(t) for t in _CALLS}
    batch_item = {
        "title": "BatchCall",
        "oneOf": [_call(t, typed=True) for t in _CALLS],
        "discriminator": {"propertyName": "type"},
    }
    batch = {
        "title": "Batch",
        "type": "object",
        "required": ["batch"],
        "properties": {
            "batch": {"type": "array", "items": batch_item},
            "context": _OBJECT,
            "sentAt": _TIME,
            "writeKey": _COMMON["writeKey"],
        },
        "additionalProperties": True,
    }
    return {**calls, "Batch": batch, "Transaction": transaction, **nested}


def _json(schema: str) -> dict[str, Any]:
    return {
        "required": True,
        "content": {"application/json": {"schema": {"$ref": f"#/components/schemas/{schema}"}}},
    }


def tracking_bodies() -> tuple[dict[str, dict[str, Any]], dict[str, dict[str, Any]]]:
    """Return the request body of each tracking path and the schemas they refer to."""
    bodies = {f"/v1/{t}": _json(f"{t.capitalize()}Call") for t in _CALLS}
    bodies["/v1/batch"] = bodies["/v1/import"] = _json("Batch")
    # Many transactions as NDJSON are described by the operation; generators know only JSON bodies.
    bodies["/v1/transactions"] = _json("Transaction")
    return bodies, _components()
