"""The services' engine against the real PostgreSQL: a pooled connection the server closed is
replaced before use, so the next request or poll after a restart or a terminated backend works;
JSON columns read back exactly."""

from __future__ import annotations

import secrets

import pytest
import sqlalchemy as sa
from cdp_common.db import create_engine
from cdp_common.testing import PlatformUnderTest, wait_for
from sqlalchemy.dialects.postgresql import JSONB

pytestmark = pytest.mark.integration


async def test_a_connection_the_server_closed_is_replaced_before_use(platform: PlatformUnderTest) -> None:
    url = platform.settings().database_url
    engine = create_engine(database_url=url, schema="public", pool_size=1)
    admin = create_engine(database_url=url, schema="public", pool_size=1)
    try:
        async with engine.connect() as conn:
            first = (await conn.execute(sa.text("SELECT pg_backend_pid()"))).scalar_one()
            driver = (await conn.get_raw_connection()).driver_connection
            assert driver is not None
        async with admin.connect() as conn:
            assert (
                await conn.execute(sa.text("SELECT pg_terminate_backend(:pid)"), {"pid": first})
            ).scalar_one()

        async def closed() -> bool:
            return bool(driver.is_closed())

        await wait_for(closed, what="the driver to see the server close the pooled connection")
        # The very next use of the pool works, on a new connection: no error reaches the caller.
        marker = secrets.token_hex(4)
        async with engine.connect() as conn:
            second, echoed = (await conn.execute(sa.text("SELECT pg_backend_pid(), :m"), {"m": marker})).one()
        assert second != first
        assert echoed == marker
    finally:
        await engine.dispose()
        await admin.dispose()


async def test_json_columns_read_back_exactly_what_postgresql_holds(platform: PlatformUnderTest) -> None:
    engine = create_engine(database_url=platform.settings().database_url, schema="public", pool_size=1)
    try:
        async with engine.connect() as conn:
            query = sa.text(
                """SELECT '{"big": 123456789012345678901234567890, "x": 1.5, "name": "Zoë", "none": null}'::jsonb"""
            ).columns(sa.column("doc", JSONB))
            document = (await conn.execute(query)).scalar_one()
        # A number beyond 64 bits stays exact; the rest reads as usual.
        assert document == {"big": 123456789012345678901234567890, "x": 1.5, "name": "Zoë", "none": None}
    finally:
        await engine.dispose()
