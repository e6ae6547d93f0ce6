"""The consent service's background work, off any consumer transaction: expiring unconfirmed
opt-ins, and assembling access bundles over HTTP for requests that are ready."""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Awaitable, Callable
from datetime import UTC, datetime

from cdp_common.db import transaction
from sqlalchemy.ext.asyncio import AsyncSession, async_sessionmaker

from cdp_consent import store

logger = logging.getLogger(__name__)

Job = Callable[[], Awaitable[object]]


class Scheduler:
    """Runs the service's periodic jobs in one background task until stopped."""

    def __init__(self, *, session_factory: async_sessionmaker[AsyncSession], interval_s: float) -> None:
        self._session_factory = session_factory
        self._interval_s = interval_s
        self._jobs: list[tuple[str, Job]] = [("expire_opt_ins", self.expire_opt_ins)]
        self._task: asyncio.Task[None] | None = None

    def add_job(self, name: str, job: Job) -> None:
        """Run a job on every tick, after the ones already added."""
        self._jobs.append((name, job))

    def start(self) -> None:
        """Run the jobs in the background."""
        self._task = asyncio.create_task(self._run(), name="consent-scheduler")

    async def stop(self) -> None:
        """Stop the jobs."""
        if self._task is not None:
            self._task.cancel()
            await asyncio.gather(self._task, return_exceptions=True)
            self._task = None

    async def _run(self) -> None:
        while True:
            for name, job in self._jobs:
                try:
                    await job()
                except asyncio.CancelledError:
                    raise
                except Exception:
                    logger.exception("scheduled job failed; retrying on the next tick", extra={"job": name})
            await asyncio.sleep(self._interval_s)

    async def expire_opt_ins(self) -> int:
        """Mark unconfirmed opt-in requests past their expiry as expired."""
        async with transaction(self._session_factory) as session:
            return await store.expire_opt_ins(session=session, now=datetime.now(UTC))
