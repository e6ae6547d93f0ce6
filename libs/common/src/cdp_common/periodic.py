"""Periodic jobs: what a service does on the clock rather than for a request, a message or a queued job.

A service declares each one in its `jobs.py` as a `PeriodicJob` (a name, an interval, an async
function) and hands them to its runtime, which runs each in a task of its own from start to
stop. Every run gets a separate session, committed when the function returns and rolled back
when it raises; a run that works in several units (batches, or a call to another service
between two writes) commits between them. A run that fails is logged and counted
(`cdp_periodic_job_runs_total{outcome="failed"}`) and the job runs again at its next interval:
nothing a run raises stops the service. Runs of one job never overlap: the next starts
`interval_s` after the previous one started, or as soon as it ends when it took longer.
Stopping lets a run in flight finish (within `stop_grace_s`, then it is cancelled).
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
from collections.abc import Awaitable, Callable, Sequence
from dataclasses import dataclass
from typing import Protocol

from prometheus_client import Counter, Histogram
from sqlalchemy.ext.asyncio import AsyncSession, async_sessionmaker

logger = logging.getLogger(__name__)

PERIODIC_RUNS = Counter(
    "cdp_periodic_job_runs_total",
    "Runs of a service's periodic jobs, by outcome (succeeded, failed).",
    ["service", "job", "outcome"],
)
PERIODIC_DURATION = Histogram(
    "cdp_periodic_job_duration_seconds",
    "Time one run of a periodic job took, failed runs included.",
    ["service", "job"],
    buckets=(0.005, 0.01, 0.05, 0.1, 0.5, 1.0, 5.0, 10.0, 60.0, 300.0),
)


class PeriodicRun(Protocol):
    """One run of a periodic job, given a separate session."""

    def __call__(self, *, session: AsyncSession) -> Awaitable[object]: ...


@dataclass(frozen=True)
class PeriodicJob:
    """Work to run every `interval_s` (a callable is asked again after each run) until the service stops."""

    name: str
    interval_s: float | Callable[[], float]
    run: PeriodicRun

    def next_interval(self) -> float:
        """Return the seconds from the start of one run to the start of the next."""
        return self.interval_s() if callable(self.interval_s) else self.interval_s


class PeriodicJobs:
    """Runs a service's periodic jobs, each in a task of its own, one run of a job at a time."""

    def __init__(
        self,
        *,
        service: str,
        session_factory: async_sessionmaker[AsyncSession],
        jobs: Sequence[PeriodicJob],
        stop_grace_s: float = 20.0,
    ) -> None:
        names = [job.name for job in jobs]
        if len(set(names)) != len(names):
            raise ValueError(f"periodic job names must differ: {names}")
        self._service = service
        self._session_factory = session_factory
        self._jobs = list(jobs)
        self._stop_grace_s = stop_grace_s
        self._wakes = {job.name: asyncio.Event() for job in jobs}
        self._tasks: dict[str, asyncio.Task[None]] = {}
        self._stopping = False

    @property
    def names(self) -> list[str]:
        """Return the names of the jobs, in the order they were declared."""
        return [job.name for job in self._jobs]

    def start(self) -> None:
        """Start every job: each runs at once, then every interval."""
        self._stopping = False
        for job in self._jobs:
            self._wakes[job.name].clear()
            self._tasks[job.name] = asyncio.create_task(
                self._loop(job), name=f"{self._service}-periodic-{job.name}"
            )

    def wake(self, name: str) -> None:
        """Run a job now instead of at its next interval (after the run in flight, if one is)."""
        self._wakes[name].set()

    def stopped(self) -> list[str]:
        """Return the jobs whose task ended although the service is not stopping."""
        if self._stopping:
            return []
        return [name for name, task in self._tasks.items() if task.done()]

    async def stop(self) -> None:
        """Let the runs in flight finish (cancelled after the grace period), then stop every job."""
        self._stopping = True
        for wake in self._wakes.values():
            wake.set()
        tasks = list(self._tasks.values())
        self._tasks = {}
        if not tasks:
            return
        _, late = await asyncio.wait(tasks, timeout=self._stop_grace_s)
        for task in late:
            logger.warning(
                "a periodic job ran past the stop's grace period; cancelled", extra={"task": task.get_name()}
            )
            task.cancel()
        await asyncio.gather(*tasks, return_exceptions=True)

    async def _loop(self, job: PeriodicJob) -> None:
        wake = self._wakes[job.name]
        while not self._stopping:
            started = time.monotonic()
            # Cleared before the run, so a wake-up that arrives during it brings the next run forward.
            wake.clear()
            await self.run_once(job)
            try:
                delay = started + job.next_interval() - time.monotonic()
            except Exception:
                logger.exception("a periodic job's interval could not be read", extra={"job": job.name})
                delay = 1.0
            if delay > 0 and not self._stopping:
                with contextlib.suppress(TimeoutError):
                    await asyncio.wait_for(wake.wait(), delay)

    async def run_once(self, job: PeriodicJob) -> bool:
        """Run a job once with a separate session; log and count a failure; return whether it succeeded."""
        started = time.perf_counter()
        try:
            async with self._session_factory() as session:
                await job.run(session=session)
                if session.in_transaction():
                    await session.commit()
        except Exception:
            PERIODIC_RUNS.labels(self._service, job.name, "failed").inc()
            logger.exception(
                "periodic job failed; it runs again at its next interval", extra={"job": job.name}
            )
            return False
        finally:
            PERIODIC_DURATION.labels(self._service, job.name).observe(time.perf_counter() - started)
        PERIODIC_RUNS.labels(self._service, job.name, "succeeded").inc()
        return True
