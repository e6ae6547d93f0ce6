"""Fixtures of the profile tests: a freshly migrated private schema per test, a clock the test drives,
and helpers that build tracking events and read what the service published through its outbox."""

from __future__ import annotations

import secrets
from collections.abc import AsyncIterator
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from itertools import count
from typing import Any

import pytest
import sqlalchemy as sa
from cdp_common.db import create_engine, create_session_factory, outbox_table, transaction
from cdp_common.envelope import Envelope
from cdp_common.events import TrackingEventReceived, decode_envelope, make_envelope
from cdp_common.jobs import JobRunner
from cdp_common.migrations import migrate
from cdp_common.testing import PlatformUnderTest
from cdp_profile import resolution
from cdp_profile.context import BACKFILL_JOB, ProfileContext
from cdp_profile.jobs import ComputedTraitBackfill
from cdp_profile.main import MIGRATIONS
from cdp_profile.resolution import resolve_events
from sqlalchemy.ext.asyncio import AsyncEngine, AsyncSession, async_sessionmaker

T0 = datetime(2026, 11, 1, 12, 0, tzinfo=UTC)
_ids = count(1)


@dataclass
class FakeClock:
    """A clock the test moves by hand."""

    now: datetime = T0 + timedelta(days=1)

    def __call__(self) -> datetime:
        return self.now

    def advance(self, **delta: float) -> None:
        self.now += timedelta(**delta)


@dataclass
class ProfileDb:
    """A migrated private schema and what the handlers need to run against it."""

    engine: AsyncEngine
    sessions: async_sessionmaker[AsyncSession]
    context: ProfileContext
    clock: FakeClock
    batched: bool = False

    async def resolve(self, *envelopes: Envelope[Any]) -> list[str | None]:
        """Resolve events in one transaction, as the consumer runner does with a partition batch:
        in bulk, or one at a time as it does after a batch failed."""
        async with transaction(self.sessions) as session:
            if self.batched:
                return await resolve_events(session=session, envelopes=envelopes, context=self.context)
            return [
                await resolution.resolve_event(session=session, envelope=envelope, context=self.context)
                for envelope in envelopes
            ]

    async def run_job(self, job_id: str, *, batch_size: int = 3) -> None:
        """Run a backfill job to its end with the service's job runner (small batches, so it takes steps)."""
        runner = JobRunner(
            service="profile",
            engine=self.engine,
            session_factory=self.sessions,
            kinds={
                BACKFILL_JOB: ComputedTraitBackfill(
                    context=self.context, batch_size=batch_size, max_batch_size=batch_size
                )
            },
        )
        assert await runner.run_job(job_id)

    async def published(self) -> list[Envelope[Any]]:
        """Return every message written to the outbox, in order."""
        async with self.engine.connect() as conn:
            rows = await conn.execute(sa.select(outbox_table.c.payload).order_by(outbox_table.c.id))
            return [decode_envelope(bytes(r.payload)) for r in rows]

    async def scalar(self, sql: str, **params: Any) -> Any:
        """Run one query and return its first column of the first row."""
        async with self.engine.connect() as conn:
            return (await conn.execute(sa.text(sql), params)).scalar()


@pytest.fixture(params=["one_at_a_time", "batched"])
async def db(platform: PlatformUnderTest, request: pytest.FixtureRequest) -> AsyncIterator[ProfileDb]:
    schema = "profile_" + secrets.token_hex(5)
    settings = platform.settings()
    engine = create_engine(database_url=settings.database_url, schema=schema, pool_size=5)
    await migrate(engine=engine, schema=schema, script_location=MIGRATIONS)
    clock = FakeClock()
    context = ProfileContext(
        profiles_topic=f"{platform.env}.cdp.profiles.v1",
        privacy_topic=f"{platform.env}.cdp.privacy.v1",
        hash_key=platform.hash_key,
        default_region="DE",
        clock=clock,
    )
    yield ProfileDb(
        engine=engine,
        sessions=create_session_factory(engine),
        context=context,
        clock=clock,
        batched=request.param == "batched",
    )
    await engine.dispose()
    cleanup = create_engine(database_url=settings.database_url, schema="public", pool_size=1)
    async with cleanup.begin() as conn:
        await conn.execute(sa.text(f'DROP SCHEMA "{schema}" CASCADE'))
    await cleanup.dispose()


def tracking(
    *,
    user_id: str | None = None,
    anonymous_id: str | None = None,
    type: str = "track",
    event: str | None = "Page Viewed",
    name: str | None = None,
    at: datetime | None = None,
    traits: dict[str, Any] | None = None,
    context_traits: dict[str, Any] | None = None,
    properties: dict[str, Any] | None = None,
    context: dict[str, Any] | None = None,
    event_id: str | None = None,
) -> Envelope[Any]:
    """Build the envelope ingest would publish for one call."""
    n = next(_ids)
    timestamp = at or T0 + timedelta(seconds=n)
    full_context = dict(context or {})
    if context_traits is not None:
        full_context["traits"] = context_traits
    payload = TrackingEventReceived(
        type=type,
        messageId=f"m-{n}-{secrets.token_hex(3)}",
        sourceId="src_test",
        receivedAt=timestamp,
        timestamp=timestamp,
        userId=user_id,
        anonymousId=anonymous_id,
        event=event if type == "track" else None,
        name=name,
        properties=properties or {},
        traits=traits or {},
        context=full_context,
    )
    return make_envelope(
        payload=payload,
        source="ingest",
        subject=user_id or anonymous_id or "none",
        id=event_id or f"evt-{n}-{secrets.token_hex(4)}",
    )


def uid(prefix: str = "u") -> str:
    """Return an identifier value no other test uses."""
    return f"{prefix}-{secrets.token_hex(4)}"
