"""Segment's own scheduler: conditions on the clock alone, lifecycle stages and the models,
and the watch of the computed traits that segments wait for (`computed_traits.watch_computed_traits`).

Event windows are profile's to expire; what segment re-evaluates with time is what
depends on the clock itself (relative dates on traits, age, birthdays) and the
lifecycle stages. `tick` does one round at the clock's time; tests call it with a
controlled clock, the service calls it every `scheduler_interval_s`.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from datetime import datetime, timedelta
from typing import Any

from sqlalchemy.ext.asyncio import AsyncSession, async_sessionmaker

from cdp_segment.batch import recompute_segments
from cdp_segment.computed_traits import ComputedTraitsClient, watch_computed_traits
from cdp_segment.handlers import SegmentContext
from cdp_segment.metrics import SEGMENT_MEMBERS
from cdp_segment.models import ModelRunner
from cdp_segment.store import count_members

logger = logging.getLogger(__name__)


class Scheduler:
    """Runs the clock-driven work in rounds."""

    def __init__(
        self,
        *,
        session_factory: async_sessionmaker[AsyncSession],
        context: SegmentContext,
        models: ModelRunner,
        computed_traits: ComputedTraitsClient,
        interval_s: float = 60.0,
        models_interval_s: float = 3600.0,
        watch_interval_s: float = 1.0,
    ) -> None:
        self._session_factory = session_factory
        self._context = context
        self._models = models
        self._computed_traits = computed_traits
        self._interval_s = interval_s
        self._models_every = timedelta(seconds=models_interval_s)
        self._models_ran_at: datetime | None = None
        self._watch_interval_s = watch_interval_s
        self._task: asyncio.Task[None] | None = None
        self._watch: asyncio.Task[None] | None = None

    async def tick(self, now: datetime | None = None) -> dict[str, Any]:
        """Do one round at an instant: lifecycle, clock segments, and the models when due."""
        at = now or self._context.clock()
        report: dict[str, Any] = {"lifecycle": await self._models.run("lifecycle", at)}
        async with self._session_factory() as session, session.begin():
            catalog = await self._context.catalog.current(session)
            report["clock_segments"] = await recompute_segments(
                session=session,
                catalog=catalog,
                keys=catalog.affected_by({"clock"}),
                now=at,
                topic=self._context.segments_topic,
                trigger="clock",
            )
        if self._models_ran_at is None or at - self._models_ran_at >= self._models_every:
            for name in ("rfm", "clusters", "clv"):
                report[name] = await self._models.run(name, at)
            self._models_ran_at = at
        return report

    async def report_sizes(self) -> None:
        """Set the segment-size gauge from the memberships held now."""
        async with self._session_factory() as session:
            sizes = await count_members(session=session)
        for key, members in sizes.items():
            SEGMENT_MEMBERS.labels(key).set(members)

    def start(self) -> None:
        """Run rounds in the background until stopped."""
        self._task = asyncio.create_task(self._loop(), name="segment-scheduler")

    def start_watching(self) -> None:
        """Watch the computed traits segments wait for, every `watch_interval_s`, until stopped."""
        self._watch = asyncio.create_task(self._watch_loop(), name="segment-computed-traits")

    async def stop(self) -> None:
        """Stop the background rounds and the watch."""
        for task in (self._task, self._watch):
            if task is not None:
                task.cancel()
                with contextlib.suppress(asyncio.CancelledError):
                    await task
        self._task = self._watch = None

    async def _watch_loop(self) -> None:
        # Cheap when nothing waits: one query of the requests that are not ready.
        while True:
            try:
                await watch_computed_traits(
                    session_factory=self._session_factory, client=self._computed_traits
                )
            except asyncio.CancelledError:
                raise
            except Exception:
                logger.exception("watching computed traits failed; trying again shortly")
            await asyncio.sleep(self._watch_interval_s)

    async def _loop(self) -> None:
        while True:
            try:
                await self.tick()
                await self.report_sizes()
            except asyncio.CancelledError:
                raise
            except Exception:
                logger.exception("scheduler round failed; trying again next round")
            await asyncio.sleep(self._interval_s)
