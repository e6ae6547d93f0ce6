"""Alembic migrations per service, each in the service's own schema.

A service's migrations/env.py is one call to `run_alembic_env()`; its first
revision calls `create_platform_tables()` for the outbox, the processed-event
record and the token replica.
"""

from __future__ import annotations

from pathlib import Path

import sqlalchemy as sa
from alembic import command, context, op
from alembic.config import Config
from sqlalchemy.engine import Connection
from sqlalchemy.ext.asyncio import AsyncEngine

from cdp_common.db import platform_metadata


def _upgrade(connection: Connection, script_location: str, schema: str) -> None:
    config = Config()
    config.set_main_option("script_location", script_location)
    config.attributes["connection"] = connection
    config.attributes["schema"] = schema
    command.upgrade(config, "head")


async def migrate(*, engine: AsyncEngine, schema: str, script_location: Path) -> None:
    """Create the service's schema and bring it to the newest revision.

    Replicas starting together are serialised by an advisory lock.
    """
    async with engine.begin() as conn:
        await conn.execute(
            sa.text("SELECT pg_advisory_xact_lock(hashtextextended(:k, 0))"), {"k": f"cdp-migrate:{schema}"}
        )
        await conn.execute(sa.text(f'CREATE SCHEMA IF NOT EXISTS "{schema}"'))
        await conn.execute(sa.text(f'SET LOCAL search_path TO "{schema}"'))
        await conn.run_sync(_upgrade, str(script_location), schema)


def run_alembic_env() -> None:
    """Run the migrations on the connection `migrate` hands over; the body of every env.py."""
    connection = context.config.attributes["connection"]
    schema = context.config.attributes["schema"]
    context.configure(connection=connection, version_table_schema=schema, transactional_ddl=True)
    with context.begin_transaction():
        context.run_migrations()


def create_platform_tables() -> None:
    """Create the outbox, processed-event and token tables in the service's schema."""
    platform_metadata.create_all(bind=op.get_bind())


def create_jobs_table() -> None:
    """Create the jobs table (and its index) in the service's schema, unless it is there."""
    from cdp_common.jobs import jobs_metadata

    jobs_metadata.create_all(bind=op.get_bind(), checkfirst=True)


def index_processed_events_by_age() -> None:
    """Index the processed-event record by age (BRIN: small, and quick to build on a large table),
    for its pruning; a schema made by `create_platform_tables` has it already."""
    op.execute(
        "CREATE INDEX IF NOT EXISTS processed_events_age ON processed_events USING brin (processed_at)"
    )
