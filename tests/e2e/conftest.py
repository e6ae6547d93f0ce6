"""Fixtures of the end-to-end tests: the session's services come from the cdp_common plugin."""

from __future__ import annotations

from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import httpx
import pytest
from cdp_common.settings import PlatformSettings
from cdp_common.testing import (
    SERVICES,
    PlatformUnderTest,
    ServiceProcess,
    Stack,
    free_port,
    private_database,
    unique_env,
)

__all__ = ["SERVICES", "Chain", "Stack", "profile_and_segment"]


@pytest.fixture
async def http() -> AsyncIterator[httpx.AsyncClient]:
    async with httpx.AsyncClient(timeout=15) as client:
        yield client


@dataclass
class Chain:
    """Profile and segment processes of one test over a database of their own."""

    profile: ServiceProcess
    segment: ServiceProcess
    database_url: str
    admin: dict[str, str]
    settings: PlatformSettings

    async def members(self, http: httpx.AsyncClient, key: str) -> set[str]:
        """Return every member of a segment, through its pages."""
        found: set[str] = set()
        cursor: str | None = None
        while True:
            params: dict[str, Any] = {"limit": 1000}
            if cursor:
                params["cursor"] = cursor
            page = await http.get(
                f"{self.segment.url}/v1/segments/{key}/members", params=params, headers=self.admin
            )
            assert page.status_code == 200, page.text
            found.update(item["profile_id"] for item in page.json()["items"])
            cursor = page.json()["next"]
            if not cursor:
                return found


@asynccontextmanager
async def profile_and_segment(
    platform: PlatformUnderTest, *, name: str, logs: Path, kafka_bootstrap: str | None = None
) -> AsyncIterator[Chain]:
    """Start profile and segment in an environment and a database of their own; stop them after."""
    env = unique_env(platform)
    bootstrap = kafka_bootstrap or platform.kafka_bootstrap
    async with private_database(platform, name) as database_url:
        environ = {
            **platform.environ(),
            "CDP_ENV": env,
            "CDP_DATABASE_URL": database_url,
            "CDP_KAFKA_BOOTSTRAP": bootstrap,
        }
        profile = ServiceProcess(
            name="profile", port=free_port(), environ=environ, log_path=logs / "profile.log"
        )
        segment = ServiceProcess(
            name="segment",
            port=free_port(),
            environ={**environ, "CDP_PROFILE_URL": profile.url},
            log_path=logs / "segment.log",
        )
        profile.start()
        segment.start()
        try:
            await profile.wait_ready(timeout=180)
            await segment.wait_ready(timeout=180)
            yield Chain(
                profile=profile,
                segment=segment,
                database_url=database_url,
                admin={"Authorization": f"Bearer {platform.admin_token}"},
                settings=platform.settings(env=env, kafka_bootstrap=bootstrap),
            )
        finally:
            segment.stop()
            profile.stop()
