"""The five services as processes, started once per test session in its own environment."""

from __future__ import annotations

import asyncio
import secrets
from collections.abc import AsyncIterator, Iterator
from pathlib import Path

import httpx
import pytest
from cdp_common.testing import PlatformUnderTest, ServiceProcess, free_port

SERVICES = ("ingest", "profile", "segment", "campaign", "consent")


class Stack:
    """The running services of a test session and the credentials to call them."""

    def __init__(self, services: dict[str, ServiceProcess], admin_token: str, write_key: str) -> None:
        self.services = services
        self.admin_token = admin_token
        self.write_key = write_key

    def url(self, name: str) -> str:
        return self.services[name].url

    def admin(self) -> dict[str, str]:
        return {"Authorization": f"Bearer {self.admin_token}"}


@pytest.fixture(scope="session")
def stack(platform: PlatformUnderTest, tmp_path_factory: pytest.TempPathFactory) -> Iterator[Stack]:
    logs = tmp_path_factory.mktemp("service-logs")
    write_key = "wk_" + secrets.token_hex(12)
    ports = {name: free_port() for name in SERVICES}
    shared = {
        **platform.environ(),
        "CDP_DEFAULT_WRITE_KEY": write_key,
        "CDP_SMTP_URL": "smtp://127.0.0.1:1",
        **{f"CDP_{name.upper()}_URL": f"http://127.0.0.1:{port}" for name, port in ports.items()},
    }
    services = {
        name: ServiceProcess(name=name, port=ports[name], environ=shared, log_path=Path(logs) / f"{name}.log")
        for name in SERVICES
    }
    try:
        # The first start creates the topics; starting it alone avoids five racing creators.
        services["ingest"].start()
        asyncio.run(services["ingest"].wait_ready())
        for name in SERVICES[1:]:
            services[name].start()

        async def all_ready() -> None:
            await asyncio.gather(*(services[name].wait_ready() for name in SERVICES[1:]))

        asyncio.run(all_ready())
        yield Stack(services, platform.admin_token, write_key)
    finally:
        for service in services.values():
            service.stop()


@pytest.fixture
async def http() -> AsyncIterator[httpx.AsyncClient]:
    async with httpx.AsyncClient(timeout=15) as client:
        yield client
