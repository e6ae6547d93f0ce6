"""The synthetic shop generator: the same seed gives the same calls and the same truth."""

from __future__ import annotations

import json
from datetime import UTC, datetime, timedelta

from cdp_shop.send import BATCH_EVENTS, chunks
from cdp_shop.world import simulate

END = datetime(2026, 11, 1, tzinfo=UTC)


def test_the_same_seed_gives_the_same_world_and_another_seed_another() -> None:
    first = simulate(seed=7, people=60, end=END)
    again = simulate(seed=7, people=60, end=END)
    other = simulate(seed=8, people=60, end=END)
    assert json.dumps(first.truth, sort_keys=True) == json.dumps(again.truth, sort_keys=True)
    assert [c.body for c in first.calls] == [c.body for c in again.calls]
    assert json.dumps(first.truth, sort_keys=True) != json.dumps(other.truth, sort_keys=True)


def test_the_truth_accounts_for_every_call_and_every_order() -> None:
    world = simulate(seed=3, people=80, end=END)
    people = world.truth["people"]
    owned = [m for p in people for m in p["message_ids"]]
    assert len(owned) == len(set(owned)) == world.truth["totals"]["events"] == len(world.calls)
    sent_ids = {c.body["messageId"] for c in world.calls if c.kind == "tracking"}
    sent_ids |= {f"txn:{c.body['kind']}:{c.body['order_id']}" for c in world.calls if c.kind == "transaction"}
    assert sent_ids == set(owned)
    assert [c.time for c in world.calls] == sorted(c.time for c in world.calls)
    start = END - timedelta(days=90)
    assert all(start <= c.time <= END for c in world.calls)
    for person in people:
        # A refunded order still counts once, worth what was not refunded; a cancelled one not at all.
        kept = [o for o in person["orders"] if o["state"] != "cancelled"]
        for currency, revenue in person["revenue"].items():
            assert revenue == round(sum(o["net"] for o in kept if o["currency"] == currency), 2)
        assert person["order_count"] == len(kept)
        if person["user_id"]:
            assert person["emails"], "every signed-up person has an e-mail"
        assert person["first_seen"] <= person["last_seen"]


def test_the_world_has_every_behaviour_the_tests_rely_on() -> None:
    truth = simulate(seed=42, people=120, end=END).truth
    people = truth["people"]
    assert any(len(p["anonymous_ids"]) > 1 and p["user_id"] for p in people), "device changes"
    assert any(p["user_id"] is None and p["anonymous_ids"] for p in people), "anonymous visitors"
    assert any(not p["anonymous_ids"] and p["orders"] for p in people), "store-only customers"
    channels = {o["channel"] for p in people for o in p["orders"]}
    assert channels == {"online", "store"}
    assert any(o["refunded"] for p in people for o in p["orders"])
    assert any(p["emails_clicked"] for p in people)
    assert {b["value"] for b in truth["blocked_identifiers"] if b["type"] == "user_id"}
    assert len({c for p in people for c in p["revenue"]}) > 1


def test_calls_are_chunked_in_order_by_kind() -> None:
    calls = simulate(seed=1, people=40, end=END).calls
    runs = chunks(calls)
    assert [c for _, run in runs for c in run] == calls
    assert all(len(run) <= BATCH_EVENTS and {c.kind for c in run} == {kind} for kind, run in runs)
