"""Fixtures of segment's integration tests: a freshly migrated schema per test, a controllable clock."""

from __future__ import annotations

import secrets
from collections.abc import AsyncIterator
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import pytest
import sqlalchemy as sa
from cdp_common.db import create_engine, create_session_factory, outbox_table
from cdp_common.envelope import Envelope, Payload
from cdp_common.events import ConsentDenied, ConsentGranted, ConsentWithdrawn, decode_envelope, make_envelope
from cdp_common.kafka import Handler
from cdp_common.migrations import migrate
from cdp_common.testing import PlatformUnderTest
from cdp_segment import handlers
from cdp_segment.handlers import SegmentContext
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
