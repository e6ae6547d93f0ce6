"""Jobs: work that grows with the size of the base, run in steps outside requests and consumers.

A job is a row of the owning service's `jobs` table. A request or a handler submits it in
its own (short) transaction and answers at once; the service's `JobRunner` picks it up,
runs it step by step, each step one short transaction that also records the job's cursor
and progress, so a step's effect and the job's record of it commit together. A `kill -9`
in the middle loses at most the step in flight, which rolls back, and the restarted
service carries on from the recorded cursor: nothing is done twice.

One runner at a time runs a job: it holds a session-level advisory lock on a connection of
its own while the job runs, which PostgreSQL releases the moment that process dies, so a
restarted service (or another replica) takes the job over at once. A step that fails is
retried with backoff and the reason is kept; after `MAX_ATTEMPTS` the job has failed. A
job can be cancelled: it stops before its next step.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
import uuid
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from typing import Annotated, Any, Protocol

import sqlalchemy as sa
from fastapi import APIRouter, Depends, Query
from prometheus_client import Counter, Gauge
from sqlalchemy.dialects import postgresql
from sqlalchemy.ext.asyncio import AsyncEngine, AsyncSession, async_sessionmaker

from cdp_common.auth import require_scope
from cdp_common.db import transaction
from cdp_common.deps import SessionDep
from cdp_common.web import ApiError

logger = logging.getLogger(__name__)

STATES = ("queued", "running", "succeeded", "failed", "cancelled")
# Finished jobs are kept this long for their record (periodic work queues one every round),
# then deleted by the runner, at most every PRUNE_EVERY_S.
KEEP_FINISHED = timedelta(days=7)
PRUNE_EVERY_S = 600.0
FINISHED = frozenset({"succeeded", "failed", "cancelled"})
MAX_ATTEMPTS = 5
# Submitting or releasing a job notifies this channel with the job's kind when its transaction
# commits, so an idle runner of that kind starts it at once instead of at its next poll.
JOBS_CHANNEL = "cdp_jobs"
LISTEN_CHECK_S = 30.0

# Its own metadata: services add the table with a migration of their own (`create_jobs_table`).
jobs_metadata = sa.MetaData()

jobs_table = sa.Table(
    "jobs",
    jobs_metadata,
    sa.Column("id", sa.Text, primary_key=True),
    sa.Column("kind", sa.Text, nullable=False),
    sa.Column("params", postgresql.JSONB, nullable=False),
    sa.Column("state", sa.Text, nullable=False),
    sa.Column("done", sa.BigInteger, nullable=False, server_default="0"),
    sa.Column("total", sa.BigInteger),
    sa.Column("cursor", postgresql.JSONB),
    sa.Column("result", postgresql.JSONB),
    sa.Column("error", sa.Text),
    sa.Column("attempts", sa.Integer, nullable=False, server_default="0"),
    sa.Column("cancel_requested", sa.Boolean, nullable=False, server_default=sa.false()),
    sa.Column("rate_per_s", sa.Float),
    sa.Column("not_before", sa.DateTime(timezone=True)),
    sa.Column("created_at", sa.DateTime(timezone=True), nullable=False, server_default=sa.func.now()),
    sa.Column("started_at", sa.DateTime(timezone=True)),
    sa.Column("updated_at", sa.DateTime(timezone=True), nullable=False, server_default=sa.func.now()),
    sa.Column("finished_at", sa.DateTime(timezone=True)),
)
sa.Index("jobs_open", jobs_table.c.created_at, postgresql_where=jobs_table.c.state.in_(("queued", "running")))

JOBS_FINISHED = Counter(
    "cdp_jobs_finished_total", "Jobs that reached a final state.", ["service", "kind", "state"]
)
JOB_STEP_FAILURES = Counter(
    "cdp_job_step_failures_total",
    "Steps of jobs that failed (and were retried or failed the job).",
    ["service", "kind"],
)
JOBS_RUNNING = Gauge("cdp_jobs_running", "Jobs this process is running now.", ["service"])
JOB_DONE = Gauge("cdp_job_done_items", "Items a running job has done so far.", ["service", "kind"])


@dataclass(frozen=True)
class Job:
    """A job as a kind's steps see it."""

    id: str
    kind: str
    params: dict[str, Any]
    cursor: Any
    done: int
    total: int | None


@dataclass(frozen=True)
class Step:
    """What one step did: the cursor to carry on from, how many items it did, whether the job is done."""

    cursor: Any
    advanced: int
    finished: bool = False
    total: int | None = None
    result: dict[str, Any] | None = None


class JobKind(Protocol):
    """One kind of long work: how many items it has, and one bounded step of it."""

    async def plan(self, *, session: AsyncSession, job: Job) -> int | None:
        """Return the number of items the job will do (None when unknown); called once, before the first step."""
        ...

    async def step(self, *, session: AsyncSession, job: Job) -> Step:
        """Do one bounded step inside the caller's (short) transaction."""
        ...


class JobNotFound(Exception):
    """No job has this id."""


class JobFinished(Exception):
    """The job already reached a final state."""


# --- the table's reads and writes --------------------------------------------------------------


def new_job_id() -> str:
    """Return a new job id."""
    return f"job_{uuid.uuid4().hex}"


async def submit_job(
    *,
    session: AsyncSession,
    kind: str,
    params: dict[str, Any],
    total: int | None = None,
    job_id: str | None = None,
) -> dict[str, Any]:
    """Queue a job in the caller's transaction; return its body."""
    row = (
        await session.execute(
            postgresql.insert(jobs_table)
            .values(id=job_id or new_job_id(), kind=kind, params=params, state="queued", total=total)
            .returning(*jobs_table.c)
        )
    ).one()
    await notify_jobs(session=session, kind=kind)
    return job_body(row)


async def notify_jobs(*, session: AsyncSession, kind: str) -> None:
    """Tell the runners of `kind` that a job may start, once the caller's transaction commits."""
    await session.execute(sa.select(sa.func.pg_notify(JOBS_CHANNEL, kind)))


async def get_job(*, session: AsyncSession, job_id: str) -> dict[str, Any] | None:
    """Return a job's body, or None."""
    row = (await session.execute(sa.select(jobs_table).where(jobs_table.c.id == job_id))).first()
    return None if row is None else job_body(row)


async def latest_jobs(*, session: AsyncSession, job_ids: list[str]) -> dict[str, dict[str, Any]]:
    """Return the bodies of several jobs by id."""
    if not job_ids:
        return {}
    rows = await session.execute(sa.select(jobs_table).where(jobs_table.c.id.in_(job_ids)))
    return {r.id: job_body(r) for r in rows}


async def list_jobs(
    *,
    session: AsyncSession,
    limit: int,
    before: str | None = None,
    kind: str | None = None,
    state: str | None = None,
) -> list[dict[str, Any]]:
    """Return jobs newest first (created before the job `before`, when given)."""
    query = (
        sa.select(jobs_table).order_by(jobs_table.c.created_at.desc(), jobs_table.c.id.desc()).limit(limit)
    )
    if kind is not None:
        query = query.where(jobs_table.c.kind == kind)
    if state is not None:
        query = query.where(jobs_table.c.state == state)
    if before is not None:
        anchor = sa.select(jobs_table.c.created_at).where(jobs_table.c.id == before).scalar_subquery()
        query = query.where(
            sa.tuple_(jobs_table.c.created_at, jobs_table.c.id) < sa.tuple_(anchor, sa.literal(before))
        )
    return [job_body(r) for r in await session.execute(query)]


async def cancel_job(*, session: AsyncSession, job_id: str) -> dict[str, Any]:
    """Cancel a queued job at once, or ask a running one to stop before its next step."""
    row = (
        await session.execute(sa.select(jobs_table).where(jobs_table.c.id == job_id).with_for_update())
    ).first()
    if row is None:
        raise JobNotFound(job_id)
    if row.state in FINISHED:
        raise JobFinished(job_id)
    values: dict[str, Any] = {"cancel_requested": True, "updated_at": sa.func.now()}
    if row.state == "queued":
        values.update(state="cancelled", finished_at=sa.func.now())
    updated = (
        await session.execute(
            jobs_table.update().where(jobs_table.c.id == job_id).values(**values).returning(*jobs_table.c)
        )
    ).one()
    return job_body(updated)


def job_body(row: Any) -> dict[str, Any]:
    """Return the contract's body of a job."""
    eta: str | None = None
    if row.state == "running" and row.rate_per_s and row.total is not None and row.total > row.done:
        seconds = (row.total - row.done) / row.rate_per_s
        eta = (datetime.now(UTC) + timedelta(seconds=seconds)).isoformat()
    return {
        "id": row.id,
        "kind": row.kind,
        "params": row.params,
        "state": row.state,
        "done": row.done,
        "total": row.total,
        "rate_per_s": round(row.rate_per_s, 1) if row.rate_per_s is not None else None,
        "eta": eta,
        "error": row.error,
        "attempts": row.attempts,
        "cancel_requested": row.cancel_requested,
        "result": row.result,
        "created_at": row.created_at.isoformat(),
        "started_at": row.started_at.isoformat() if row.started_at else None,
        "updated_at": row.updated_at.isoformat(),
        "finished_at": row.finished_at.isoformat() if row.finished_at else None,
    }


# --- the runner --------------------------------------------------------------------------------

_TRY_LOCK = sa.text("SELECT pg_try_advisory_lock(hashtextextended(:key, 0))")
_UNLOCK = sa.text("SELECT pg_advisory_unlock(hashtextextended(:key, 0))")


def _job_of(row: Any) -> Job:
    return Job(id=row.id, kind=row.kind, params=row.params, cursor=row.cursor, done=row.done, total=row.total)


class JobRunner:
    """Runs a service's queued jobs, a few at a time, each under an advisory lock of its own."""

    def __init__(
        self,
        *,
        service: str,
        engine: AsyncEngine,
        session_factory: async_sessionmaker[AsyncSession],
        kinds: Mapping[str, JobKind],
        workers: int = 2,
        poll_interval_s: float = 0.5,
        step_pause_s: float = 0.0,
        retry_backoff_s: float = 2.0,
        max_attempts: int = MAX_ATTEMPTS,
    ) -> None:
        self._service = service
        self._engine = engine
        self._session_factory = session_factory
        self._kinds = dict(kinds)
        self._workers = workers
        self._poll_interval_s = poll_interval_s
        self._step_pause_s = step_pause_s
        self._retry_backoff_s = retry_backoff_s
        self._max_attempts = max_attempts
        self._tasks: list[asyncio.Task[None]] = []
        self._running: set[str] = set()
        self._wake = asyncio.Event()
        self._pruned_at = -PRUNE_EVERY_S
        self._on_notify: list[Callable[[str], None]] = []

    def start(self) -> None:
        """Start the workers, and the listener that wakes them when a job is submitted, in the background."""
        if not self._kinds:
            return
        self._tasks = [
            asyncio.create_task(self._work(), name=f"{self._service}-jobs-{n}") for n in range(self._workers)
        ]
        self._tasks.append(asyncio.create_task(self._listen(), name=f"{self._service}-jobs-listener"))

    def wake(self) -> None:
        """Look for queued jobs now instead of at the next poll."""
        self._wake.set()

    def on_notify(self, callback: Callable[[str], None]) -> None:
        """Call `callback(kind)` whenever a job of one of this runner's kinds is submitted or released."""
        self._on_notify.append(callback)

    def _notified(self, _connection: Any, _pid: int, _channel: str, kind: str) -> None:
        if kind not in self._kinds:
            return
        self._wake.set()
        for callback in self._on_notify:
            try:
                callback(kind)
            except Exception:
                logger.exception("a job notification callback failed", extra={"kind": kind})

    async def _listen(self) -> None:
        """LISTEN on the jobs channel on a connection of its own; connect again when it is lost.

        Polling stays as the fallback, so a lost notification only delays a job by one poll.
        """
        while True:
            try:
                await self._listen_once()
            except asyncio.CancelledError:
                raise
            except Exception:
                logger.warning("listening for submitted jobs failed; polling until it is back")
            await asyncio.sleep(1.0)

    async def _listen_once(self) -> None:
        """Listen until the connection is lost (checked every LISTEN_CHECK_S)."""
        lost = asyncio.Event()
        async with self._engine.connect() as conn:
            driver = (await conn.get_raw_connection()).driver_connection
            if driver is None:
                raise RuntimeError("the engine's connection has no driver connection")
            driver.add_termination_listener(lambda _c: lost.set())
            await driver.add_listener(JOBS_CHANNEL, self._notified)
            # Jobs submitted before the listener was in place are found by this look.
            self._wake.set()
            while not lost.is_set():
                with contextlib.suppress(TimeoutError):
                    await asyncio.wait_for(lost.wait(), LISTEN_CHECK_S)
                if not lost.is_set():
                    await driver.execute("SELECT 1")

    async def stop(self) -> None:
        """Stop the workers; a step in flight rolls back and is done again by whoever takes the job over."""
        for task in self._tasks:
            task.cancel()
        for task in self._tasks:
            with contextlib.suppress(asyncio.CancelledError):
                await task
        self._tasks = []

    async def prune(self) -> int:
        """Delete jobs that finished longer than KEEP_FINISHED ago; return how many."""
        async with transaction(self._session_factory) as session:
            deleted = await session.execute(
                jobs_table.delete()
                .where(
                    jobs_table.c.state.in_(sorted(FINISHED)),
                    jobs_table.c.finished_at < sa.func.now() - KEEP_FINISHED,
                )
                .returning(jobs_table.c.id)
            )
            count = len(deleted.all())
        self._pruned_at = time.monotonic()
        return count

    async def _work(self) -> None:
        while True:
            try:
                if time.monotonic() - self._pruned_at >= PRUNE_EVERY_S:
                    await self.prune()
                # Cleared before looking, so a notification that arrives during the look is not lost.
                self._wake.clear()
                ran = await self._run_one()
            except asyncio.CancelledError:
                raise
            except Exception:
                logger.exception("the job runner failed; looking again shortly")
                ran = False
            if not ran:
                with contextlib.suppress(TimeoutError):
                    await asyncio.wait_for(self._wake.wait(), self._poll_interval_s)

    async def _run_one(self) -> bool:
        """Take one runnable job that no runner holds and run it to its end; False when none was free."""
        async with self._session_factory() as session:
            rows = await session.execute(
                sa.select(jobs_table.c.id)
                .where(
                    jobs_table.c.state.in_(("queued", "running")),
                    jobs_table.c.kind.in_(list(self._kinds)),
                    sa.or_(jobs_table.c.not_before.is_(None), jobs_table.c.not_before <= sa.func.now()),
                )
                .order_by(jobs_table.c.created_at)
                .limit(20)
            )
            candidates = [job_id for job_id in rows.scalars() if job_id not in self._running]
        for job_id in candidates:
            if await self.run_job(job_id):
                return True
        return False

    async def run_job(self, job_id: str, *, max_steps: int | None = None) -> bool:
        """Run one job to its end (or its next failure) in this task; False when another runner holds it.

        With `max_steps`, stop after that many steps and leave the job running, as a runner
        that died there would (for tests of taking a job over).
        """
        async with self._engine.connect() as lock_conn:
            if not (await lock_conn.execute(_TRY_LOCK, {"key": f"job:{job_id}"})).scalar():
                await lock_conn.rollback()
                return False
            await lock_conn.commit()
            self._running.add(job_id)
            JOBS_RUNNING.labels(self._service).inc()
            try:
                await self._run(job_id, max_steps=max_steps)
            finally:
                self._running.discard(job_id)
                JOBS_RUNNING.labels(self._service).dec()
                try:
                    await lock_conn.execute(_UNLOCK, {"key": f"job:{job_id}"})
                    await lock_conn.commit()
                except Exception:
                    # A connection that may still hold the lock never goes back to the pool.
                    await lock_conn.invalidate()
        return True

    async def _begin(self, job_id: str) -> Any:
        """Mark the job running (again); return its row, or None when it is no longer runnable."""
        async with transaction(self._session_factory) as session:
            row = (
                await session.execute(
                    jobs_table.update()
                    .where(jobs_table.c.id == job_id, jobs_table.c.state.in_(("queued", "running")))
                    .values(
                        state="running",
                        started_at=sa.func.coalesce(jobs_table.c.started_at, sa.func.now()),
                        updated_at=sa.func.now(),
                    )
                    .returning(*jobs_table.c)
                )
            ).first()
        return row

    async def _run(self, job_id: str, *, max_steps: int | None = None) -> None:
        row = await self._begin(job_id)
        if row is None:
            return
        kind = self._kinds[row.kind]
        job = _job_of(row)
        run_started = time.monotonic()
        done_at_start = job.done
        try:
            if job.cursor is None and job.total is None:
                async with transaction(self._session_factory) as session:
                    total = await kind.plan(session=session, job=job)
                    await session.execute(
                        jobs_table.update().where(jobs_table.c.id == job_id).values(total=total)
                    )
                job = Job(
                    id=job.id, kind=job.kind, params=job.params, cursor=None, done=job.done, total=total
                )
            while True:
                if await self._cancelled(job_id):
                    await self._finish(job_id, kind=row.kind, state="cancelled")
                    return
                async with transaction(self._session_factory) as session:
                    step = await kind.step(session=session, job=job)
                    done = job.done + step.advanced
                    elapsed = time.monotonic() - run_started
                    rate = (done - done_at_start) / elapsed if elapsed > 0 else None
                    total = step.total if step.total is not None else job.total
                    values: dict[str, Any] = {
                        "cursor": step.cursor,
                        "done": done,
                        "total": total,
                        "rate_per_s": rate,
                        "updated_at": sa.func.now(),
                    }
                    if step.finished:
                        values.update(state="succeeded", finished_at=sa.func.now(), result=step.result)
                    await session.execute(
                        jobs_table.update().where(jobs_table.c.id == job_id).values(**values)
                    )
                JOB_DONE.labels(self._service, row.kind).set(done)
                job = Job(
                    id=job.id, kind=job.kind, params=job.params, cursor=step.cursor, done=done, total=total
                )
                if step.finished:
                    JOBS_FINISHED.labels(self._service, row.kind, "succeeded").inc()
                    logger.info("job succeeded", extra={"job_id": job_id, "kind": row.kind, "done": done})
                    return
                if max_steps is not None:
                    max_steps -= 1
                    if max_steps <= 0:
                        return
                await asyncio.sleep(self._step_pause_s)
        except asyncio.CancelledError:
            raise
        except Exception as exc:
            JOB_STEP_FAILURES.labels(self._service, row.kind).inc()
            logger.exception("a step of a job failed", extra={"job_id": job_id, "kind": row.kind})
            await self._failed(job_id, kind=row.kind, reason=f"{type(exc).__name__}: {exc}"[:2000])

    async def _cancelled(self, job_id: str) -> bool:
        async with self._session_factory() as session:
            flag = await session.scalar(
                sa.select(jobs_table.c.cancel_requested).where(jobs_table.c.id == job_id)
            )
        return bool(flag)

    async def _finish(self, job_id: str, *, kind: str, state: str) -> None:
        async with transaction(self._session_factory) as session:
            await session.execute(
                jobs_table.update()
                .where(jobs_table.c.id == job_id)
                .values(state=state, finished_at=sa.func.now(), updated_at=sa.func.now())
            )
        JOBS_FINISHED.labels(self._service, kind, state).inc()

    async def _failed(self, job_id: str, *, kind: str, reason: str) -> None:
        """Keep the reason; queue the job again after a backoff, or fail it after the last attempt.

        The reason stays on the job (`error`) after a later attempt succeeds, beside `attempts`.
        """
        async with transaction(self._session_factory) as session:
            attempts = await session.scalar(
                jobs_table.update()
                .where(jobs_table.c.id == job_id)
                .values(attempts=jobs_table.c.attempts + 1, error=reason, updated_at=sa.func.now())
                .returning(jobs_table.c.attempts)
            )
            if attempts is not None and attempts >= self._max_attempts:
                await session.execute(
                    jobs_table.update()
                    .where(jobs_table.c.id == job_id)
                    .values(state="failed", finished_at=sa.func.now())
                )
                JOBS_FINISHED.labels(self._service, kind, "failed").inc()
            else:
                backoff = timedelta(seconds=min(self._retry_backoff_s * 2 ** ((attempts or 1) - 1), 60.0))
                await session.execute(
                    jobs_table.update()
                    .where(jobs_table.c.id == job_id)
                    .values(state="queued", not_before=sa.func.now() + backoff)
                )


# --- HTTP ----------------------------------------------------------------------------------------


def jobs_router(*, read_scope: str, write_scope: str) -> APIRouter:
    """Return `GET /v1/jobs`, `GET /v1/jobs/{id}` and `POST /v1/jobs/{id}/cancel` for a service."""
    # Guards as route dependencies: this module's annotations are strings, which FastAPI resolves
    # against module globals, not this function's locals.
    reader = [Depends(require_scope(read_scope))]
    writer = [Depends(require_scope(write_scope))]
    router = APIRouter(prefix="/v1/jobs", tags=["jobs"])

    @router.get("", dependencies=reader)
    async def list_service_jobs(
        session: SessionDep,
        limit: Annotated[int, Query(ge=1, le=500)] = 50,
        cursor: str | None = None,
        kind: str | None = None,
        state: Annotated[str | None, Query(pattern="^(queued|running|succeeded|failed|cancelled)$")] = None,
    ) -> dict[str, Any]:
        """List the service's jobs, newest first."""
        items = await list_jobs(
            session=session, limit=limit + 1, before=cursor or None, kind=kind, state=state
        )
        more = len(items) > limit
        items = items[:limit]
        return {"items": items, "next": items[-1]["id"] if more else None}

    @router.get("/{job_id}", dependencies=reader)
    async def get_service_job(job_id: str, session: SessionDep) -> dict[str, Any]:
        """Return one job: state, done, total, rate and estimated end."""
        job = await get_job(session=session, job_id=job_id)
        if job is None:
            raise ApiError(status=404, code="not_found", message=f"no job has the id {job_id!r}")
        return job

    @router.post("/{job_id}/cancel", dependencies=writer)
    async def cancel_service_job(job_id: str, session: SessionDep) -> dict[str, Any]:
        """Cancel a job: a queued one at once, a running one before its next step."""
        try:
            return await cancel_job(session=session, job_id=job_id)
        except JobNotFound as exc:
            raise ApiError(status=404, code="not_found", message=f"no job has the id {job_id!r}") from exc
        except JobFinished as exc:
            raise ApiError(status=409, code="job_finished", message="the job has already finished") from exc

    return router
