"""The campaign schema as the migrations build it is the one the store package reads and writes."""

from __future__ import annotations

from typing import Any

import pytest
from alembic.autogenerate import compare_metadata
from alembic.migration import MigrationContext
from cdp_campaign import store
from cdp_campaign.consumer import SERVICE
from cdp_campaign.main import MIGRATIONS
from cdp_common.db import create_engine
from cdp_common.migrations import migrate
from cdp_common.testing import PlatformUnderTest, private_database
from sqlalchemy.engine import Connection

pytestmark = pytest.mark.integration


def _differences(connection: Connection) -> list[Any]:
    context = MigrationContext.configure(
        connection,
        opts={
            # Only the store's tables: the platform's own (outbox, tokens, ...) are not in its metadata.
            "include_name": lambda name, kind, _: kind != "table" or name in store.metadata.tables,
            "compare_server_default": True,
        },
    )
    return list(compare_metadata(context, store.metadata))


async def test_the_migrated_schema_is_the_one_the_store_uses(platform: PlatformUnderTest) -> None:
    async with private_database(platform, "campaign_schema") as database_url:
        settings = platform.settings(database_url=database_url)
        engine = create_engine(database_url=settings.database_url, schema=SERVICE)
        try:
            await migrate(engine=engine, schema=SERVICE, script_location=MIGRATIONS)
            async with engine.connect() as connection:
                differences = await connection.run_sync(_differences)
        finally:
            await engine.dispose()
    assert differences == []
