"""Reading transactions from a CSV file: one row per order line, rows of one order together."""

from __future__ import annotations

import csv
import json
from collections.abc import Iterator
from pathlib import Path
from typing import Any

CUSTOMER_COLUMNS = ("user_id", "anonymous_id", "email", "phone")
ORDER_COLUMNS = ("kind", "total", "currency", "channel", "store_id", "payment_method", "time")
ITEM_COLUMNS = ("sku", "name", "category", "price", "quantity")
REQUIRED = ("order_id", "total", "currency", "channel", "time")


class CsvError(ValueError):
    """The file is not a transactions CSV."""


def _number(value: str, column: str, line: int) -> float:
    try:
        return float(value)
    except ValueError as exc:
        raise CsvError(f"line {line}: {column} {value!r} is not a number") from exc


def read_transactions(path: Path) -> Iterator[tuple[int, dict[str, Any]]]:
    """Yield (first line number, transaction) for each order of the file, in file order."""
    with path.open(newline="", encoding="utf-8-sig") as handle:
        reader = csv.DictReader(handle)
        missing = [column for column in REQUIRED if column not in (reader.fieldnames or [])]
        if missing:
            raise CsvError(f"{path}: missing columns {', '.join(missing)}")
        current: dict[str, Any] | None = None
        first_line = 0
        for row in reader:
            line = reader.line_num
            order_id = (row.get("order_id") or "").strip()
            if current is not None and current["order_id"] != order_id:
                yield first_line, current
                current = None
            if current is None:
                first_line = line
                current = _order(row, order_id, line)
            if (row.get("sku") or "").strip():
                current["items"].append(_item(row, line))
        if current is not None:
            yield first_line, current


def _order(row: dict[str, str], order_id: str, line: int) -> dict[str, Any]:
    customer = {column: row[column].strip() for column in CUSTOMER_COLUMNS if (row.get(column) or "").strip()}
    order: dict[str, Any] = {"order_id": order_id, "customer": customer, "items": []}
    for column in ORDER_COLUMNS:
        value = (row.get(column) or "").strip()
        if value:
            order[column] = _number(value, column, line) if column == "total" else value
    return order


def _item(row: dict[str, str], line: int) -> dict[str, Any]:
    item: dict[str, Any] = {"sku": row["sku"].strip()}
    for column in ("name", "category"):
        if (row.get(column) or "").strip():
            item[column] = row[column].strip()
    item["price"] = _number((row.get("price") or "0").strip(), "price", line)
    item["quantity"] = int(_number((row.get("quantity") or "1").strip(), "quantity", line))
    return item


def to_ndjson_line(transaction: dict[str, Any]) -> bytes:
    """Encode one transaction as an NDJSON line."""
    return json.dumps(transaction, separators=(",", ":")).encode()
