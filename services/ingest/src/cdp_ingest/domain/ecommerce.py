"""Segment's e-commerce events: which names they are and what their properties must look like.

Only what a downstream aggregate depends on is enforced (money is a finite number,
a currency is an ISO 4217 code, an order names its order_id, products are objects
with numeric price and quantity); everything else passes as sent.
"""

from __future__ import annotations

import math
from collections.abc import Mapping
from typing import Any

from cdp_ingest.domain.errors import CallError

ECOMMERCE_EVENTS = frozenset(
    {
        "Products Searched",
        "Product List Viewed",
        "Product List Filtered",
        "Product Clicked",
        "Product Viewed",
        "Product Added",
        "Product Removed",
        "Cart Viewed",
        "Checkout Started",
        "Checkout Step Viewed",
        "Checkout Step Completed",
        "Payment Info Entered",
        "Order Updated",
        "Order Completed",
        "Order Refunded",
        "Order Cancelled",
        "Coupon Entered",
        "Coupon Applied",
        "Coupon Denied",
        "Coupon Removed",
        "Product Added to Wishlist",
        "Product Removed from Wishlist",
        "Product Reviewed",
    }
)
ORDER_EVENTS = frozenset({"Order Updated", "Order Completed", "Order Refunded", "Order Cancelled"})
MONEY_FIELDS = ("total", "revenue", "subtotal", "shipping", "tax", "discount", "value", "price")
_MONEY_FIELD_NAMES = frozenset(MONEY_FIELDS)


def _error(code: str, message: str, field: str) -> CallError:
    return CallError(code, message, field)


def _is_number(value: Any) -> bool:
    kind = type(value)
    if kind is float:
        return math.isfinite(value)
    if kind is int:
        return True
    return isinstance(value, int | float) and not isinstance(value, bool) and math.isfinite(value)


def _is_currency_code(value: Any) -> bool:
    # What ^[A-Z]{3}$ says (without its tolerance of a trailing newline), cheaper than a match.
    return type(value) is str and len(value) == 3 and value.isascii() and value.isalpha() and value.isupper()


def _check_money(properties: Mapping[str, Any], prefix: str) -> None:
    for field, value in properties.items():
        if field in _MONEY_FIELD_NAMES and value is not None and not _is_number(value):
            break
    else:
        return
    # Something is wrong: name the first field in MONEY_FIELDS' order.
    for field in MONEY_FIELDS:
        value = properties.get(field)
        if value is not None and not _is_number(value):
            raise _error("invalid_ecommerce_event", f"{prefix}{field} must be a number", prefix + field)


def check_ecommerce_event(name: str, properties: Mapping[str, Any]) -> None:
    """Refuse an e-commerce event whose money, currency, order id or products are malformed."""
    if name not in ECOMMERCE_EVENTS:
        return
    _check_money(properties, "properties.")
    currency = properties.get("currency")
    if currency is not None and not _is_currency_code(currency):
        raise _error(
            "invalid_ecommerce_event",
            "properties.currency must be an ISO 4217 code such as EUR",
            "properties.currency",
        )
    if name in ORDER_EVENTS:
        order_id = properties.get("order_id")
        if isinstance(order_id, bool) or not isinstance(order_id, str | int) or str(order_id).strip() == "":
            raise _error(
                "invalid_ecommerce_event", f"{name} needs properties.order_id", "properties.order_id"
            )
    products = properties.get("products")
    if products is None:
        return
    if not isinstance(products, list):
        raise _error("invalid_ecommerce_event", "properties.products must be an array", "properties.products")
    for index, product in enumerate(products):
        where = f"properties.products[{index}]"
        if not isinstance(product, dict):
            raise _error("invalid_ecommerce_event", f"{where} must be an object", where)
        _check_money(product, where + ".")
        quantity = product.get("quantity")
        if quantity is not None and (not _is_number(quantity) or quantity < 0):
            raise _error(
                "invalid_ecommerce_event",
                f"{where}.quantity must be a number of at least 0",
                where + ".quantity",
            )
