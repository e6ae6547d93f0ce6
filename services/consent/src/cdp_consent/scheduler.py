"""The consent service's background work, off any consumer transaction: expiring unconfirmed
opt-ins, and assembling access bundles over HTTP for requests that are ready."""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Awaitable, Callable
from datetime import UTC, datetime, timedelta
from typing import Any
from urllib.parse import quote

import httpx
from cdp_common.db import transaction
from sqlalchemy.ext.asyncio import AsyncSession, async_sessionmaker

from cdp_consent import handlers, store
from cdp_consent.domain.privacy import SERVICES
from cdp_consent.metrics import (
    PRIVACY_REQUEST_OLDEST_AGE,
    PRIVACY_REQUESTS_DUE_SOON,
    PRIVACY_REQUESTS_OPEN,
    PRIVACY_REQUESTS_OVERDUE,
)
from cdp_consent.settings import Settings

logger = logging.getLogger(__name__)

Job = Callable[[], Awaitable[object]]


class Scheduler:
    """Runs the service's periodic jobs in one background task until stopped."""

    def __init__(self, *, session_factory: async_sessionmaker[AsyncSession], interval_s: float) -> None:
        self._session_factory = session_factory
        self._interval_s = interval_s
        self._jobs: list[tuple[str, Job]] = [("expire_opt_ins", self.expire_opt_ins)]
        self._task: asyncio.Task[None] | None = None

    def add_job(self, name: str, job: Job) -> None:
        """Run a job on every tick, after the ones already added."""
        self._jobs.append((name, job))

    def start(self) -> None:
        """Run the jobs in the background."""
        self._task = asyncio.create_task(self._run(), name="consent-scheduler")

    async def stop(self) -> None:
        """Stop the jobs."""
        if self._task is not None:
            self._task.cancel()
            await asyncio.gather(self._task, return_exceptions=True)
            self._task = None

    async def _run(self) -> None:
        while True:
            for name, job in self._jobs:
                try:
                    await job()
                except asyncio.CancelledError:
                    raise
                except Exception:
                    logger.exception("scheduled job failed; retrying on the next tick", extra={"job": name})
            await asyncio.sleep(self._interval_s)

    async def expire_opt_ins(self) -> int:
        """Mark unconfirmed opt-in requests past their expiry as expired."""
        async with transaction(self._session_factory) as session:
            return await store.expire_opt_ins(session=session, now=datetime.now(UTC))


class PartNotFetched(Exception):
    """A service did not serve its part of a person's data (unreachable or an error answer)."""


class AccessBundleAssembler:
    """Fetches every service's part of a person's data over HTTP and closes the access request."""

    def __init__(
        self,
        *,
        session_factory: async_sessionmaker[AsyncSession],
        settings: Settings,
        privacy_topic: str,
    ) -> None:
        self._session_factory = session_factory
        self._settings = settings
        self._privacy_topic = privacy_topic
        self._client = httpx.AsyncClient(
            timeout=settings.fetch_timeout_s,
            headers={"Authorization": f"Bearer {settings.admin_token.get_secret_value()}"},
        )

    async def close(self) -> None:
        """Close the HTTP client."""
        await self._client.aclose()

    async def assemble_due(self) -> int:
        """Assemble the bundles of every access request that is ready; return how many were tried."""
        async with transaction(self._session_factory) as session:
            claimed = await store.claim_due_assemblies(
                session=session, now=datetime.now(UTC), lease_s=self._settings.fetch_timeout_s * 6
            )
        for request in claimed:
            await self._assemble(request)
        return len(claimed)

    async def _assemble(self, request: dict[str, Any]) -> None:
        try:
            parts = await self.fetch_parts(profile_ids=list(request["profile_ids"] or []))
        except PartNotFetched as exc:
            logger.warning("access bundle postponed", extra={"request_id": request["id"], "error": str(exc)})
            async with transaction(self._session_factory) as session:
                await handlers.postpone_assembly(
                    session=session,
                    request_id=request["id"],
                    error=str(exc),
                    max_attempts=self._settings.assembly_max_attempts,
                    retry_s=self._settings.assembly_retry_s,
                    privacy_topic=self._privacy_topic,
                )
            return
        async with transaction(self._session_factory) as session:
            await handlers.store_access_bundle(
                session=session, request_id=request["id"], parts=parts, privacy_topic=self._privacy_topic
            )

    async def fetch_parts(self, *, profile_ids: list[str]) -> dict[str, dict[str, Any]]:
        """Fetch every service's part for every profile id; a 404 means the service holds nothing."""
        urls = self._settings.service_urls()
        wanted = [(service, profile_id) for service in SERVICES for profile_id in profile_ids]
        answers = await asyncio.gather(*(self._fetch(urls[s], s, p) for s, p in wanted))
        parts: dict[str, dict[str, Any]] = {service: {} for service in SERVICES}
        for (service, profile_id), data in zip(wanted, answers, strict=True):
            if data is not None:
                parts[service][profile_id] = data
        return parts

    async def _fetch(self, base_url: str, service: str, profile_id: str) -> Any:
        url = f"{base_url.rstrip('/')}/v1/privacy/profiles/{quote(profile_id, safe='')}"
        try:
            response = await self._client.get(url)
        except httpx.HTTPError as exc:
            raise PartNotFetched(f"{service} unreachable: {type(exc).__name__}") from exc
        if response.status_code == 404:
            return None
        if response.status_code != 200:
            raise PartNotFetched(f"{service} answered {response.status_code}")
        try:
            return response.json()["data"]
        except (ValueError, KeyError, TypeError) as exc:
            raise PartNotFetched(f"{service} answered without data") from exc


async def expire_bundles(session_factory: async_sessionmaker[AsyncSession], *, retention_days: int) -> int:
    """Drop access bundles older than their retention."""
    async with transaction(session_factory) as session:
        return await store.expire_bundles(
            session=session, completed_before=datetime.now(UTC) - timedelta(days=retention_days)
        )


async def report_overdue(
    session_factory: async_sessionmaker[AsyncSession], *, warn_before: timedelta = timedelta(days=7)
) -> int:
    """Set the gauges of open privacy requests: open, near their deadline, overdue, oldest age."""
    async with transaction(session_factory) as session:
        summary = await store.summarise_open_requests(
            session=session, now=datetime.now(UTC), warn_before=warn_before
        )
    PRIVACY_REQUESTS_OPEN.set(summary.open)
    PRIVACY_REQUESTS_DUE_SOON.set(summary.due_soon)
    PRIVACY_REQUESTS_OVERDUE.set(summary.overdue)
    PRIVACY_REQUEST_OLDEST_AGE.set(summary.oldest_age_s)
    return summary.overdue
