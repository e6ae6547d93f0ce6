"""The generator's ground truth of orders, aliases, accounts, duplicate companies and consent on small
worlds built by hand: one order is one order whoever sends it, refunds and cancellations amend it,
money is in euros at the day's rate, aliases merge or are refused as the identity rules say."""

from __future__ import annotations

from datetime import UTC, date, datetime, timedelta
from decimal import ROUND_HALF_EVEN, Decimal
from typing import Any

from cdp_common.purposes import ANALYTICS, PERSONALISATION, PROFILING, excluded_from
from cdp_consent.domain.consents import Catalogue, decisions_from_preferences, preferences_of
from cdp_consent.settings import DEFAULT_CATEGORY_PURPOSES, DEFAULT_CHANNELS, DEFAULT_PURPOSES
from cdp_shop.catalogue import COMPANIES, reference_rates
from cdp_shop.world import Person, Shop, simulate

END = datetime(2026, 11, 1, tzinfo=UTC)
# A Saturday: the ECB publishes no rates on it, so Friday's hold.
SATURDAY = datetime(2026, 10, 10, 15, 0, tzinfo=UTC)
ACME = next(c for c in COMPANIES if c.slug == "acme")


def at(hours: float) -> datetime:
    """Return a time `hours` after the start of the hand-made story."""
    return END - timedelta(days=60) + timedelta(hours=hours)


def customer(shop: Shop, hours: float, name: str) -> tuple[Person, str]:
    """Build a person who signs up on a new device; return the person and the device."""
    person = shop.new_person()
    device = shop.new_device(person)
    shop.sign_up(person, at(hours), anonymous_id=device, user_id=f"u-{name}", email=f"{name}@example.com")
    return person, device


def only_profile(truth: dict[str, Any]) -> dict[str, Any]:
    """Return the one expected profile of a world."""
    profiles: list[dict[str, Any]] = truth["profiles"]
    [profile] = profiles
    return profile


def euros(amount: Decimal, rate: float) -> float:
    """Return an amount in euros at a rate of units for one euro, rounded to cents."""
    return float((amount * (Decimal(1) / Decimal(str(rate)))).quantize(Decimal("0.01"), ROUND_HALF_EVEN))


def test_an_order_sent_by_the_web_tag_and_again_by_the_erp_counts_once_with_the_erps_payment() -> None:
    shop = Shop(seed=1, end=END)
    ada, laptop = customer(shop, 1, "ada")
    shop.online_purchase(ada, at(2), anonymous_id=laptop, currency="EUR")
    [order] = ada.orders
    shop.erp_export(ada, at(30), order=order, email="ada@example.com")
    truth = shop.world().truth

    profile = only_profile(truth)
    assert profile["event_counts"]["Order Completed"] == 2
    assert (profile["orders"], profile["revenue"], profile["net_revenue"]) == (
        1,
        {"EUR": order["total"]},
        order["total"],
    )
    erp_payment = next(c.body["payment_method"] for c in shop.calls if c.kind == "transaction")
    assert profile["preferred_payment_method"] == erp_payment
    [placed] = truth["people"][0]["orders"]
    assert (placed["state"], placed["sent_by"]) == ("completed", ["web", "pos"])
    assert truth["totals"]["orders"] == 1


def test_a_cancelled_order_counts_nowhere_though_its_events_do() -> None:
    shop = Shop(seed=2, end=END)
    ada, laptop = customer(shop, 1, "ada")
    shop.online_purchase(ada, at(2), anonymous_id=laptop, currency="EUR")
    shop.cancel_order(ada, at(3), order=ada.orders[0], anonymous_id=laptop)
    truth = shop.world().truth

    profile = only_profile(truth)
    assert (profile["orders"], profile["revenue"], profile["net_revenue"], profile["last_order_date"]) == (
        0,
        {},
        0.0,
        None,
    )
    assert profile["event_counts"]["Order Cancelled"] == 1
    assert profile["order_details"][0]["state"] == "cancelled"
    assert truth["people"][0]["order_count"] == 0


def test_a_goodwill_credit_keeps_the_rest_and_a_return_sent_by_the_pos_and_the_web_counts_once() -> None:
    shop = Shop(seed=3, end=END)
    ada, laptop = customer(shop, 1, "ada")
    shop.online_purchase(ada, at(2), anonymous_id=laptop, currency="EUR")
    shop.online_purchase(ada, at(5), anonymous_id=laptop, currency="EUR")
    credited, returned = ada.orders
    shop.goodwill_refund(ada, at(40), order=credited, anonymous_id=laptop, amount=5.0)
    line = {**returned["items"][0], "quantity": 1}
    shop.store_return(
        ada, at(50), order=returned, email="ada@example.com", line=line, web_anonymous_id=laptop
    )
    truth = shop.world().truth

    sent = [c for c in shop.calls if c.kind == "transaction" or c.body.get("event") == "Order Refunded"]
    assert len(sent) == 3, "a credit, and the return from the POS and from the web shop"
    credit_net = Decimal(str(credited["total"])) - 5
    return_net = Decimal(str(returned["total"])) - Decimal(str(line["price"]))
    everything_back = sum(item["quantity"] for item in returned["items"]) == 1
    states = {o["order_id"]: o["state"] for o in truth["people"][0]["orders"]}
    assert states[credited["order_id"]] == "partially_refunded"
    assert states[returned["order_id"]] == ("refunded" if everything_back else "partially_refunded")
    profile = only_profile(truth)
    assert profile["net_revenue"] == float(credit_net + (0 if everything_back else return_net))
    assert profile["refunded_orders"] == 2
    kept = {returned["items"][0]["category"]: -1}
    for order in (credited, returned):
        for item in order["items"]:
            kept[item["category"]] = kept.get(item["category"], 0) + item["quantity"]
    assert profile["favourite_category"] == min((c for c in kept if kept[c]), key=lambda c: (-kept[c], c))


def test_money_is_in_euros_at_the_rate_of_the_orders_day_or_the_day_before_and_dollars_have_none() -> None:
    shop = Shop(seed=4, end=END)
    ada, laptop = customer(shop, 1, "ada")
    shop.online_purchase(ada, SATURDAY, anonymous_id=laptop, currency="GBP")
    shop.online_purchase(ada, SATURDAY + timedelta(days=2), anonymous_id=laptop, currency="USD")
    pounds, dollars = ada.orders
    truth = shop.world().truth

    rates = {d["date"]: d["rates"] for d in truth["exchange_rates"]}
    assert SATURDAY.date().isoformat() not in rates
    friday = rates[(SATURDAY.date() - timedelta(days=1)).isoformat()]["GBP"]
    in_euros = euros(Decimal(str(pounds["total"])), friday)
    profile = only_profile(truth)
    assert profile["net_revenue"] == in_euros
    assert profile["revenue"] == {"GBP": pounds["total"], "USD": dollars["total"]}
    assert {o["order_id"]: o["value"] for o in profile["order_details"]} == {
        pounds["order_id"]: in_euros,
        dollars["order_id"]: None,
    }
    assert truth["exchange_rates"] == reference_rates(shop.start.date(), END.date())
    assert all(date.fromisoformat(d["date"]).weekday() < 5 for d in truth["exchange_rates"])


def test_an_app_aliased_after_its_visits_joins_its_user_and_one_aliased_first_takes_its_visits() -> None:
    shop = Shop(seed=5, end=END)
    ada, _ = customer(shop, 1, "ada")
    bob, _ = customer(shop, 2, "bob")
    ada_app, bob_app = shop.new_device(ada), shop.new_device(bob)
    shop.browse(ada, at(10), {"anonymousId": ada_app})
    shop.alias(ada, at(20), previous_id=ada_app)
    shop.alias(bob, at(10), previous_id=bob_app)
    shop.browse(bob, at(20), {"anonymousId": bob_app})
    truth = shop.world().truth

    assert len(truth["profiles"]) == 2
    for person, app in ((ada, ada_app), (bob, bob_app)):
        [profile] = [p for p in truth["profiles"] if p["people"] == [person.key]]
        assert {"type": "anonymous_id", "value": app} in profile["identifiers"]
        assert set(profile["message_ids"]) == set(person.message_ids)
    # Only Ada's alias merged two profiles; Bob's brought the app's id before it had any.
    [ada_alias] = [c.message_id for c in shop.calls if c.type == "alias" and c.person == ada.key]
    assert truth["alias_merges"] == [ada_alias]
    assert truth["refused_aliases"] == []


def test_an_alias_of_a_laptop_another_customer_holds_is_refused_for_the_user_id_limit() -> None:
    shop = Shop(seed=6, end=END)
    _, laptop = customer(shop, 1, "ada")
    bob = shop.new_person()
    bob.anonymous_ids.append(laptop)
    shop.sign_up(bob, at(5), anonymous_id=laptop, user_id="u-bob", email="bob@example.com")
    shop.alias(bob, at(6), previous_id=laptop)
    shop.alias(bob, at(7), previous_id="undefined")
    truth = shop.world().truth

    assert len(truth["profiles"]) == 2
    [refused, _] = [c.message_id for c in shop.calls if c.type == "alias"]
    assert truth["refused_aliases"] == [
        {
            "message_id": refused,
            "previous": {"type": "anonymous_id", "value": laptop},
            "reason": "limit:user_id",
        }
    ]
    assert truth["alias_merges"] == []
    # The junk id is blocked as both of its readings and merges nothing either.
    assert truth["blocked_identifiers"] == [
        {"type": "anonymous_id", "value": "undefined"},
        {"type": "user_id", "value": "undefined"},
    ]
    bob_profile = next(
        p for p in truth["profiles"] if {"type": "user_id", "value": "u-bob"} in p["identifiers"]
    )
    assert {c.message_id for c in shop.calls if c.type == "alias"} <= set(bob_profile["message_ids"])


def test_an_account_takes_each_trait_from_its_latest_group_call_and_lists_its_buyers() -> None:
    shop = Shop(seed=7, end=END)
    ada, ada_laptop = customer(shop, 1, "ada")
    bob, bob_laptop = customer(shop, 2, "bob")
    customer(shop, 3, "cyd")
    joined = {"name": ACME.name, "industry": ACME.industry, "employees": 120, "plan": "team"}
    shop.join_account(bob, at(40), anonymous_id=bob_laptop, company=ACME, traits={"plan": "enterprise"})
    shop.join_account(ada, at(30), anonymous_id=ada_laptop, company=ACME, traits=joined)
    truth = shop.world().truth

    [account] = truth["accounts"]
    assert account == {
        "group_id": shop.group_id(ACME),
        "traits": {**joined, "plan": "enterprise"},
        "people": [ada.key, bob.key],
    }
    members = [p["people"] for p in truth["profiles"] if p["accounts"] == [shop.group_id(ACME)]]
    assert members == [[ada.key], [bob.key]]
    assert (ada.account, bob.account) == (shop.group_id(ACME), shop.group_id(ACME))


def test_quote_requests_spelling_one_company_apart_are_the_duplicate_pairs() -> None:
    shop = Shop(seed=8, end=END)
    devices = []
    for n, spelling in enumerate(("IBM", "I.B.M.", "ACME Widgets")):
        lead = shop.new_person()
        devices.append(shop.new_device(lead))
        shop.request_quote(lead, at(n), anonymous_id=devices[-1], company=spelling)
    truth = shop.world().truth

    assert [p["company"] for p in truth["profiles"]] == ["ibm", "ibm", "acme"]
    assert truth["duplicate_company_pairs"] == [
        {
            "company": "ibm",
            "identifiers": [
                {"type": "anonymous_id", "value": devices[0]},
                {"type": "anonymous_id", "value": devices[1]},
            ],
        }
    ]


def test_a_refusal_of_profiling_marks_the_person_and_the_profile_holding_it() -> None:
    shop = Shop(seed=9, end=END)
    ada = shop.new_person()
    laptop = shop.new_device(ada)
    shop.browse(ada, at(1), {"anonymousId": laptop})
    shop.sign_up(
        ada, at(2), anonymous_id=laptop, user_id="u-ada", email="ada@example.com", refuses_profiling=True
    )
    customer(shop, 3, "bob")
    truth = shop.world().truth

    assert truth["profiling_refused_people"] == [ada.key]
    assert [p["profiling_refused"] for p in truth["profiles"]] == [True, False]
    # The consent service reads the choice as a refusal of profiling, and of no other gated purpose.
    [choice] = [c.body["context"] for c in shop.calls if c.body.get("context", {}).get("consent")]
    preferences = preferences_of(choice)
    assert preferences is not None
    decisions = decisions_from_preferences(
        preferences=preferences,
        category_purposes=DEFAULT_CATEGORY_PURPOSES,
        catalogue=Catalogue(purposes=tuple(DEFAULT_PURPOSES), channels=tuple(DEFAULT_CHANNELS)),
    )
    ledger = {
        f"{purpose}:{channel}": "granted" if yes else "denied"
        for (purpose, channel), yes in decisions.items()
    }
    assert excluded_from(PROFILING, ledger)
    assert not excluded_from(PERSONALISATION, ledger)
    assert not excluded_from(ANALYTICS, ledger)


def test_every_order_counts_on_exactly_one_profile_and_a_small_world_has_each_kind() -> None:
    truth = simulate(seed=7, people=60, end=END).truth
    counted = [o["order_id"] for p in truth["profiles"] for o in p["order_details"]]
    placed = [o for p in truth["people"] for o in p["orders"]]
    assert sorted(counted) == sorted(o["order_id"] for o in placed)
    assert len(counted) == len(set(counted)) == truth["totals"]["orders"]
    assert {o["state"] for o in placed} == {"completed", "partially_refunded", "refunded", "cancelled"}
    assert any(o["sent_by"] == ["web", "pos"] for o in placed), "the ERP sends web orders again"
    assert {o["currency"] for o in placed} >= {"EUR", "GBP", "CHF"}
    assert truth["accounts"], "a B2B buyer"
    assert truth["duplicate_company_pairs"], "two quote requests for one company"
    assert truth["refused_aliases"], "the household laptop's second user aliases it"
    assert truth["profiling_refused_people"]
