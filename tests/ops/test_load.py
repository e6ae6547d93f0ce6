"""`cdp load`: a generated base is what profile and segment would have built from its events, and a
rerun adds nothing."""

from __future__ import annotations

import importlib.util
from collections.abc import AsyncIterator
from dataclasses import dataclass
from datetime import UTC, datetime
from decimal import Decimal
from pathlib import Path

import asyncpg
import pytest
from cdp_cli.load import (
    NotEnoughDisk,
    check_disk,
    load_base,
    person,
    plain_url,
    render_piece,
)
from cdp_common.db import create_engine, create_session_factory, json_value
from cdp_common.migrations import migrate
from cdp_common.settings import PlatformSettings
from cdp_common.testing import PlatformUnderTest, private_database
from cdp_profile import store as profile_store
from cdp_profile.domain.computed import StoredEvent, book_order, derive_builtin, fold_builtin
from cdp_profile.domain.identity import IdentifierKey
from cdp_profile.domain.orders import amend, entry_of

# The services' migrations, found without importing the services' apps.
PROFILE_MIGRATIONS, SEGMENT_MIGRATIONS = (
    Path(str(getattr(importlib.util.find_spec(package), "origin", ""))).parents[2] / "migrations"
    for package in ("cdp_profile", "cdp_segment")
)
PEOPLE = 2_000
SEED = 7
NOW = datetime(2026, 11, 20, 12, tzinfo=UTC)


def as_profile_keeps(events: list[StoredEvent]) -> dict[str, object]:
    """Return the built-in state profile makes of a loaded person's events, each order recorded once
    (valued in the reporting currency, EUR, and kept without a rate in any other)."""
    state: dict[str, object] = {}
    for event in events:
        state = fold_builtin(state, event)
        order = amend(None, event, source_id="src_load")
        if order is not None:
            value = order.net.quantize(Decimal("0.01")) if order.currency_code == "EUR" else None
            state = book_order(state, order.order_id, entry_of(order, value))
    return state


def test_a_generated_person_s_aggregates_are_what_profile_s_folds_make_of_their_events() -> None:
    for index in range(400):
        someone = person(seed=SEED, index=index, events_per_profile=10, years=2, now=NOW)
        state = as_profile_keeps(
            [StoredEvent(e.event_id, e.type, e.name, e.timestamp, e.properties) for e in someone.events]
        )
        assert someone.aggregates == state, index
        assert someone.computed == derive_builtin(state), index
        assert len(someone.events) == 10


def test_people_are_the_same_whatever_else_is_drawn() -> None:
    alone = render_piece(seed=SEED, indexes=[5], events_per_profile=10, years=2, now=NOW, hash_key="k")
    among = render_piece(seed=SEED, indexes=[4, 5, 6], events_per_profile=10, years=2, now=NOW, hash_key="k")
    for table, rows in alone[2].items():
        assert rows in among[2][table], table
    other_seed = person(seed=SEED + 1, index=5, events_per_profile=10, years=2, now=NOW)
    assert (
        other_seed.profile_id
        != person(seed=SEED, index=5, events_per_profile=10, years=2, now=NOW).profile_id
    )


@pytest.mark.integration
async def test_a_load_the_disk_cannot_take_is_refused_with_what_it_needs(
    platform: PlatformUnderTest, tmp_path: Path
) -> None:
    connection = await asyncpg.connect(platform.database_url)
    try:
        with pytest.raises(NotEnoughDisk, match=r"need about .* free: load at most [0-9,]+ people"):
            await check_disk(
                connection=connection,
                database_url="postgresql://x@127.0.0.1/x",
                profiles=10**12,
                events_per_profile=10,
                data_dir=tmp_path,
            )
        fits = await check_disk(
            connection=connection,
            database_url="postgresql://x@127.0.0.1/x",
            profiles=10,
            events_per_profile=10,
            data_dir=tmp_path,
        )
        assert fits is None
    finally:
        await connection.close()


@dataclass
class LoadedBase:
    """A private database with profile's and segment's schemas, loaded once."""

    database_url: str
    hash_key: str
    seconds: float


@pytest.fixture(scope="module")
async def loaded(platform: PlatformUnderTest) -> AsyncIterator[LoadedBase]:
    async with private_database(platform, "load") as database_url:
        url = PlatformSettings(database_url=database_url).database_url
        for schema, location in (("profile", PROFILE_MIGRATIONS), ("segment", SEGMENT_MIGRATIONS)):
            engine = create_engine(database_url=url, schema=schema, pool_size=1)
            try:
                await migrate(engine=engine, schema=schema, script_location=location)
            finally:
                await engine.dispose()
        result = await load_base(
            database_url=database_url, profiles=PEOPLE, hash_key=platform.hash_key, seed=SEED, now=NOW
        )
        assert (result.profiles, result.events, result.skipped) == (PEOPLE, PEOPLE * 10, 0)
        assert result.bytes_after > result.bytes_before
        yield LoadedBase(database_url=database_url, hash_key=platform.hash_key, seconds=result.seconds)


@pytest.mark.integration
async def test_profile_finds_a_loaded_person_by_e_mail_with_their_traits_computed_traits_and_events(
    loaded: LoadedBase,
) -> None:
    url = PlatformSettings(database_url=loaded.database_url).database_url
    engine = create_engine(database_url=url, schema="profile", pool_size=1)
    sessions = create_session_factory(engine)
    try:
        for index in (0, 1, 977, PEOPLE - 1):
            someone = person(seed=SEED, index=index, events_per_profile=10, years=2, now=NOW)
            async with sessions() as session:
                found = await profile_store.resolve_identifier(
                    session=session, key=IdentifierKey("email", someone.email)
                )
                assert found == someone.profile_id
                for kind, value in someone.identifiers:
                    key = IdentifierKey(kind, value)
                    assert await profile_store.resolve_identifier(session=session, key=key) == found
                profile = await profile_store.load_profile(session=session, profile_id=found)
                assert profile is not None
                assert {name: trait.value for name, trait in profile.traits.items()} == someone.traits
                assert profile.version == len(someone.events)
                assert profile.computed == someone.computed
                assert profile.computed["orders"] == sum(e.name == "Order Completed" for e in someone.events)
                events = await profile_store.list_events(
                    session=session,
                    profile_id=found,
                    event_type=None,
                    name=None,
                    since=None,
                    until=None,
                    after=None,
                    limit=50,
                )
            assert sorted(e["event_id"] for e in events) == sorted(e.event_id for e in someone.events)
    finally:
        await engine.dispose()

    # What profile folds from the stored events (JSON read back as the service reads it) is what was loaded.
    connection = await asyncpg.connect(plain_url(loaded.database_url))
    try:
        profiles = await connection.fetch(
            "SELECT id, aggregates::text AS aggregates, computed::text AS computed FROM profile.profiles"
            " ORDER BY id LIMIT 200"
        )
        for row in profiles:
            rows = await connection.fetch(
                "SELECT event_id, type, name, timestamp, properties::text AS properties FROM profile.events"
                " WHERE profile_id = $1 ORDER BY timestamp, seq",
                row["id"],
            )
            state = as_profile_keeps(
                [
                    StoredEvent(
                        r["event_id"], r["type"], r["name"], r["timestamp"], json_value(r["properties"])
                    )
                    for r in rows
                ]
            )
            assert json_value(row["aggregates"]) == state
            assert json_value(row["computed"]) == derive_builtin(state)
            orders = await connection.fetch(
                "SELECT order_id, state, net::text AS net, value::text AS value FROM profile.orders"
                " WHERE profile_id = $1",
                row["id"],
            )
            book = state.get("order_book", {})
            assert isinstance(book, dict)
            assert {o["order_id"]: (o["state"], o["net"], o["value"]) for o in orders} == {
                order_id: (entry["state"], entry["net"], entry["value"]) for order_id, entry in book.items()
            }
    finally:
        await connection.close()


@pytest.mark.integration
async def test_segment_s_copy_holds_every_loaded_profile_as_profile_would_have_published_it(
    loaded: LoadedBase,
) -> None:
    connection = await asyncpg.connect(plain_url(loaded.database_url))
    try:
        profile_ids = {r["id"] for r in await connection.fetch("SELECT id FROM profile.profiles")}
        copies = {
            r["profile_id"]: r
            for r in await connection.fetch(
                "SELECT profile_id, version, traits::text AS traits, computed::text AS computed"
                " FROM segment.known_profiles"
            )
        }
    finally:
        await connection.close()
    assert len(profile_ids) >= PEOPLE
    assert set(copies) == profile_ids
    someone = person(seed=SEED, index=42, events_per_profile=10, years=2, now=NOW)
    copy = copies[someone.profile_id]
    assert copy["version"] == len(someone.events)
    assert json_value(copy["traits"]) == someone.traits
    assert json_value(copy["computed"]) == {k: v for k, v in someone.computed.items() if v is not None}


@pytest.mark.integration
async def test_a_rerun_adds_nobody_and_a_longer_one_adds_only_the_missing(loaded: LoadedBase) -> None:
    async def counts() -> tuple[int, int, int, int]:
        connection = await asyncpg.connect(plain_url(loaded.database_url))
        try:
            row = await connection.fetchrow(
                "SELECT (SELECT count(*) FROM profile.profiles) AS p, (SELECT count(*) FROM profile.events) AS e,"
                " (SELECT count(*) FROM profile.identifiers) AS i, (SELECT count(*) FROM segment.known_profiles) AS k"
            )
        finally:
            await connection.close()
        return row["p"], row["e"], row["i"], row["k"]

    async def event_indexes() -> dict[str, str]:
        connection = await asyncpg.connect(plain_url(loaded.database_url))
        try:
            rows = await connection.fetch(
                "SELECT indexname, indexdef FROM pg_indexes WHERE schemaname = 'profile' AND tablename = 'events'"
            )
        finally:
            await connection.close()
        return {r["indexname"]: r["indexdef"] for r in rows}

    before = await counts()
    indexes = await event_indexes()
    # A load killed while it had dropped the secondary indexes: the next run builds them first.
    connection = await asyncpg.connect(plain_url(loaded.database_url))
    try:
        await connection.execute("DROP INDEX profile.events_profile_time")
    finally:
        await connection.close()
    again = await load_base(
        database_url=loaded.database_url, profiles=PEOPLE, hash_key=loaded.hash_key, seed=SEED, now=NOW
    )
    assert (again.profiles, again.events, again.skipped) == (0, 0, PEOPLE)
    assert await counts() == before
    assert await event_indexes() == indexes
    assert any("events_profile_time" in warning for warning in again.warnings)

    # Another anchor in time changes nobody already there: people are found by their ids.
    more = await load_base(
        database_url=loaded.database_url,
        profiles=PEOPLE + 500,
        hash_key=loaded.hash_key,
        seed=SEED,
        now=datetime(2027, 1, 1, tzinfo=UTC),
    )
    assert (more.profiles, more.skipped) == (500, PEOPLE)
    after = await counts()
    assert (after[0], after[1], after[3]) == (PEOPLE + 500, before[1] + 5_000, PEOPLE + 500)
