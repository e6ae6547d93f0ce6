"""The European Central Bank's reference-rate CSV (`eurofxref-hist.csv`, or the one day of
`eurofxref.csv`): a `Date` column, then one column per currency, euro-based, `N/A` where a
currency has no rate that day; read into days of rates for profile's /v1/exchange-rates."""

from __future__ import annotations

import csv
from collections.abc import Iterator
from datetime import date
from decimal import Decimal, InvalidOperation
from pathlib import Path
from typing import Any

ECB_BASE = "EUR"
MISSING = {"", "N/A", "NA", "-"}


class RatesFileError(ValueError):
    """The file is not a reference-rate CSV."""


def read_ecb_rates(path: Path) -> Iterator[dict[str, Any]]:
    """Yield each day of the file as `{"date", "base", "rates"}`, rates as strings of decimals."""
    with path.open(newline="", encoding="utf-8-sig") as handle:
        rows = csv.reader(handle, skipinitialspace=True)
        header = [cell.strip() for cell in next(rows, [])]
        if not header or header[0] != "Date":
            raise RatesFileError(f"{path.name}: the first column must be Date (an ECB reference-rate CSV)")
        currencies = header[1:]
        for line, row in enumerate(rows, start=2):
            cells = [cell.strip() for cell in row]
            if not any(cells):
                continue
            try:
                day = date.fromisoformat(cells[0])
            except ValueError as exc:
                raise RatesFileError(f"line {line}: {cells[0]!r} is not a date (YYYY-MM-DD)") from exc
            rates: dict[str, str] = {}
            for currency, cell in zip(currencies, cells[1:], strict=False):
                if not currency or cell in MISSING:
                    continue
                try:
                    rate = Decimal(cell)
                except InvalidOperation as exc:
                    raise RatesFileError(f"line {line}: {currency} {cell!r} is not a number") from exc
                rates[currency] = str(rate)
            if rates:
                yield {"date": day.isoformat(), "base": ECB_BASE, "rates": rates}
