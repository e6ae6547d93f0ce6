"""Fixtures of segment's integration tests: a freshly migrated schema per test, a controllable clock,
a stand-in for profile's computed-trait API, and the service's job kinds run by the real job runner."""

from __future__ import annotations

import secrets
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import pytest
import sqlalchemy as sa
from cdp_common.db import create_engine, create_session_factory, outbox_table, transaction
from cdp_common.envelope import Envelope, Payload
from cdp_common.events import ConsentDenied, ConsentGranted, ConsentWithdrawn, decode_envelope, make_envelope
from cdp_common.jobs import JobKind, JobRunner, get_job, jobs_table
from cdp_common.kafka import Handler
from cdp_common.migrations import migrate
from cdp_common.periodic import PeriodicJobs
from cdp_common.testing import PlatformUnderTest, wait_for
from cdp_segment import handlers
from cdp_segment.computed_traits import TraitStatus, ValuesPage
from cdp_segment.handlers import SegmentContext
from cdp_segment.jobs import job_kinds, periodic_jobs, queue_clock_work
from cdp_segment.models import submit_model_run
from sqlalchemy.ext.asyncio import AsyncEngine, AsyncSession, async_sessionmaker

MIGRATIONS = Path(__file__).resolve().parents[2] / "migrations"


@dataclass
class FakeClock:
    """A clock the test moves by hand."""

    now: datetime = field(default_factory=lambda: datetime(2025, 6, 15, 12, 0, tzinfo=UTC))

    def __call__(self) -> datetime:
        return self.now

    def advance(self, **delta: float) -> None:
        self.now += timedelta(**delta)


@dataclass
class FakeProfile:
    """Profile's computed-trait API as segment sees it: traits are defined, built (when the test says so)
    and their values served in pages by profile id."""

    defined: dict[str, dict[str, Any]] = field(default_factory=dict)
    ready: set[str] = field(default_factory=set)
    built: dict[str, dict[str, Any]] = field(default_factory=dict)
    progress: dict[str, int] = field(default_factory=dict)
    pages_asked: list[tuple[str, str | None]] = field(default_factory=list)
    owners: dict[str, set[str]] = field(default_factory=dict)
    base: int = 100

    async def define(self, spec: dict[str, Any]) -> str | None:
        if spec["key"] in self.defined:
            return None
        self.defined[spec["key"]] = spec
        return f"profile_job_{spec['key']}"

    async def claim(self, spec: dict[str, Any], owner: str) -> None:
        self.defined.setdefault(spec["key"], spec)
        self.owners.setdefault(spec["key"], set()).add(owner)

    async def release(self, key: str, owner: str) -> None:
        self.owners.get(key, set()).discard(owner)

    async def status(self, key: str) -> TraitStatus | None:
        if key not in self.defined:
            return None
        if key in self.ready:
            return TraitStatus(status="ready", done=self.base, total=self.base)
        return TraitStatus(status="building", done=self.progress.get(key, 0), total=self.base)

    async def values(self, key: str, *, after: str | None, limit: int) -> ValuesPage:
        self.pages_asked.append((key, after))
        held = sorted((p, v) for p, v in self.built.get(key, {}).items() if p > (after or ""))
        page = held[:limit]
        return ValuesPage(
            items=[{"profile_id": p, "value": v} for p, v in page],
            next=page[-1][0] if len(page) == limit else None,
        )

    def build(self, key: str, values: dict[str, Any]) -> None:
        """Finish building a trait with these values."""
        self.built[key] = values
        self.ready.add(key)


@dataclass
class SegmentDb:
    """One test's own segment schema, with what the handlers need."""

    engine: AsyncEngine
    sessions: async_sessionmaker[AsyncSession]
    context: SegmentContext
    clock: FakeClock

    async def apply(self, payload: Payload, subject: str | None = None) -> Envelope[Any]:
        """Hand an event to its handler in one transaction, as the consumer does."""
        envelope = make_envelope(payload=payload, source="test", subject=subject or str(payload.profile_id))  # type: ignore[attr-defined]
        table: dict[type[Payload], Handler] = dict(handlers.profile_handlers(self.context))
        on_consent = handlers.consent_handler(self.context)
        table.update({ConsentGranted: on_consent, ConsentDenied: on_consent, ConsentWithdrawn: on_consent})
        async with self.sessions() as session, session.begin():
            await table[type(payload)](session=session, envelope=envelope)
        return envelope

    async def published(self) -> list[Envelope[Any]]:
        """Return the envelopes written to the outbox so far, in order."""
        async with self.sessions() as session:
            rows = await session.execute(sa.select(outbox_table.c.payload).order_by(outbox_table.c.id))
            return [decode_envelope(bytes(r)) for r in rows.scalars()]

    async def tick(self) -> dict[str, Any]:
        """Queue the clock-driven work at the clock's time, as a clock round does; return the jobs queued."""
        async with transaction(self.sessions) as session:
            return await queue_clock_work(session=session, context=self.context)

    def kinds(
        self,
        profile: FakeProfile | None = None,
        *,
        batch_size: int = 10_000,
        page_size: int = 5_000,
        model_batch_size: int = 20_000,
        model_sample_size: int = 10_000,
        cluster_count: int = 4,
    ) -> dict[str, Any]:
        """Return the service's job kinds against this schema."""
        return job_kinds(
            context=self.context,
            client=profile or FakeProfile(),
            batch_size=batch_size,
            page_size=page_size,
            model_batch_size=model_batch_size,
            model_sample_size=model_sample_size,
            cluster_count=cluster_count,
        )

    @asynccontextmanager
    async def jobs_running(
        self,
        profile: FakeProfile,
        *,
        batch_size: int = 10_000,
        page_size: int = 5_000,
        **model_settings: int,
    ) -> AsyncIterator[JobRunner]:
        """Run the service's job kinds with the real runner, and the watch of computed traits,
        against this schema while inside."""
        watch = PeriodicJobs(
            service="segment",
            session_factory=self.sessions,
            jobs=periodic_jobs(
                context=self.context, client=profile, watch_interval_s=0.02, clock_rounds=False
            ),
        )
        runner = JobRunner(
            service="segment",
            engine=self.engine,
            session_factory=self.sessions,
            kinds=self.kinds(profile, batch_size=batch_size, page_size=page_size, **model_settings),
            poll_interval_s=0.02,
        )
        runner.start()
        watch.start()
        try:
            yield runner
        finally:
            await watch.stop()
            await runner.stop()

    async def job(self, job_id: str) -> dict[str, Any]:
        """Return a job's body."""
        async with self.sessions() as session:
            found = await get_job(session=session, job_id=job_id)
        assert found is not None
        return found

    async def run_steps(self, kind_name: str, kind: JobKind, job_id: str, steps: int) -> None:
        """Run a few steps of a job with the real runner, then leave it running as a runner that died would."""
        runner = JobRunner(
            service="segment", engine=self.engine, session_factory=self.sessions, kinds={kind_name: kind}
        )
        assert await runner.run_job(job_id, max_steps=steps)

    async def jobs_done(self, profile: FakeProfile | None = None, **settings: int) -> None:
        """Run the jobs until none is queued or running (all must succeed)."""

        async def settled() -> bool:
            async with self.sessions() as session:
                rows = (await session.execute(sa.select(jobs_table.c.state, jobs_table.c.error))).all()
            assert "failed" not in [state for state, _ in rows], rows
            return all(state in ("succeeded", "cancelled") for state, _ in rows)

        async with self.jobs_running(profile or FakeProfile(), **settings):
            await wait_for(settled, timeout=60, interval=0.05, what="the jobs to finish")

    async def run_model(self, name: str, **settings: int) -> dict[str, Any]:
        """Queue a run of a model at the clock's time, run the jobs to their end; return the run's job."""
        async with self.sessions() as session, session.begin():
            job, _ = await submit_model_run(session=session, name=name, at=self.clock())
        await self.jobs_done(None, **settings)
        finished = await self.job(job["id"])
        assert finished["state"] == "succeeded"
        return finished

    async def members(self, key: str) -> set[str]:
        """Return the members of a segment by key."""
        async with self.sessions() as session:
            rows = await session.execute(
                sa.text(
                    "SELECT m.profile_id FROM memberships m JOIN segments s ON s.id = m.segment_id WHERE s.key = :k"
                ),
                {"k": key},
            )
            return set(rows.scalars())


@pytest.fixture
async def db(platform: PlatformUnderTest) -> AsyncIterator[SegmentDb]:
    schema = "segtest_" + secrets.token_hex(4)
    engine = create_engine(database_url=platform.settings().database_url, schema=schema, pool_size=4)
    await migrate(engine=engine, schema=schema, script_location=MIGRATIONS)
    clock = FakeClock()
    context = SegmentContext(segments_topic="test.cdp.segments.v1", clock=clock)
    try:
        yield SegmentDb(engine=engine, sessions=create_session_factory(engine), context=context, clock=clock)
    finally:
        async with engine.begin() as conn:
            await conn.execute(sa.text(f'DROP SCHEMA "{schema}" CASCADE'))
        await engine.dispose()
