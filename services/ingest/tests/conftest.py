"""Fixtures of ingest's HTTP and client tests: the ingest service alone as a process in the
session's environment (so these tests depend on no other service), and reads of cdp.events.v1."""

from __future__ import annotations

import asyncio
import secrets
from collections.abc import AsyncIterator, Callable, Iterable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import httpx
import pytest
from cdp_common.envelope import Envelope
from cdp_common.testing import PlatformUnderTest, ServiceProcess, free_port, read_topic
from cdp_common.topics import TopicName


def pytest_configure(config: pytest.Config) -> None:
    config.addinivalue_line("markers", "slow: takes tens of seconds (a private broker, an outage)")


@dataclass(frozen=True)
class Ingest:
    """The session's ingest process and the credentials to call it."""

    url: str
    write_key: str
    admin_token: str

    def admin(self) -> dict[str, str]:
        """Headers that authenticate as the session's admin."""
        return {"Authorization": f"Bearer {self.admin_token}"}


def start_ingest(platform: PlatformUnderTest, logs: Path, **environ: str) -> tuple[ServiceProcess, str]:
    """Start an ingest process of this session with extra settings; return it and its default write key."""
    write_key = "wk_" + secrets.token_hex(12)
    process = ServiceProcess(
        name="ingest",
        port=free_port(),
        environ={**platform.environ(), "CDP_DEFAULT_WRITE_KEY": write_key, **environ},
        log_path=logs / f"ingest-{secrets.token_hex(3)}.log",
    )
    process.start()
    try:
        asyncio.run(process.wait_ready())
    except BaseException:
        process.stop()
        raise
    return process, write_key


@pytest.fixture(scope="session")
def ingest(platform: PlatformUnderTest, tmp_path_factory: pytest.TempPathFactory) -> Iterator[Ingest]:
    """The ingest service of this session, started once, alone."""
    process, write_key = start_ingest(platform, tmp_path_factory.mktemp("ingest-logs"))
    try:
        yield Ingest(url=process.url, write_key=write_key, admin_token=platform.admin_token)
    finally:
        process.stop()


@pytest.fixture
async def http() -> AsyncIterator[httpx.AsyncClient]:
    async with httpx.AsyncClient(timeout=20) as client:
        yield client


@pytest.fixture
async def source(ingest: Ingest, http: httpx.AsyncClient) -> dict[str, Any]:
    """A fresh source of this test, with its write key."""
    response = await http.post(
        f"{ingest.url}/v1/sources",
        json={"name": "test " + secrets.token_hex(3)},
        headers=ingest.admin(),
    )
    assert response.status_code == 201, response.text
    created: dict[str, Any] = response.json()
    return created


async def read_events(
    platform: PlatformUnderTest, message_ids: Iterable[str], *, timeout: float = 30
) -> dict[str, Envelope[Any]]:
    """Read cdp.events.v1 of the session until every message id is there; return them by message id."""
    wanted = set(message_ids)

    def found(envelopes: list[Envelope[Any]]) -> bool:
        return wanted <= {e.data.messageId for e in envelopes if e.type == "cdp.event.received.v1"}

    envelopes = await read_topic(
        bootstrap=platform.kafka_bootstrap,
        topic=platform.settings().topic(TopicName.EVENTS),
        until=found,
        timeout=timeout,
    )
    return {
        e.data.messageId: e
        for e in envelopes
        if e.type == "cdp.event.received.v1" and e.data.messageId in wanted
    }


async def read_events_where(
    platform: PlatformUnderTest, predicate: Callable[[Any], bool], count: int, *, timeout: float = 60
) -> list[Envelope[Any]]:
    """Read cdp.events.v1 of the session until `count` events match; return those events."""

    def matching(envelopes: list[Envelope[Any]]) -> list[Envelope[Any]]:
        return [e for e in envelopes if e.type == "cdp.event.received.v1" and predicate(e.data)]

    envelopes = await read_topic(
        bootstrap=platform.kafka_bootstrap,
        topic=platform.settings().topic(TopicName.EVENTS),
        until=lambda found: len(matching(found)) >= count,
        timeout=timeout,
    )
    return matching(envelopes)


def message_id() -> str:
    """Return a message id no other test uses."""
    return "m-" + secrets.token_hex(8)
