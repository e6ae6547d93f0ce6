"""Write-key resolution: one database lookup for concurrent calls with the same key, and none while cached."""

from __future__ import annotations

import asyncio
from typing import Any, cast

from cdp_ingest.handlers import WriteKeys
from sqlalchemy.ext.asyncio import AsyncSession, async_sessionmaker


class FakeSources:
    """A stand-in for the sources table that counts lookups and answers when released."""

    def __init__(self, row: dict[str, Any] | None) -> None:
        self.row = row
        self.lookups = 0
        self.asked = asyncio.Event()
        self.release = asyncio.Event()

    def __call__(self) -> FakeSources:
        return self

    async def __aenter__(self) -> FakeSources:
        return self

    async def __aexit__(self, *_: object) -> None:
        return None

    async def execute(self, _: object) -> FakeSources:
        self.lookups += 1
        self.asked.set()
        await self.release.wait()
        return self

    def mappings(self) -> FakeSources:
        return self

    def first(self) -> dict[str, Any] | None:
        return self.row


async def until_asked(sources: FakeSources) -> None:
    """Wait until a lookup reached the database; callers started with it have run up to their wait."""
    await asyncio.wait_for(sources.asked.wait(), timeout=5)


def write_keys(sources: FakeSources, ttl_s: float = 60) -> WriteKeys:
    return WriteKeys(session_factory=cast(async_sessionmaker[AsyncSession], sources), ttl_s=ttl_s)


SOURCE_ROW = {"id": "src_1", "rate_limit_per_s": None, "rate_limit_burst": None, "plan": None}


async def test_concurrent_calls_with_an_uncached_key_share_one_lookup() -> None:
    sources = FakeSources(SOURCE_ROW)
    keys = write_keys(sources)
    waiting = [asyncio.create_task(keys.source_of("wk_a")) for _ in range(50)]
    await until_asked(sources)
    sources.release.set()
    found = await asyncio.gather(*waiting)
    assert sources.lookups == 1
    assert {source.id for source in found if source is not None} == {"src_1"}
    assert (await keys.source_of("wk_a")) == found[0]
    assert sources.lookups == 1


async def test_an_unknown_key_is_cached_as_unknown_and_forget_asks_again() -> None:
    sources = FakeSources(None)
    sources.release.set()
    keys = write_keys(sources)
    assert await keys.source_of("wk_unknown") is None
    assert await keys.source_of("wk_unknown") is None
    assert sources.lookups == 1
    keys.forget()
    sources.row = SOURCE_ROW
    found = await keys.source_of("wk_unknown")
    assert found is not None
    assert found.id == "src_1"
    assert sources.lookups == 2


async def test_a_caller_that_gives_up_does_not_cancel_the_others_lookup() -> None:
    sources = FakeSources(SOURCE_ROW)
    keys = write_keys(sources)
    impatient = asyncio.create_task(keys.source_of("wk_b"))
    patient = asyncio.create_task(keys.source_of("wk_b"))
    await until_asked(sources)
    impatient.cancel()
    sources.release.set()
    found = await patient
    assert found is not None
    assert found.id == "src_1"
    assert impatient.cancelled()
    assert sources.lookups == 1


async def test_a_lookup_begun_before_forget_is_not_cached_after_it() -> None:
    sources = FakeSources(None)
    keys = write_keys(sources)
    stale = asyncio.create_task(keys.source_of("wk_c"))
    await until_asked(sources)
    keys.forget()
    sources.row = SOURCE_ROW
    sources.release.set()
    await stale
    found = await keys.source_of("wk_c")
    assert found is not None
    assert found.id == "src_1"
    assert sources.lookups == 2
