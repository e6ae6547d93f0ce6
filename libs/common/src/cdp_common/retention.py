"""How long the record of processed events is kept, and its pruning.

Consumers are idempotent through `processed_events`: an event id is recorded in the same
transaction as the event's effect, so a redelivered event is recognised. A redelivery can only
come from the events' topics, which keep a message 7 days, so a record older than
`processed_events_keep_days` (8 by default, never below 7) can never be asked for again. The
pruning deletes such records in bounded batches, each its own short transaction, touching only
rows no consumer writes any more: the consumers never wait for it. It is one of the periodic
jobs the runtime runs in every service (`cdp_common.periodic`).
"""

from __future__ import annotations

import asyncio
import logging
from datetime import timedelta

import sqlalchemy as sa
from prometheus_client import Counter
from sqlalchemy.ext.asyncio import AsyncSession

from cdp_common.periodic import PeriodicJob

logger = logging.getLogger(__name__)

PRUNED = Counter(
    "cdp_processed_events_pruned_total",
    "Records of processed events deleted after the retention window.",
    ["service"],
)

# The oldest records first, a batch at a time; the BRIN index on processed_at finds them.
_PRUNE_BATCH = sa.text(
    """
    DELETE FROM processed_events WHERE ctid = ANY (ARRAY(
      SELECT ctid FROM processed_events
       WHERE processed_at < now() - CAST(:keep AS interval)
       LIMIT :batch
    ))
    """
)


async def prune_processed_events(*, session: AsyncSession, keep: timedelta, batch: int = 5000) -> int:
    """Delete the records older than `keep`, committing every `batch` rows; return how many."""
    deleted = 0
    while True:
        result = await session.execute(_PRUNE_BATCH, {"keep": keep, "batch": batch})
        await session.commit()
        count = int(getattr(result, "rowcount", 0) or 0)
        deleted += count
        if count < batch:
            return deleted
        await asyncio.sleep(0)  # let the consumers' work in between batches


def pruning_job(*, service: str, keep: timedelta, interval_s: float) -> PeriodicJob:
    """Return the periodic job that prunes the processed-event record every `interval_s`."""

    async def prune(*, session: AsyncSession) -> None:
        deleted = await prune_processed_events(session=session, keep=keep)
        PRUNED.labels(service).inc(deleted)
        if deleted:
            logger.info("pruned processed-event records", extra={"deleted": deleted})

    return PeriodicJob(name="prune_processed_events", interval_s=interval_s, run=prune)
