"""Typed transactions from shop back-ends, POS and ERP systems, and their tracking events.

A purchase becomes a Segment `Order Completed` track event, a refund an `Order
Refunded`, so the profile and segment services see one kind of order whatever sent
it. The event's messageId is derived from the order id and kind, so a resent
transaction has the same envelope id (source + order id) and is applied once.
"""

from __future__ import annotations

from datetime import datetime
from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field, ValidationError, field_validator, model_validator

from cdp_ingest.domain.errors import CallError

EVENT_NAMES = {"purchase": "Order Completed", "refund": "Order Refunded"}


class Customer(BaseModel):
    """Who bought: at least one identifier."""

    model_config = ConfigDict(extra="forbid")

    user_id: str | None = Field(default=None, min_length=1, max_length=1000)
    anonymous_id: str | None = Field(default=None, min_length=1, max_length=1000)
    email: str | None = Field(default=None, min_length=3, max_length=320, pattern=r"^[^@\s]+@[^@\s]+$")
    phone: str | None = Field(default=None, min_length=3, max_length=40)
    external_ids: dict[str, str] = Field(default_factory=dict, max_length=20)

    @model_validator(mode="after")
    def _identified(self) -> Customer:
        if not (self.user_id or self.anonymous_id or self.email or self.phone or self.external_ids):
            raise ValueError("the customer needs at least one identifier")
        return self


class Item(BaseModel):
    """One line of a transaction."""

    model_config = ConfigDict(extra="forbid")

    sku: str = Field(min_length=1, max_length=200)
    name: str | None = Field(default=None, max_length=500)
    category: str | None = Field(default=None, max_length=200)
    price: float = Field(allow_inf_nan=False)
    quantity: int = Field(ge=1, le=1_000_000)


class Transaction(BaseModel):
    """A purchase or a refund, online or in a store."""

    model_config = ConfigDict(extra="forbid")

    order_id: str = Field(min_length=1, max_length=80)
    kind: Literal["purchase", "refund"] = "purchase"
    customer: Customer
    items: list[Item] = Field(default_factory=list, max_length=1000)
    total: float = Field(allow_inf_nan=False)
    currency: str = Field(pattern=r"^[A-Z]{3}$")
    channel: Literal["online", "store"]
    store_id: str | None = Field(default=None, min_length=1, max_length=200)
    payment_method: str | None = Field(default=None, max_length=100)
    time: datetime

    @field_validator("time")
    @classmethod
    def _aware(cls, value: datetime) -> datetime:
        if value.tzinfo is None:
            raise ValueError("time needs a UTC offset")
        return value

    @model_validator(mode="after")
    def _store_has_an_id(self) -> Transaction:
        if self.channel == "store" and not self.store_id:
            raise ValueError("a store transaction needs store_id")
        return self


def parse_transaction(document: Any) -> Transaction:
    """Validate one transaction document, refusing it with the first field at fault."""
    try:
        return Transaction.model_validate(document)
    except ValidationError as exc:
        first = exc.errors(include_url=False)[0]
        field = ".".join(str(part) for part in first["loc"]) or None
        raise CallError("invalid_transaction", f"{field or 'transaction'}: {first['msg']}", field) from exc


def transaction_call(transaction: Transaction) -> dict[str, Any]:
    """Return the Segment track call that carries a transaction to cdp.events.v1."""
    customer = transaction.customer
    external_ids = [
        {"id": value, "type": kind, "collection": "users", "encoding": "none"}
        for kind, value in (("email", customer.email), ("phone", customer.phone))
        if value
    ]
    external_ids += [
        {"id": value, "type": kind, "collection": "users", "encoding": "none"}
        for kind, value in customer.external_ids.items()
    ]
    traits = {kind: value for kind, value in (("email", customer.email), ("phone", customer.phone)) if value}
    properties: dict[str, Any] = {
        "order_id": transaction.order_id,
        "total": transaction.total,
        "revenue": transaction.total,
        "currency": transaction.currency,
        "channel": transaction.channel,
        "products": [
            {
                "sku": item.sku,
                "product_id": item.sku,
                "name": item.name,
                "category": item.category,
                "price": item.price,
                "quantity": item.quantity,
            }
            for item in transaction.items
        ],
    }
    if transaction.store_id:
        properties["store_id"] = transaction.store_id
    if transaction.payment_method:
        properties["payment_method"] = transaction.payment_method
    context: dict[str, Any] = {"library": {"name": "cdp-transactions", "version": "1"}}
    if external_ids:
        context["externalIds"] = external_ids
    if traits:
        context["traits"] = traits
    call: dict[str, Any] = {
        "type": "track",
        "event": EVENT_NAMES[transaction.kind],
        "messageId": f"txn:{transaction.kind}:{transaction.order_id}",
        "timestamp": transaction.time.isoformat(),
        "properties": properties,
        "context": context,
    }
    if customer.user_id:
        call["userId"] = customer.user_id
    if customer.anonymous_id:
        call["anonymousId"] = customer.anonymous_id
    return call
