"""The scheduler of windowed computed traits: recomputes them as their events age out."""

from __future__ import annotations

import asyncio
import contextlib
import logging

from cdp_common.db import transaction
from sqlalchemy.ext.asyncio import AsyncSession, async_sessionmaker

from cdp_profile import handlers
from cdp_profile.context import ProfileContext

logger = logging.getLogger(__name__)

BATCH = 500


class WindowScheduler:
    """Runs `expire_windowed_traits` on an interval; the context's clock decides what is due."""

    def __init__(
        self, *, session_factory: async_sessionmaker[AsyncSession], context: ProfileContext, interval_s: float
    ) -> None:
        self._session_factory = session_factory
        self._context = context
        self._interval_s = interval_s
        self._task: asyncio.Task[None] | None = None

    async def run_once(self) -> int:
        """Expire what is due at the clock's now, batch after batch; return the profiles changed."""
        total = 0
        while True:
            async with transaction(self._session_factory) as session:
                outcome = await handlers.expire_windowed_traits(
                    session=session, context=self._context, limit=BATCH
                )
            total += outcome["changed"]
            if outcome["due"] < BATCH:
                return total

    def start(self) -> None:
        """Start the periodic loop in the background."""
        self._task = asyncio.create_task(self._loop(), name="window-scheduler")

    async def stop(self) -> None:
        """Stop the loop."""
        if self._task is not None:
            self._task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._task

    async def _loop(self) -> None:
        while True:
            try:
                await self.run_once()
            except Exception:
                logger.exception("windowed trait expiry failed; retrying on the next tick")
            await asyncio.sleep(self._interval_s)
