"""The shop's fixed data: products, stores, names, the companies it sells to, its currencies and
their daily reference rates."""

from __future__ import annotations

from dataclasses import dataclass
from datetime import date, timedelta
from decimal import Decimal
from typing import Any

CATALOGUE: tuple[tuple[str, str, str, float], ...] = (
    ("TEA-GREEN", "Green tea", "Tea", 4.5),
    ("TEA-BLACK", "Assam black tea", "Tea", 5.9),
    ("TEA-POT", "Cast-iron teapot", "Kitchen", 39.0),
    ("MUG-01", "Stoneware mug", "Kitchen", 12.5),
    ("BOOK-PY", "Python in practice", "Books", 34.95),
    ("BOOK-SQL", "SQL for analysts", "Books", 29.95),
    ("GAME-MONO", "Monopoly", "Games", 19.0),
    ("GAME-CHESS", "Chess set", "Games", 45.0),
    ("SOCK-WOOL", "Wool socks", "Clothing", 9.9),
    ("HAT-KNIT", "Knitted hat", "Clothing", 24.0),
)
STORES = ("berlin-1", "hamburg-2", "munich-3", "london-1", "zurich-1")
STORE_CURRENCY = {"london-1": "GBP", "zurich-1": "CHF"}
KIOSK_STORE = "berlin-1"
FIRST_NAMES = ("ada", "alan", "grace", "edsger", "barbara", "ken", "margaret", "linus", "frances", "john")
LAST_NAMES = (
    "lovelace",
    "turing",
    "hopper",
    "dijkstra",
    "liskov",
    "thompson",
    "hamilton",
    "torvalds",
    "allen",
)
JUNK_USER_IDS = ("undefined", "null", "0", "anonymous")
JUNK_CARD_IDS = ("0", "-1", "null")
PAGES = ("/", "/tea", "/books", "/games", "/kitchen", "/clothing", "/about")
STORE_PAYMENTS = ("card", "cash", "mobile")
ERP_PAYMENTS = ("card", "invoice", "paypal")

# Every order keeps its own currency; money figures are in the reporting currency at the rate of
# the order's day. Dollars have no rate at all: those orders are kept and left out of net revenue.
CURRENCIES = ("EUR", "GBP", "CHF", "USD")
REPORTING_CURRENCY = "EUR"
RATED_CURRENCIES = ("GBP", "CHF")


@dataclass(frozen=True)
class Company:
    """A company the shop sells to: its account's traits and how its people spell its name."""

    slug: str
    name: str
    industry: str
    employees: int
    plan: str
    # The plan it moves to halfway through the simulated window.
    upgrade: str
    # Spellings that the published normalisation of company names (case, dots, punctuation,
    # legal forms such as GmbH, Inc., Corp.) makes one name; no two companies share the first
    # five letters of theirs, so no two are ever compared.
    spellings: tuple[str, ...]


COMPANIES = (
    Company(
        "acme",
        "Acme Widgets GmbH",
        "Manufacturing",
        120,
        "team",
        "enterprise",
        ("Acme Widgets GmbH", "ACME Widgets", "Acme-Widgets"),
    ),
    Company(
        "globex", "Globex", "Retail", 800, "enterprise", "enterprise", ("Globex", "Globex Inc.", "GLOBEX")
    ),
    Company(
        "initech", "Initech", "Software", 45, "starter", "team", ("Initech", "Initech LLC", "INITECH Corp.")
    ),
    Company("ibm", "IBM", "Technology", 280000, "enterprise", "enterprise", ("IBM", "I.B.M.", "IBM Corp")),
    Company(
        "umbrella",
        "Umbrella Health",
        "Healthcare",
        2300,
        "team",
        "enterprise",
        ("Umbrella Health", "Umbrella Health AG", "umbrella health"),
    ),
    Company(
        "stark",
        "Stark Logistics",
        "Logistics",
        350,
        "starter",
        "team",
        ("Stark Logistics", "Stark Logistics Ltd.", "STARK LOGISTICS"),
    ),
)
COMPANY_OF_SPELLING = {spelling: company.slug for company in COMPANIES for spelling in company.spellings}


def reference_rates(start: date, end: date) -> list[dict[str, Any]]:
    """Return the euro-based reference rates of every weekday from a week before `start` to `end`
    (none on weekends, as the ECB publishes them), in the form `PUT /v1/exchange-rates` takes."""
    days = []
    day = start - timedelta(days=7)
    while day <= end:
        if day.weekday() < 5:
            n = day.toordinal()
            gbp = Decimal("0.8400") + Decimal((n * 7) % 23) * Decimal("0.0011")
            chf = Decimal("0.9300") + Decimal((n * 5) % 19) * Decimal("0.0017")
            days.append(
                {"date": day.isoformat(), "base": "EUR", "rates": {"GBP": float(gbp), "CHF": float(chf)}}
            )
        day += timedelta(days=1)
    return days
