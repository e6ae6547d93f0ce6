"""The job runner on the real PostgreSQL: steps commit with their cursor, a stopped runner's job is
taken over without doing a step twice, failures are retried with the reason kept, cancels stop it."""

from __future__ import annotations

import asyncio
from typing import Any

import pytest
import sqlalchemy as sa
from cdp_common.db import create_session_factory, transaction
from cdp_common.jobs import Job, JobRunner, Step, cancel_job, get_job, jobs_metadata, jobs_table, submit_job
from cdp_common.testing import wait_for
from sqlalchemy.ext.asyncio import AsyncEngine, AsyncSession, async_sessionmaker

from ..conftest import effects

pytestmark = pytest.mark.integration

ITEMS = 40


class Numbering:
    """Writes one effect row per item, a few items per step; fails at chosen cursors a number of times."""

    def __init__(
        self, *, per_step: int = 4, pause_s: float = 0.0, failures: dict[int, int] | None = None
    ) -> None:
        self.per_step = per_step
        self.pause_s = pause_s
        self.failures = dict(failures or {})
        self.steps = 0

    async def plan(self, *, session: AsyncSession, job: Job) -> int | None:
        return int(job.params["items"])

    async def step(self, *, session: AsyncSession, job: Job) -> Step:
        start = int(job.cursor or 0)
        if self.failures.get(start, 0) > 0:
            self.failures[start] -= 1
            raise RuntimeError(f"item {start} cannot be numbered yet")
        end = min(start + self.per_step, int(job.params["items"]))
        await session.execute(
            effects.insert(), [{"event_id": f"{job.id}:{n}", "token_id": job.id} for n in range(start, end)]
        )
        self.steps += 1
        await asyncio.sleep(self.pause_s)
        return Step(cursor=end, advanced=end - start, finished=end >= int(job.params["items"]))


@pytest.fixture
async def sessions(schema_engine: AsyncEngine) -> async_sessionmaker[AsyncSession]:
    async with schema_engine.begin() as conn:
        await conn.run_sync(jobs_metadata.create_all)
    return create_session_factory(schema_engine)


def runner(
    engine: AsyncEngine, sessions: async_sessionmaker[AsyncSession], kind: Numbering, **options: Any
) -> JobRunner:
    return JobRunner(
        service="test",
        engine=engine,
        session_factory=sessions,
        kinds={"numbering": kind},
        **{"poll_interval_s": 0.05, "retry_backoff_s": 0.05, **options},
    )


async def submit(sessions: async_sessionmaker[AsyncSession], items: int = ITEMS) -> str:
    async with transaction(sessions) as session:
        job = await submit_job(session=session, kind="numbering", params={"items": items})
    assert job["state"] == "queued"
    return str(job["id"])


async def job_of(sessions: async_sessionmaker[AsyncSession], job_id: str) -> dict[str, Any]:
    async with sessions() as session:
        job = await get_job(session=session, job_id=job_id)
    assert job is not None
    return job


async def until(
    sessions: async_sessionmaker[AsyncSession], job_id: str, check: Any, timeout: float = 30
) -> dict[str, Any]:
    async def probe() -> dict[str, Any] | None:
        job = await job_of(sessions, job_id)
        return job if check(job) else None

    return await wait_for(probe, timeout=timeout, interval=0.02, what="the job to get there")


async def effect_ids(engine: AsyncEngine, job_id: str) -> list[str]:
    async with engine.connect() as conn:
        rows = await conn.execute(sa.select(effects.c.event_id).where(effects.c.token_id == job_id))
        return [r.event_id for r in rows]


async def test_a_job_runs_in_steps_to_its_end_with_progress(
    schema_engine: AsyncEngine, sessions: async_sessionmaker[AsyncSession]
) -> None:
    job_id = await submit(sessions)
    jobs = runner(schema_engine, sessions, Numbering(pause_s=0.01))
    jobs.start()
    try:
        seen = await until(sessions, job_id, lambda j: j["state"] == "running" and 0 < j["done"] < ITEMS)
        assert seen["total"] == ITEMS
        done = await until(sessions, job_id, lambda j: j["state"] == "succeeded")
    finally:
        await jobs.stop()
    assert done["done"] == done["total"] == ITEMS
    assert done["finished_at"] is not None
    assert done["rate_per_s"] is not None
    assert sorted(await effect_ids(schema_engine, job_id)) == sorted(f"{job_id}:{n}" for n in range(ITEMS))


async def test_a_submitted_job_starts_at_once_without_waiting_for_the_runners_poll(
    schema_engine: AsyncEngine, sessions: async_sessionmaker[AsyncSession]
) -> None:
    heard: list[str] = []
    jobs = runner(schema_engine, sessions, Numbering(), poll_interval_s=3600.0)
    jobs.on_notify(heard.append)
    jobs.start()
    try:
        first = await submit(sessions)
        await until(sessions, first, lambda j: j["state"] == "succeeded", timeout=10)
        # The runner now idles on an hour's poll: only the notification can start the next job.
        second = await submit(sessions)
        done = await until(sessions, second, lambda j: j["state"] == "succeeded", timeout=10)
    finally:
        await jobs.stop()
    assert done["done"] == ITEMS
    assert "numbering" in heard


async def test_a_stopped_runner_leaves_the_job_to_the_next_without_doing_a_step_twice(
    schema_engine: AsyncEngine, sessions: async_sessionmaker[AsyncSession]
) -> None:
    job_id = await submit(sessions)
    first = runner(schema_engine, sessions, Numbering(pause_s=0.05))
    first.start()
    await until(sessions, job_id, lambda j: j["done"] >= 8)
    await first.stop()
    stopped = await job_of(sessions, job_id)
    assert stopped["state"] == "running"
    assert stopped["done"] < ITEMS
    second_kind = Numbering()
    second = runner(schema_engine, sessions, second_kind)
    other = runner(schema_engine, sessions, Numbering())
    second.start()
    other.start()
    try:
        done = await until(sessions, job_id, lambda j: j["state"] == "succeeded")
    finally:
        await second.stop()
        await other.stop()
    assert done["done"] == ITEMS
    ids = await effect_ids(schema_engine, job_id)
    assert len(ids) == len(set(ids)) == ITEMS, "no item was numbered twice"


async def test_a_failing_step_is_retried_and_its_reason_kept(
    schema_engine: AsyncEngine, sessions: async_sessionmaker[AsyncSession]
) -> None:
    job_id = await submit(sessions)
    jobs = runner(schema_engine, sessions, Numbering(failures={8: 2}))
    jobs.start()
    try:
        done = await until(sessions, job_id, lambda j: j["state"] == "succeeded")
    finally:
        await jobs.stop()
    assert done["attempts"] == 2
    assert done["error"] == "RuntimeError: item 8 cannot be numbered yet"
    assert len(await effect_ids(schema_engine, job_id)) == ITEMS


async def test_a_job_that_keeps_failing_fails_with_its_reason(
    schema_engine: AsyncEngine, sessions: async_sessionmaker[AsyncSession]
) -> None:
    job_id = await submit(sessions)
    jobs = runner(schema_engine, sessions, Numbering(failures={12: 100}), max_attempts=3)
    jobs.start()
    try:
        failed = await until(sessions, job_id, lambda j: j["state"] == "failed")
    finally:
        await jobs.stop()
    assert failed["attempts"] == 3
    assert failed["done"] == 12
    assert "item 12 cannot be numbered yet" in failed["error"]


async def test_cancel_stops_a_running_job_before_its_next_step_and_a_queued_one_at_once(
    schema_engine: AsyncEngine, sessions: async_sessionmaker[AsyncSession]
) -> None:
    queued = await submit(sessions)
    async with transaction(sessions) as session:
        assert (await cancel_job(session=session, job_id=queued))["state"] == "cancelled"
    job_id = await submit(sessions)
    jobs = runner(schema_engine, sessions, Numbering(pause_s=0.05))
    jobs.start()
    try:
        await until(sessions, job_id, lambda j: j["done"] >= 4)
        async with transaction(sessions) as session:
            asked = await cancel_job(session=session, job_id=job_id)
        assert asked["cancel_requested"] is True
        cancelled = await until(sessions, job_id, lambda j: j["state"] == "cancelled")
    finally:
        await jobs.stop()
    assert cancelled["done"] < ITEMS
    assert len(await effect_ids(schema_engine, job_id)) == cancelled["done"]
    assert await effect_ids(schema_engine, queued) == []


async def test_jobs_finished_more_than_a_week_ago_are_pruned_and_the_rest_kept(
    schema_engine: AsyncEngine, sessions: async_sessionmaker[AsyncSession]
) -> None:
    old, recent, waiting = await submit(sessions), await submit(sessions), await submit(sessions)
    async with transaction(sessions) as session:
        await session.execute(
            jobs_table.update()
            .where(jobs_table.c.id.in_([old, recent]))
            .values(state="succeeded", finished_at=sa.func.now() - sa.text("interval '8 days'"))
        )
        await session.execute(
            jobs_table.update().where(jobs_table.c.id == recent).values(finished_at=sa.func.now())
        )
    assert await runner(schema_engine, sessions, Numbering()).prune() == 1
    async with sessions() as session:
        assert await get_job(session=session, job_id=old) is None
        assert (await get_job(session=session, job_id=recent)) is not None
        assert (await get_job(session=session, job_id=waiting)) is not None
