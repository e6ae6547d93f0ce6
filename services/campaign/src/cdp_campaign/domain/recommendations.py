"""Product recommendations from purchase history, for templates."""

from __future__ import annotations

from collections import Counter
from collections.abc import Sequence
from dataclasses import dataclass


@dataclass(frozen=True)
class Purchase:
    """One product line of an order."""

    order_id: str
    product_id: str
    name: str | None
    category: str | None
    price: float | None
    quantity: int


@dataclass(frozen=True)
class Product:
    """A product as templates see it."""

    product_id: str
    name: str | None
    category: str | None
    price: float | None
    reason: str


def favourite_category(history: Sequence[Purchase]) -> str | None:
    """Return the category a person bought most from."""
    counts = Counter(p.category for p in history if p.category)
    return counts.most_common(1)[0][0] if counts else None


def recommend(
    *, history: Sequence[Purchase], catalogue_sales: Sequence[Purchase], limit: int = 3
) -> list[Product]:
    """Recommend the favourite category's best sellers not yet bought, then items often bought together."""
    bought = {p.product_id for p in history}
    described: dict[str, Purchase] = {}
    for purchase in catalogue_sales:
        described.setdefault(purchase.product_id, purchase)
    picks: list[Product] = []

    def add(product_id: str, reason: str) -> None:
        if product_id in bought or any(p.product_id == product_id for p in picks) or len(picks) >= limit:
            return
        info = described[product_id]
        picks.append(Product(product_id, info.name, info.category, info.price, reason))

    category = favourite_category(history)
    if category is not None:
        sales = Counter()  # type: Counter[str]
        for purchase in catalogue_sales:
            if purchase.category == category:
                sales[purchase.product_id] += purchase.quantity
        for product_id, _ in sales.most_common():
            add(product_id, "best seller in your favourite category")
    orders: dict[str, set[str]] = {}
    for purchase in catalogue_sales:
        orders.setdefault(purchase.order_id, set()).add(purchase.product_id)
    together: Counter[str] = Counter()
    for products in orders.values():
        if products & bought:
            for product_id in products - bought:
                together[product_id] += 1
    for product_id, _ in together.most_common():
        add(product_id, "often bought together with what you bought")
    return picks
