"""The consent service's periodic jobs, off any consumer transaction: expiring unconfirmed
opt-ins, assembling access bundles over HTTP for requests that are ready, the gauges of open
privacy requests, and dropping bundles past their retention. main.py hands them to the runtime,
which runs each every `CDP_SCHEDULER_INTERVAL_S` with a separate session."""

from __future__ import annotations

import asyncio
import logging
from datetime import UTC, datetime, timedelta
from functools import partial
from typing import Any
from urllib.parse import quote

import httpx
from cdp_common.periodic import PeriodicJob
from sqlalchemy.ext.asyncio import AsyncSession

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


def periodic_jobs(*, settings: Settings, assembler: AccessBundleAssembler) -> list[PeriodicJob]:
    """Return the service's periodic jobs, each run every `scheduler_interval_s`."""
    every = settings.scheduler_interval_s
    return [
        PeriodicJob(name="expire_opt_ins", interval_s=every, run=expire_opt_ins),
        PeriodicJob(name="assemble_access_bundles", interval_s=every, run=assembler.assemble_due),
        PeriodicJob(
            name="report_overdue_requests",
            interval_s=every,
            run=partial(report_overdue, warn_before=timedelta(days=settings.privacy_deadline_warning_days)),
        ),
        PeriodicJob(
            name="expire_access_bundles",
            interval_s=every,
            run=partial(expire_bundles, retention_days=settings.bundle_retention_days),
        ),
    ]


async def expire_opt_ins(*, session: AsyncSession) -> int:
    """Mark unconfirmed opt-in requests past their expiry as expired."""
    return await store.expire_opt_ins(session=session, now=datetime.now(UTC))


class PartNotFetched(Exception):
    """A service did not serve its part of a person's data (unreachable or an error answer)."""


class AccessBundleAssembler:
    """Fetches every service's part of a person's data over HTTP and closes the access request."""

    def __init__(self, *, settings: Settings, privacy_topic: str) -> None:
        self._settings = settings
        self._privacy_topic = privacy_topic
        self._client = httpx.AsyncClient(
            timeout=settings.fetch_timeout_s,
            headers={"Authorization": f"Bearer {settings.admin_token.get_secret_value()}"},
        )

    async def close(self) -> None:
        """Close the HTTP client."""
        await self._client.aclose()

    async def assemble_due(self, *, session: AsyncSession) -> int:
        """Assemble the bundles of every access request that is ready; return how many were tried.

        The claim commits before any service is asked, and each bundle commits on its own.
        """
        claimed = await store.claim_due_assemblies(
            session=session, now=datetime.now(UTC), lease_s=self._settings.fetch_timeout_s * 6
        )
        await session.commit()
        for request in claimed:
            await self._assemble(session, request)
            await session.commit()
        return len(claimed)

    async def _assemble(self, session: AsyncSession, request: dict[str, Any]) -> None:
        try:
            parts = await self.fetch_parts(profile_ids=list(request["profile_ids"] or []))
        except PartNotFetched as exc:
            logger.warning("access bundle postponed", extra={"request_id": request["id"], "error": str(exc)})
            await handlers.postpone_assembly(
                session=session,
                request_id=request["id"],
                error=str(exc),
                max_attempts=self._settings.assembly_max_attempts,
                retry_s=self._settings.assembly_retry_s,
                privacy_topic=self._privacy_topic,
            )
            return
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


async def expire_bundles(*, session: AsyncSession, retention_days: int) -> int:
    """Drop access bundles older than their retention."""
    return await store.expire_bundles(
        session=session, completed_before=datetime.now(UTC) - timedelta(days=retention_days)
    )


async def report_overdue(*, session: AsyncSession, warn_before: timedelta = timedelta(days=7)) -> int:
    """Set the gauges of open privacy requests: open, near their deadline, overdue, oldest age."""
    summary = await store.summarise_open_requests(
        session=session, now=datetime.now(UTC), warn_before=warn_before
    )
    PRIVACY_REQUESTS_OPEN.set(summary.open)
    PRIVACY_REQUESTS_DUE_SOON.set(summary.due_soon)
    PRIVACY_REQUESTS_OVERDUE.set(summary.overdue)
    PRIVACY_REQUEST_OLDEST_AGE.set(summary.oldest_age_s)
    return summary.overdue
