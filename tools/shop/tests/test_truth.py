"""The generator's ground truth on small worlds built by hand: each identity rule and each behaviour
gives the profiles the published rules say, and computed traits follow the events of each profile."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta
from decimal import Decimal
from typing import Any

from cdp_shop.identity import IdentityGraph, Key, Rules
from cdp_shop.world import Person, Shop, simulate

END = datetime(2026, 11, 1, tzinfo=UTC)
T = END - timedelta(days=60)


def at(hours: float) -> datetime:
    """Return a time `hours` after the start of the hand-made story."""
    return T + timedelta(hours=hours)


def groups(truth: dict[str, Any]) -> list[set[tuple[str, str]]]:
    """Return every expected profile as its set of (type, value) identifiers."""
    return [{(i["type"], i["value"]) for i in p["identifiers"]} for p in truth["profiles"]]


def profile_of(truth: dict[str, Any], kind: str, value: str) -> dict[str, Any]:
    """Return the expected profile that holds one identifier."""
    profiles: list[dict[str, Any]] = truth["profiles"]
    [found] = [p for p in profiles if {"type": kind, "value": value} in p["identifiers"]]
    return found


def message_ids(person: Person, since: int = 0) -> set[str]:
    """Return the messageIds of a person's events from the `since`-th on."""
    return set(person.message_ids[since:])


def signed_up(shop: Shop, hours: float, *, user_id: str, email: str) -> tuple[Person, str]:
    """Build a person who browses a new device and signs up on it; return the person and the device."""
    person = shop.new_person()
    device = shop.new_device(person)
    when = shop.browse(person, at(hours), {"anonymousId": device})
    shop.sign_up(person, when, anonymous_id=device, user_id=user_id, email=email)
    return person, device


def test_devices_that_only_ever_carry_a_junk_user_id_stay_apart() -> None:
    shop = Shop(seed=1, end=END)
    visitor = shop.new_person()
    phone, laptop = shop.new_device(visitor), shop.new_device(visitor)
    shop.browse(visitor, at(1), {"anonymousId": phone, "userId": "undefined"})
    shop.browse(visitor, at(5), {"anonymousId": laptop, "userId": "undefined"})
    shop.browse(visitor, at(9), {"anonymousId": laptop, "userId": "null"})
    truth = shop.world().truth

    assert groups(truth) == [{("anonymous_id", phone)}, {("anonymous_id", laptop)}]
    assert [p["people"] for p in truth["profiles"]] == [[visitor.key], [visitor.key]]
    assert truth["blocked_identifiers"] == [
        {"type": "user_id", "value": "null"},
        {"type": "user_id", "value": "undefined"},
    ]
    assert sum(p["event_count"] for p in truth["profiles"]) == len(visitor.message_ids)


def test_a_sign_up_joins_the_anonymous_history_the_user_id_and_the_normalised_email() -> None:
    shop = Shop(seed=2, end=END)
    ada, laptop = signed_up(shop, 1, user_id="u-ada", email=" Ada@Example.COM ")
    phone = shop.new_device(ada)
    shop.browse(ada, at(30), {"anonymousId": phone})
    shop.log_in(ada, at(31), anonymous_id=phone)
    truth = shop.world().truth

    assert groups(truth) == [
        {
            ("user_id", "u-ada"),
            ("email", "ada@example.com"),
            ("anonymous_id", laptop),
            ("anonymous_id", phone),
        }
    ]
    [profile] = truth["profiles"]
    assert set(profile["message_ids"]) == message_ids(ada)
    assert profile["event_counts"]["Signed Up"] == 1
    assert profile["page_views"] == sum(
        1 for c in shop.calls if c.kind == "tracking" and c.body["type"] == "page"
    )


def test_a_changed_email_stays_with_the_profile_and_later_purchases_by_it_join_it() -> None:
    shop = Shop(seed=3, end=END)
    ada, laptop = signed_up(shop, 1, user_id="u-ada", email="ada@example.com")
    shop.change_email(ada, at(10), anonymous_id=laptop, email="Ada@New.example.org")
    shop.store_purchase(ada, at(20), email="ADA@new.example.org")
    shop.email_engagement(ada, at(30), email="ada@example.com", click=True)
    truth = shop.world().truth

    assert groups(truth) == [
        {
            ("user_id", "u-ada"),
            ("email", "ada@example.com"),
            ("email", "ada@new.example.org"),
            ("anonymous_id", laptop),
        }
    ]
    assert truth["people"][0]["emails"] == ["ada@example.com", "ada@new.example.org"]
    assert truth["profiles"][0]["event_count"] == len(ada.message_ids)


def test_an_email_past_the_limit_is_dropped_and_a_purchase_by_it_alone_is_somebody_new() -> None:
    shop = Shop(seed=4, end=END)
    ada, laptop = signed_up(shop, 1, user_id="u-ada", email="a0@example.com")
    for n in range(1, 6):
        shop.change_email(ada, at(10 + n), anonymous_id=laptop, email=f"a{n}@example.com")
    shop.store_purchase(ada, at(30), email="a5@example.com")
    truth = shop.world().truth

    emails = [f"a{n}@example.com" for n in range(5)]
    kept = {("user_id", "u-ada"), ("anonymous_id", laptop)} | {("email", e) for e in emails}
    assert groups(truth) == [kept, {("email", "a5@example.com")}]
    # The identify that named the sixth e-mail still belongs to her profile; only the e-mail was dropped.
    assert profile_of(truth, "user_id", "u-ada")["event_count"] == len(ada.message_ids) - 1
    assert profile_of(truth, "email", "a5@example.com")["orders"] == 1


def test_a_shared_device_stays_with_its_first_known_customer_and_never_merges_two() -> None:
    shop = Shop(seed=5, end=END)
    ada, laptop = signed_up(shop, 1, user_id="u-ada", email="ada@example.com")
    bob = shop.new_person()
    bob.anonymous_ids.append(laptop)
    before = len(bob.message_ids)
    when = shop.browse(bob, at(40), {"anonymousId": laptop})
    anonymous_part = message_ids(bob, before)
    shop.sign_up(bob, when, anonymous_id=laptop, user_id="u-bob", email="bob@example.com")
    signed = message_ids(bob, before) - anonymous_part
    shop.browse(bob, at(50), {"anonymousId": laptop, "userId": "u-bob"})
    truth = shop.world().truth

    assert groups(truth) == [
        {("user_id", "u-ada"), ("email", "ada@example.com"), ("anonymous_id", laptop)},
        {("user_id", "u-bob"), ("email", "bob@example.com")},
    ]
    ada_profile = profile_of(truth, "user_id", "u-ada")
    bob_profile = profile_of(truth, "user_id", "u-bob")
    # Bob's anonymous browsing on Ada's laptop looks like Ada to any platform.
    assert set(ada_profile["message_ids"]) == message_ids(ada) | anonymous_part
    assert ada_profile["people"] == [ada.key, bob.key]
    assert signed <= set(bob_profile["message_ids"])
    assert bob_profile["people"] == [bob.key]


def test_a_device_browsed_anonymously_joins_whoever_signs_up_on_it_first() -> None:
    shop = Shop(seed=6, end=END)
    guest = shop.new_person()
    laptop = shop.new_device(guest)
    shop.browse(guest, at(1), {"anonymousId": laptop})
    bob = shop.new_person()
    bob.anonymous_ids.append(laptop)
    shop.sign_up(bob, at(10), anonymous_id=laptop, user_id="u-bob", email="bob@example.com")
    truth = shop.world().truth

    assert groups(truth) == [{("user_id", "u-bob"), ("email", "bob@example.com"), ("anonymous_id", laptop)}]
    assert truth["profiles"][0]["people"] == [guest.key, bob.key]


def test_a_kiosk_that_ties_more_profiles_than_the_threshold_is_quarantined_where_it_is() -> None:
    shop = Shop(seed=7, end=END)
    users = [signed_up(shop, n, user_id=f"u-{n}", email=f"c{n}@example.com")[0] for n in range(12)]
    for n, person in enumerate(users[:10]):
        shop.kiosk_sign_in(person, at(100 + n))
    ten = shop.world().truth
    assert ten["quarantined_identifiers"] == []
    shop.kiosk_sign_in(users[10], at(120))
    shop.kiosk_sign_in(users[11], at(121))
    truth = shop.world().truth

    kiosk = shop.kiosk()
    assert truth["quarantined_identifiers"] == [{"type": "anonymous_id", "value": kiosk}]
    assert ("anonymous_id", kiosk) in groups(truth)[0]
    assert len(truth["profiles"]) == 12
    for n, person in enumerate(users):
        assert set(profile_of(truth, "user_id", f"u-{n}")["message_ids"]) == message_ids(person)


def test_a_quarantined_identifier_no_longer_merges_anybody() -> None:
    graph = IdentityGraph(Rules(supernode_threshold=2))
    kiosk = Key("anonymous_id", "kiosk")
    for n in range(3):
        graph.resolve(event=n, keys=[Key("user_id", f"u{n}"), kiosk])
    assert graph.result().quarantined == {kiosk}
    graph.resolve(event=3, keys=[Key("email", "walk-in@example.com"), kiosk])
    result = graph.result()
    assert {Key("email", "walk-in@example.com")} in result.groups.values()
    assert len(result.groups) == 4


def test_a_conflict_drops_the_lowest_priority_identifiers_first() -> None:
    graph = IdentityGraph()
    graph.resolve(event=0, keys=[Key("user_id", "u1"), Key("email", "one@example.com")])
    graph.resolve(
        event=1,
        keys=[Key("anonymous_id", "new-device"), Key("email", "one@example.com"), Key("user_id", "u2")],
    )
    result = graph.result()
    # The new device goes first, then the e-mail of u1: u2 is left on its own, and the device with nobody.
    assert sorted(map(sorted, result.groups.values())) == [
        [Key("email", "one@example.com"), Key("user_id", "u1")],
        [Key("user_id", "u2")],
    ]
    assert graph.resolve(event=2, keys=[Key("user_id", "null")]) is None
    assert graph.result().dropped_events == [2]


def test_blocked_loyalty_cards_tie_no_two_store_customers() -> None:
    shop = Shop(seed=8, end=END)
    for n in range(2):
        person = shop.new_person()
        shop.store_purchase(person, at(n), email=f"walk{n}@example.com", loyalty_card="-1")
    truth = shop.world().truth

    assert groups(truth) == [{("email", "walk0@example.com")}, {("email", "walk1@example.com")}]
    assert truth["blocked_identifiers"] == [{"type": "loyalty_card", "value": "-1"}]


def test_computed_traits_follow_the_orders_and_refunds_of_the_profile() -> None:
    shop = Shop(seed=9, end=END)
    ada, laptop = signed_up(shop, 1, user_id="u-ada", email="ada@example.com")
    shop.online_purchase(ada, at(10), anonymous_id=laptop, refund_after=timedelta(days=2))
    shop.store_purchase(ada, at(100), email="ada@example.com")
    shop.store_purchase(ada, at(200), email="ada@example.com")
    truth = shop.world().truth

    [profile] = truth["profiles"]
    refunded, first_store, last_store = ada.orders
    kept = [first_store, last_store]
    net: dict[str, Decimal] = {}
    for order in kept:
        net[order["currency"]] = net.get(order["currency"], Decimal(0)) + Decimal(str(order["total"]))
    assert profile["orders"] == 3
    assert profile["refunded_orders"] == 1
    assert {c: v for c, v in profile["revenue"].items() if v} == {c: float(v) for c, v in net.items()}
    assert profile["revenue"].get(refunded["currency"], 0.0) == float(net.get(refunded["currency"], 0))
    assert profile["last_order_date"] == last_store["time"][:10]
    bought: dict[str, int] = {}
    for order in kept:
        for item in order["items"]:
            bought[item["category"]] = bought.get(item["category"], 0) + item["quantity"]
    assert profile["favourite_category"] == min(bought, key=lambda c: (-bought[c], c))
    methods = [c.body["payment_method"] for c in shop.calls if c.kind == "transaction"]
    assert profile["preferred_payment_method"] == min(methods, key=lambda m: (-methods.count(m), m))
    assert profile["event_counts"]["Order Completed"] == 3
    assert profile["event_counts"]["Order Refunded"] == 1
    assert profile["first_seen"] == truth["people"][0]["first_seen"]
    assert profile["last_seen"] == truth["people"][0]["last_seen"]


def test_every_generated_event_lands_in_exactly_one_expected_profile() -> None:
    truth = simulate(seed=11, people=300, end=END).truth
    placed = [m for p in truth["profiles"] for m in p["message_ids"]] + truth["unresolved_message_ids"]
    assert len(placed) == len(set(placed)) == truth["totals"]["events"]
    assert all(sum(1 for i in p["identifiers"] if i["type"] == "user_id") <= 1 for p in truth["profiles"])
    held = [(i["type"], i["value"]) for p in truth["profiles"] for i in p["identifiers"]]
    assert len(held) == len(set(held))
    blocked = {(b["type"], b["value"]) for b in truth["blocked_identifiers"]}
    assert blocked
    assert blocked.isdisjoint(held)


def test_a_small_world_already_has_every_behaviour_the_scenario_relies_on() -> None:
    truth = simulate(seed=7, people=60, end=END).truth
    assert any(len(p["people"]) > 1 for p in truth["profiles"]), "a device shared by two people"
    assert len(truth["profiles"]) > len(truth["people"]), "devices of junk-only visitors stay apart"
    assert any(len([i for i in p["identifiers"] if i["type"] == "email"]) > 1 for p in truth["profiles"]), (
        "an e-mail change"
    )
    assert any(p["refunded_orders"] for p in truth["profiles"])
