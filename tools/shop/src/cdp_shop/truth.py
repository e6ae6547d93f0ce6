"""The ground truth of a simulated world: the people as they are, and what a correct platform makes
of their calls (profiles, their orders and computed traits, accounts, duplicate suspects, refusals).

Everything here is derived from the calls in the order they are sent and from the published
rules (`cdp_shop.identity`, `cdp_shop.orders`); see the package's docstring for the format.
"""

from __future__ import annotations

from collections import Counter, defaultdict
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from datetime import UTC, datetime
from decimal import Decimal
from itertools import combinations
from typing import Any

from cdp_shop.calls import Call, Person, iso, money, most_frequent
from cdp_shop.catalogue import COMPANY_OF_SPELLING, CURRENCIES, REPORTING_CURRENCY, reference_rates
from cdp_shop.identity import IdentityGraph, Key, Rules
from cdp_shop.orders import COUNTED, REFUNDED_STATES, Rates, TrueOrder, fold_orders, order_facts

FORMAT = "cdp-shop-truth/2"


@dataclass(frozen=True)
class Window:
    """The simulated window and the seed it was drawn from."""

    seed: int
    start: datetime
    end: datetime


def build_truth(
    *, calls: Sequence[Call], people: Sequence[Person], window: Window, rules: Rules
) -> dict[str, Any]:
    """Return the ground truth of calls sent in this order by these people."""
    graph = IdentityGraph(rules)
    for index, call in enumerate(calls):
        graph.resolve(event=index, keys=call.identifiers(), aliased=call.previous_identifiers())
    resolution = graph.result()
    orders = fold_orders(calls)
    exchange_rates = reference_rates(window.start.date(), window.end.date())
    rates = Rates(exchange_rates)
    group_of = {event: group for group, events in resolution.events.items() for event in events}
    orders_of: dict[int, list[TrueOrder]] = defaultdict(list)
    for order in orders.values():
        if order.first_call in group_of:
            orders_of[group_of[order.first_call]].append(order)
    profiles = sorted(
        (
            _expected_profile(
                resolution.groups[group],
                [calls[i] for i in resolution.events[group]],
                orders_of[group],
                rates,
            )
            for group in resolution.groups
        ),
        key=lambda p: (p["people"], p["message_ids"]),
    )
    tracking = sum(1 for call in calls if call.kind == "tracking")
    return {
        "format": FORMAT,
        "seed": window.seed,
        "people_count": len(people),
        "start": iso(window.start),
        "end": iso(window.end),
        "currencies": list(CURRENCIES),
        "reporting_currency": REPORTING_CURRENCY,
        "exchange_rates": exchange_rates,
        "people": [_person_truth(person, orders, rates) for person in people],
        "profiles": profiles,
        "accounts": _accounts(calls),
        "duplicate_company_pairs": _company_pairs(profiles),
        "profiling_refused_people": sorted(p.key for p in people if p.refuses_profiling),
        "alias_merges": sorted(calls[i].message_id for i in resolution.alias_merges),
        "refused_aliases": [
            {"message_id": calls[i].message_id, "previous": {"type": k.type, "value": k.value}, "reason": why}
            for i, k, why in resolution.refused_aliases
        ],
        "blocked_identifiers": _listed(resolution.blocked),
        "quarantined_identifiers": _listed(resolution.quarantined),
        "unresolved_message_ids": sorted(calls[i].message_id for i in resolution.dropped_events),
        "totals": {
            "events": len(calls),
            "tracking_calls": tracking,
            "transactions": len(calls) - tracking,
            "profiles": len(profiles),
            "orders": len(orders),
        },
    }


def _listed(keys: Iterable[Key]) -> list[dict[str, str]]:
    return [{"type": key.type, "value": key.value} for key in sorted(keys)]


def _refunded(order: TrueOrder) -> Decimal:
    """Return how much of an order came back, at most its total."""
    gross = order.gross
    if gross is None:
        return order.refunded
    return gross if order.state == "refunded" else min(order.refunded, gross)


def _value(order: TrueOrder, rates: Rates) -> float | None:
    value = rates.value(order)
    return None if value is None else money(value)


def _person_truth(person: Person, orders: dict[str, TrueOrder], rates: Rates) -> dict[str, Any]:
    """Return a person's entry: who they are, and what became of each order they placed."""
    placed = []
    revenue: dict[str, Decimal] = defaultdict(Decimal)
    bought: Counter[str] = Counter()
    for facts in person.orders:
        order = orders[facts["order_id"]]
        placed.append(
            {
                **facts,
                "state": order.state,
                "refunded": money(_refunded(order)),
                "net": money(order.net),
                "value": _value(order, rates),
                "refund_time": iso(order.refund_time) if order.refund_time else None,
                "cancel_time": iso(order.cancel_time) if order.cancel_time else None,
                "sent_by": order.sent_by,
            }
        )
        if order.state in COUNTED:
            revenue[facts["currency"]] += order.net
            bought.update(order.kept())
    return {
        "key": person.key,
        "user_id": person.user_id,
        "anonymous_ids": person.anonymous_ids,
        "emails": person.emails,
        "phones": person.phones,
        "orders": placed,
        "order_count": sum(1 for o in placed if o["state"] in COUNTED),
        "revenue": {currency: money(total) for currency, total in sorted(revenue.items())},
        "net_revenue": money(
            sum((Decimal(str(o["value"] or 0)) for o in placed if o["state"] in COUNTED), Decimal(0))
        ),
        "first_seen": iso(min(person.times)),
        "last_seen": iso(max(person.times)),
        "favourite_category": most_frequent(bought),
        "emails_opened": person.emails_opened,
        "emails_clicked": person.emails_clicked,
        "account": person.account,
        "lead_of": person.lead_of,
        "refuses_profiling": person.refuses_profiling,
        "message_ids": person.message_ids,
        "event_count": len(person.message_ids),
    }


def _expected_profile(
    keys: set[Key], calls: list[Call], orders: list[TrueOrder], rates: Rates
) -> dict[str, Any]:
    """Return the profile a correct platform holds for one group: identifiers, events, orders,
    computed traits, accounts and consent."""
    event_counts: Counter[str] = Counter()
    page_views = 0
    accounts: set[str] = set()
    company: str | None = None
    for call in calls:
        if call.type == "page":
            page_views += 1
        elif call.type == "group":
            accounts.add(str(call.body["groupId"]))
        name, _ = order_facts(call)
        if call.type == "track" and name:
            event_counts[name] += 1
        company = call.traits().get("company", company)
    counted = [order for order in orders if order.state in COUNTED]
    net: dict[str, Decimal] = defaultdict(Decimal)
    per_currency: Counter[str] = Counter()
    bought: Counter[str] = Counter()
    payments: Counter[str] = Counter()
    for order in counted:
        currency = order.currency or "USD"
        net[currency] += order.net
        per_currency[currency] += 1
        bought.update(order.kept())
        if order.payment_method:
            payments[order.payment_method] += 1
    values = [rates.value(order) for order in counted]
    times = [call.time for call in calls]
    last_order = max((order.ordered_at for order in counted), default=None)
    return {
        "people": sorted({call.person for call in calls}),
        "identifiers": _listed(keys),
        "message_ids": sorted(call.message_id for call in calls),
        "event_count": len(calls),
        "first_seen": iso(min(times)),
        "last_seen": iso(max(times)),
        "page_views": page_views,
        "event_counts": dict(sorted(event_counts.items())),
        "orders": len(counted),
        "refunded_orders": sum(1 for order in counted if order.state in REFUNDED_STATES),
        "revenue": {currency: money(amount) for currency, amount in sorted(net.items())},
        "average_order_value": {c: money(net[c] / per_currency[c]) for c in sorted(net)},
        "net_revenue": money(sum((v for v in values if v is not None), Decimal(0))),
        "last_order_date": last_order.astimezone(UTC).date().isoformat() if last_order else None,
        "favourite_category": most_frequent(bought),
        "preferred_payment_method": most_frequent(payments),
        "order_details": [
            {
                "order_id": order.order_id,
                "state": order.state,
                "currency": order.currency,
                "net": money(order.net),
                "value": _value(order, rates),
            }
            for order in sorted(orders, key=lambda o: o.order_id)
        ],
        "accounts": sorted(accounts),
        "company": COMPANY_OF_SPELLING.get(company) if isinstance(company, str) else None,
        "profiling_refused": any(call.refuses_profiling() for call in calls),
    }


def _accounts(calls: Sequence[Call]) -> list[dict[str, Any]]:
    """Return every account group calls named: its traits (per trait, the value of the latest
    call) and the people whose calls named it."""
    traits: dict[str, dict[str, tuple[tuple[datetime, str], Any]]] = defaultdict(dict)
    people: dict[str, set[str]] = defaultdict(set)
    for call in calls:
        if call.type != "group":
            continue
        group_id = str(call.body["groupId"])
        people[group_id].add(call.person)
        held = traits[group_id]
        stamp = (call.time, call.message_id)
        for name, value in call.body.get("traits", {}).items():
            if name not in held or held[name][0] < stamp:
                held[name] = (stamp, value)
    return [
        {
            "group_id": group_id,
            "traits": {name: value for name, (_, value) in sorted(held.items())},
            "people": sorted(people[group_id]),
        }
        for group_id, held in sorted(traits.items())
    ]


def _company_pairs(profiles: Sequence[dict[str, Any]]) -> list[dict[str, Any]]:
    """Return every two profiles that hold a spelling of the same company and nothing else to compare."""
    by_company: dict[str, list[dict[str, Any]]] = defaultdict(list)
    for profile in profiles:
        if profile["company"] is not None:
            by_company[profile["company"]].append(profile)
    return [
        {"company": company, "identifiers": [a["identifiers"][0], b["identifiers"][0]]}
        for company, held in sorted(by_company.items())
        for a, b in combinations(held, 2)
    ]
