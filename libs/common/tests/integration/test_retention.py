"""The record of processed events on the real PostgreSQL: records past the retention window are
pruned in bounded batches; newer ones, which a redelivery could still ask for, stay."""

from __future__ import annotations

from datetime import timedelta

import pytest
import sqlalchemy as sa
from cdp_common.db import create_session_factory, processed_events_table, record_processed_many, transaction
from cdp_common.retention import prune_processed_events
from sqlalchemy.ext.asyncio import AsyncEngine

pytestmark = pytest.mark.integration


async def test_records_past_the_window_are_pruned_in_batches_and_newer_ones_kept(
    schema_engine: AsyncEngine,
) -> None:
    sessions = create_session_factory(schema_engine)
    async with transaction(sessions) as session:
        await record_processed_many(
            session=session, consumer="profile", event_ids=[f"old-{n}" for n in range(23)]
        )
        await session.execute(
            processed_events_table.update().values(processed_at=sa.func.now() - sa.text("interval '9 days'"))
        )
        await record_processed_many(
            session=session, consumer="profile", event_ids=[f"new-{n}" for n in range(5)]
        )
        await record_processed_many(session=session, consumer="segment", event_ids=["old-0"])

    async with sessions() as session:
        deleted = await prune_processed_events(session=session, keep=timedelta(days=8), batch=4)

    assert deleted == 23
    async with sessions() as session:
        kept = (await session.execute(sa.select(processed_events_table.c.event_id))).scalars().all()
    assert sorted(kept) == sorted([f"new-{n}" for n in range(5)] + ["old-0"])
    # A pruned id is a new event again only after the topics stopped keeping it: a redelivery
    # within the window is still recognised.
    async with transaction(sessions) as session:
        fresh = await record_processed_many(session=session, consumer="profile", event_ids=["new-1", "x"])
    assert fresh == {"x"}
