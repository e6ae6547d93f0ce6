"""What the shop sends and who sent it: a call (a tracking call or a transaction) with the identifiers
the platform matches it by, and the facts about one simulated person."""

from __future__ import annotations

from collections import Counter
from dataclasses import dataclass, field
from datetime import UTC, datetime
from decimal import Decimal
from typing import Any, Literal

from cdp_shop.identity import Key

ORDER_COMPLETED = "Order Completed"
ORDER_REFUNDED = "Order Refunded"
ORDER_CANCELLED = "Order Cancelled"
# What a call's previousId may name when it is an alias: a user id or an anonymous id.
ALIAS_KINDS = ("user_id", "anonymous_id")
MAX_VALUE_LENGTH = 1000


@dataclass(frozen=True)
class Call:
    """One thing to send: a tracking call (batched) or a transaction (NDJSON), at its event time."""

    kind: Literal["tracking", "transaction"]
    time: datetime
    body: dict[str, Any]
    person: str = ""

    @property
    def message_id(self) -> str:
        """Return the messageId the platform stores the call under."""
        if self.kind == "transaction":
            return f"txn:{self.body['kind']}:{self.body['order_id']}"
        return str(self.body["messageId"])

    @property
    def type(self) -> str:
        """Return the call's type as the platform sees it (a transaction is a track call)."""
        return "track" if self.kind == "transaction" else str(self.body["type"])

    def identifiers(self) -> list[Key]:
        """Return every identifier the call names, normalised as the platform matches them."""
        raw: list[tuple[str, Any]] = []
        if self.kind == "transaction":
            customer = self.body["customer"]
            raw += [(kind, customer.get(kind)) for kind in ("user_id", "anonymous_id", "email", "phone")]
            raw += list(customer.get("external_ids", {}).items())
        else:
            raw += [("user_id", self.body.get("userId")), ("anonymous_id", self.body.get("anonymousId"))]
            raw += [(kind, self.traits().get(kind)) for kind in ("email", "phone")]
            context = self.body.get("context", {})
            raw += [(str(item["type"]).lower(), item["id"]) for item in context.get("externalIds", [])]
        keys = [Key(kind, normalised(kind, value)) for kind, value in raw if isinstance(value, str) and value]
        return list(dict.fromkeys(keys))

    def previous_identifiers(self) -> list[Key]:
        """Return what an alias's previousId may name (its user id and anonymous id readings)."""
        value = self.body.get("previousId") if self.type == "alias" else None
        if not isinstance(value, str) or not value or len(value) > MAX_VALUE_LENGTH:
            return []
        return [Key(kind, normalised(kind, value)) for kind in ALIAS_KINDS]

    def traits(self) -> dict[str, Any]:
        """Return the person traits the call asserts: context.traits, overridden by identify traits."""
        if self.kind == "transaction":
            return {}
        traits = dict(self.body.get("context", {}).get("traits", {}))
        if self.body["type"] == "identify":
            traits.update(self.body.get("traits", {}))
        return traits

    def refuses_profiling(self) -> bool:
        """Whether the call carries a consent choice that leaves out profiling (`Advertising`)."""
        consent = self.body.get("context", {}).get("consent") if self.kind == "tracking" else None
        if not isinstance(consent, dict) or "categoryPreferences" not in consent:
            return False
        return consent["categoryPreferences"].get("Advertising") is not True


def normalised(kind: str, value: str) -> str:
    """Return an identifier value as the platform matches it."""
    if kind == "email":
        return value.strip().lower()
    if kind == "phone":
        return "+" + "".join(ch for ch in value if ch.isdigit())
    return value


@dataclass
class Person:
    """The facts about one simulated person, filled in as the simulation runs."""

    key: str
    user_id: str | None = None
    anonymous_ids: list[str] = field(default_factory=list)
    emails: list[str] = field(default_factory=list)
    phones: list[str] = field(default_factory=list)
    # The orders they placed, as placed; what became of each is folded from the calls.
    orders: list[dict[str, Any]] = field(default_factory=list)
    message_ids: list[str] = field(default_factory=list)
    times: list[datetime] = field(default_factory=list)
    emails_opened: int = 0
    emails_clicked: int = 0
    # The account (company slug) they buy for, or the company they asked a quote for.
    account: str | None = None
    lead_of: str | None = None
    refuses_profiling: bool = False


def iso(value: datetime) -> str:
    """Return a time as the truth and the calls write it (UTC, `Z`)."""
    return value.astimezone(UTC).isoformat().replace("+00:00", "Z")


def money(value: Decimal) -> float:
    """Return an amount rounded to cents as the platform serves it."""
    return float(value.quantize(Decimal("0.01")))


def most_frequent(counter: Counter[str]) -> str | None:
    """Return the name counted most; ties go to the first name in alphabetical order."""
    return min(counter, key=lambda name: (-counter[name], name)) if counter else None
