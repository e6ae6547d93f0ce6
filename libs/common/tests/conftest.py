"""Fixtures for the common library's tests: a private schema per test on the real PostgreSQL."""

from __future__ import annotations

import gc
import logging
import secrets
from collections.abc import AsyncIterator, Iterator

import pytest
import sqlalchemy as sa
from aiokafka import AIOKafkaProducer
from cdp_common.db import create_engine, platform_metadata
from cdp_common.kafka import create_producer, ensure_topics
from cdp_common.settings import PlatformSettings
from cdp_common.testing import PlatformUnderTest, unique_env
from cdp_common.topics import TopicName
from sqlalchemy.ext.asyncio import AsyncEngine

effects_metadata = sa.MetaData()
effects = sa.Table(
    "effects",
    effects_metadata,
    sa.Column("id", sa.BigInteger, sa.Identity(), primary_key=True),
    sa.Column("event_id", sa.Text, nullable=False),
    sa.Column("token_id", sa.Text, nullable=False),
)


@pytest.fixture
async def schema_engine(platform: PlatformUnderTest) -> AsyncIterator[AsyncEngine]:
    """An engine bound to a fresh schema holding the platform tables and an effects table."""
    schema = "s_" + secrets.token_hex(6)
    engine = create_engine(database_url=platform.settings().database_url, schema=schema, pool_size=5)
    async with engine.begin() as conn:
        await conn.execute(sa.text(f'CREATE SCHEMA "{schema}"'))
    async with engine.begin() as conn:
        await conn.run_sync(platform_metadata.create_all)
        await conn.run_sync(effects_metadata.create_all)
    yield engine
    async with engine.begin() as conn:
        await conn.execute(sa.text(f'DROP SCHEMA "{schema}" CASCADE'))
    await engine.dispose()


@pytest.fixture
async def settings(platform: PlatformUnderTest) -> PlatformSettings:
    """Settings of a test-private environment whose tokens topic exists."""
    settings = platform.settings(env=unique_env(platform), consumer_max_retries=2)
    await ensure_topics(settings, [TopicName.TOKENS])
    return settings


@pytest.fixture
async def producer(settings: PlatformSettings) -> AsyncIterator[AIOKafkaProducer]:
    """A started idempotent producer."""
    producer = create_producer(settings, client_id="common-test")
    await producer.start()
    yield producer
    await producer.stop()


@pytest.fixture
def process_state() -> Iterator[None]:
    """Give back the logging set-up and collector thresholds a service's start changes in this process."""
    root = logging.getLogger()
    handlers, level = root.handlers[:], root.level
    thresholds = gc.get_threshold()
    yield
    root.handlers[:] = handlers
    root.setLevel(level)
    gc.unfreeze()
    gc.set_threshold(*thresholds)
