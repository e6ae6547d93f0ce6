"""How long the record of processed events is kept, and its pruning.

Consumers are idempotent through `processed_events`: an event id is recorded in the same
transaction as the event's effect, so a redelivered event is recognised. A redelivery can only
come from the events' topics, which keep a message 7 days, so a record older than
`processed_events_keep_days` (8 by default, never below 7) can never be asked for again. The
pruner deletes such records in bounded batches, each its own short transaction, touching only
rows no consumer writes any more: the consumers never wait for it.
"""

from __future__ import annotations

import asyncio
import logging
from datetime import timedelta

import sqlalchemy as sa
from prometheus_client import Counter
from sqlalchemy.ext.asyncio import AsyncSession, async_sessionmaker

from cdp_common.db import transaction

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


async def prune_processed_events(
    *, session_factory: async_sessionmaker[AsyncSession], keep: timedelta, batch: int = 5000
) -> int:
    """Delete the records older than `keep`, `batch` rows per transaction; return how many."""
    deleted = 0
    while True:
        async with transaction(session_factory) as session:
            result = await session.execute(_PRUNE_BATCH, {"keep": keep, "batch": batch})
        count = int(getattr(result, "rowcount", 0) or 0)
        deleted += count
        if count < batch:
            return deleted
        await asyncio.sleep(0)  # let the consumers' work in between batches


class ProcessedEventsPruner:
    """Prunes the processed-event record every `interval_s` in the background, until stopped."""

    def __init__(
        self,
        *,
        service: str,
        session_factory: async_sessionmaker[AsyncSession],
        keep: timedelta,
        interval_s: float,
    ) -> None:
        self._service = service
        self._session_factory = session_factory
        self._keep = keep
        self._interval_s = interval_s
        self._task: asyncio.Task[None] | None = None

    def start(self) -> None:
        """Start pruning in the background."""
        self._task = asyncio.create_task(self._loop(), name=f"{self._service}-processed-events-pruner")

    async def stop(self) -> None:
        """Stop; a batch in flight rolls back and is deleted by the next round."""
        if self._task is not None:
            self._task.cancel()
            await asyncio.gather(self._task, return_exceptions=True)
            self._task = None

    async def _loop(self) -> None:
        while True:
            try:
                deleted = await prune_processed_events(session_factory=self._session_factory, keep=self._keep)
                PRUNED.labels(self._service).inc(deleted)
                if deleted:
                    logger.info("pruned processed-event records", extra={"deleted": deleted})
            except asyncio.CancelledError:
                raise
            except Exception:
                logger.exception("pruning processed-event records failed; trying again next round")
            await asyncio.sleep(self._interval_s)
