"""Periodic jobs on the real PostgreSQL: a failing run is rolled back, counted and followed by the
next; runs of one job never overlap, even past their interval; a clean stop lets a run in flight
finish; and a service whose periodic job fails keeps running and stays ready."""

from __future__ import annotations

import asyncio
import itertools
import time
from pathlib import Path

import httpx
import pytest
import sqlalchemy as sa
from cdp_common.db import create_session_factory
from cdp_common.periodic import PeriodicJob, PeriodicJobs
from cdp_common.service import ServiceRuntime, build_app
from cdp_common.testing import PlatformUnderTest, free_port, serving, unique_env, wait_for
from prometheus_client import REGISTRY
from sqlalchemy.ext.asyncio import AsyncEngine, AsyncSession

from ..conftest import effects

pytestmark = pytest.mark.integration


def runs_of(service: str, job: str, outcome: str) -> float:
    return (
        REGISTRY.get_sample_value(
            "cdp_periodic_job_runs_total", {"service": service, "job": job, "outcome": outcome}
        )
        or 0.0
    )


async def rows(engine: AsyncEngine) -> list[str]:
    async with engine.connect() as conn:
        return list((await conn.execute(sa.select(effects.c.event_id).order_by(effects.c.id))).scalars())


async def test_a_failing_run_is_rolled_back_and_counted_and_the_job_runs_again(
    schema_engine: AsyncEngine,
) -> None:
    attempts = 0

    async def flaky(*, session: AsyncSession) -> None:
        nonlocal attempts
        attempts += 1
        await session.execute(effects.insert().values(event_id=f"run-{attempts}", token_id="flaky"))
        if attempts <= 2:
            raise RuntimeError("the first two runs fail")

    async def steady(*, session: AsyncSession) -> None:
        await session.execute(effects.insert().values(event_id="steady", token_id="steady"))

    jobs = PeriodicJobs(
        service="periodic-test-fail",
        session_factory=create_session_factory(schema_engine),
        jobs=[
            PeriodicJob(name="flaky", interval_s=0.02, run=flaky),
            PeriodicJob(name="steady", interval_s=0.02, run=steady),
        ],
    )
    jobs.start()
    try:

        async def third_run_committed() -> bool:
            return "run-3" in await rows(schema_engine)

        await wait_for(third_run_committed, timeout=30, interval=0.02, what="a run after two failures")
        assert jobs.stopped() == [], "a failing job keeps running"
    finally:
        await jobs.stop()

    written = await rows(schema_engine)
    assert next(row for row in written if row.startswith("run-")) == "run-3", "failed runs are rolled back"
    assert written.count("steady") >= 2, "the other job ran on meanwhile"
    assert runs_of("periodic-test-fail", "flaky", "failed") == 2
    assert runs_of("periodic-test-fail", "flaky", "succeeded") >= 1


async def test_a_run_longer_than_its_interval_is_never_run_twice_at_once(schema_engine: AsyncEngine) -> None:
    running = 0
    most_at_once = 0
    spans: list[tuple[float, float]] = []

    async def slow(*, session: AsyncSession) -> None:
        nonlocal running, most_at_once
        running += 1
        most_at_once = max(most_at_once, running)
        started = time.monotonic()
        try:
            await session.execute(sa.text("SELECT pg_sleep(0.15)"))
        finally:
            running -= 1
            spans.append((started, time.monotonic()))

    jobs = PeriodicJobs(
        service="periodic-test-overrun",
        session_factory=create_session_factory(schema_engine),
        jobs=[PeriodicJob(name="slow", interval_s=0.01, run=slow)],
    )
    jobs.start()
    try:
        # Wake-ups while a run is in flight bring the next run forward, never a second one alongside.
        async def four_runs() -> bool:
            jobs.wake("slow")
            return len(spans) >= 4

        await wait_for(four_runs, timeout=30, interval=0.01, what="four runs of the slow job")
    finally:
        await jobs.stop()

    assert most_at_once == 1
    for (_, ended), (next_started, _) in itertools.pairwise(spans):
        assert next_started >= ended, "each run starts after the one before ended"
    assert runs_of("periodic-test-overrun", "slow", "failed") == 0


class HeldRun:
    """A periodic run that writes a row, then waits until the test releases it."""

    def __init__(self, name: str) -> None:
        self.name = name
        self.started = asyncio.Event()
        self.release = asyncio.Event()
        self.order: list[str] = []

    async def __call__(self, *, session: AsyncSession) -> None:
        await session.execute(effects.insert().values(event_id=self.name, token_id=self.name))
        self.started.set()
        await self.release.wait()
        self.order.append("run ended")


async def started_and_held(engine: AsyncEngine, run: HeldRun, *, stop_grace_s: float) -> PeriodicJobs:
    jobs = PeriodicJobs(
        service=f"periodic-test-{run.name}",
        session_factory=create_session_factory(engine),
        jobs=[PeriodicJob(name=run.name, interval_s=60, run=run)],
        stop_grace_s=stop_grace_s,
    )
    jobs.start()
    await asyncio.wait_for(run.started.wait(), timeout=30)
    return jobs


async def test_a_clean_stop_waits_for_the_run_in_flight_and_commits_it(schema_engine: AsyncEngine) -> None:
    run = HeldRun("held")
    jobs = await started_and_held(schema_engine, run, stop_grace_s=60)
    stopping = asyncio.create_task(jobs.stop())
    done, _ = await asyncio.wait({stopping}, timeout=0.2)
    assert not done, "the stop waits while a run is in flight"
    run.release.set()
    await asyncio.wait_for(stopping, timeout=30)
    run.order.append("stopped")

    assert run.order == ["run ended", "stopped"]
    assert await rows(schema_engine) == ["held"], "the run in flight was committed"


async def test_a_run_past_the_grace_period_is_cancelled_and_rolled_back(schema_engine: AsyncEngine) -> None:
    run = HeldRun("endless")
    jobs = await started_and_held(schema_engine, run, stop_grace_s=0.1)
    await asyncio.wait_for(jobs.stop(), timeout=30)

    assert run.order == [], "the run was cancelled"
    assert await rows(schema_engine) == []


async def test_a_service_whose_periodic_job_fails_keeps_running_and_stays_ready(
    platform: PlatformUnderTest, schema_engine: AsyncEngine, process_state: None
) -> None:
    async with schema_engine.connect() as conn:
        schema = str(await conn.scalar(sa.text("SELECT current_schema()")))
    settings = platform.settings(env=unique_env(platform), migrate_on_start=False)
    runs = 0

    async def broken(*, session: AsyncSession) -> None:
        raise RuntimeError("this job always fails")

    async def counted(*, session: AsyncSession) -> None:
        nonlocal runs
        runs += 1
        await session.execute(effects.insert().values(event_id=f"tick-{runs}", token_id="counted"))

    runtime = ServiceRuntime(
        service=schema,
        settings=settings,
        migrations=Path("unused"),
        periodic=[
            PeriodicJob(name="broken", interval_s=0.05, run=broken),
            PeriodicJob(name="counted", interval_s=0.05, run=counted),
        ],
    )
    # The session factory is there before the service starts.
    async with runtime.session_factory() as session:
        assert await session.scalar(sa.select(sa.func.count()).select_from(effects)) == 0

    port = free_port()
    url = f"http://127.0.0.1:{port}"
    async with serving(build_app(runtime=runtime, routers=[], title="periodic test"), port):

        async def failed_thrice_and_ready() -> bool:
            async with httpx.AsyncClient(timeout=5) as client:
                try:
                    ready = (await client.get(f"{url}/readyz")).status_code == 200
                except httpx.HTTPError:
                    return False
            return ready and runs_of(schema, "broken", "failed") >= 3 and runs >= 3

        await wait_for(failed_thrice_and_ready, timeout=90, interval=0.1, what="failures while ready")
        async with httpx.AsyncClient(timeout=5) as client:
            metrics = (await client.get(f"{url}/metrics")).text
        assert f'cdp_periodic_job_runs_total{{job="broken",outcome="failed",service="{schema}"}}' in metrics
    assert len(await rows(schema_engine)) >= 3
