"""Segment's own scheduler: it queues the clock-driven work as jobs, and watches the computed traits
that segments wait for (`computed_traits.watch_computed_traits`).

Event windows are profile's to expire; what segment re-evaluates with time is what
depends on the clock itself (relative dates on traits, age, birthdays) and the
lifecycle stages. `tick` does one round at the clock's time: it queues a lifecycle run, the
evaluation of the segments on the clock (when there are any) and, when due, the other models'
runs; each is a job (never two of one kind, or of one model, queued or running at once), so the
round itself is a few short statements whatever the size of the base. Tests call it with a
controlled clock, the service calls it every `scheduler_interval_s`.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from datetime import datetime, timedelta
from typing import Any

from sqlalchemy.ext.asyncio import AsyncSession, async_sessionmaker

from cdp_segment.computed_traits import ComputedTraitsClient, watch_computed_traits
from cdp_segment.handlers import SegmentContext
from cdp_segment.jobs import submit_clock_recompute
from cdp_segment.metrics import SEGMENT_MEMBERS
from cdp_segment.models import MODEL_JOB, submit_model_run
from cdp_segment.store import count_members
from cdp_segment.store import models as runs

logger = logging.getLogger(__name__)
PERIODIC_MODELS = ("rfm", "clusters", "clv")
BUSY_WATCH_INTERVAL_S = 0.1


class Scheduler:
    """Queues the clock-driven work in rounds."""

    def __init__(
        self,
        *,
        session_factory: async_sessionmaker[AsyncSession],
        context: SegmentContext,
        computed_traits: ComputedTraitsClient,
        interval_s: float = 60.0,
        models_interval_s: float = 3600.0,
        watch_interval_s: float = 1.0,
    ) -> None:
        self._session_factory = session_factory
        self._context = context
        self._computed_traits = computed_traits
        self._interval_s = interval_s
        self._models_every = timedelta(seconds=models_interval_s)
        self._watch_interval_s = watch_interval_s
        self._task: asyncio.Task[None] | None = None
        self._watch: asyncio.Task[None] | None = None
        self._watch_kick = asyncio.Event()

    def kick_watch(self, _kind: str | None = None) -> None:
        """Watch the computed traits now (a segment was submitted) instead of at the next interval."""
        self._watch_kick.set()

    async def tick(self, now: datetime | None = None) -> dict[str, Any]:
        """Do one round at an instant: queue lifecycle, the clock segments, and the models when due;
        return the jobs queued by name."""
        at = now or self._context.clock()
        report: dict[str, Any] = {}
        async with self._session_factory() as session, session.begin():
            job, new = await submit_model_run(session=session, name="lifecycle", at=at)
            if new:
                report["lifecycle"] = job
            catalog = await self._context.catalog.current(session)
            if catalog.affected_by({"clock"}):
                clock = await submit_clock_recompute(session=session, at=at)
                if clock is not None:
                    report["clock_segments"] = clock
            for name in PERIODIC_MODELS:
                if await self._due(session, name, at):
                    job, new = await submit_model_run(session=session, name=name, at=at)
                    if new:
                        report[name] = job
        return report

    async def _due(self, session: AsyncSession, name: str, at: datetime) -> bool:
        """Whether a model's last run (by any replica, or asked for) started `models_interval_s` before `at`."""
        latest = await runs.latest_model_job(session=session, kind=MODEL_JOB, model=name)
        if latest is None:
            return True
        return at - runs.parse_at(latest["params"]["at"]) >= self._models_every

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
        # While profile builds a trait a segment waits for, it is asked more often, so the fill
        # starts within a fraction of a second of profile's job ending.
        while True:
            interval = self._watch_interval_s
            self._watch_kick.clear()
            try:
                progress = await watch_computed_traits(
                    session_factory=self._session_factory, client=self._computed_traits
                )
                if any(p.state in ("waiting", "building") for p in progress.values()):
                    interval = min(interval, BUSY_WATCH_INTERVAL_S)
            except asyncio.CancelledError:
                raise
            except Exception:
                logger.exception("watching computed traits failed; trying again shortly")
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(self._watch_kick.wait(), interval)

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
