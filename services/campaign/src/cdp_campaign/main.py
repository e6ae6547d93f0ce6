"""Builds the campaign service: the app, its lifespan, its consumers, its ways out and the scheduler."""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections.abc import AsyncIterator
from dataclasses import dataclass, field
from pathlib import Path

import httpx
from cdp_common.openapi import ApiDescription
from cdp_common.service import ServiceRuntime, build_app, serve
from fastapi import FastAPI
from sqlalchemy.ext.asyncio import AsyncSession, async_sessionmaker

from cdp_campaign.api import routers
from cdp_campaign.consumer import SENDS_TOPIC, SERVICE, consumer_specs
from cdp_campaign.context import CampaignContext
from cdp_campaign.domain.addresses import parse_allowlist
from cdp_campaign.gateways import (
    Clock,
    ConsentGate,
    EngagementTracker,
    HttpConsentGate,
    HttpSmsProvider,
    IngestTracker,
    MailSender,
    SafeWebhookSender,
    SmsProvider,
    SmtpMailer,
    SystemClock,
    WebhookSender,
    composer_for,
)
from cdp_campaign.jobs import scheduler_tick
from cdp_campaign.settings import Settings

MIGRATIONS = Path(__file__).resolve().parents[2] / "migrations"
logger = logging.getLogger(__name__)


@dataclass
class Gateways:
    """The ways out; None means the real one built from settings."""

    consent: ConsentGate | None = None
    tracker: EngagementTracker | None = None
    mailer: MailSender | None = None
    sms: SmsProvider | None = None
    webhooks: WebhookSender | None = None
    clock: Clock = field(default_factory=SystemClock)
    run_scheduler: bool = True


def create_app(settings: Settings, gateways: Gateways | None = None) -> FastAPI:
    """Create the campaign service's app; resources are built in its lifespan."""
    ways = gateways or Gateways()
    client = httpx.AsyncClient(timeout=settings.campaign_http_timeout_s, trust_env=False)
    holder: dict[str, ServiceRuntime] = {}

    def session_factory() -> async_sessionmaker[AsyncSession]:
        return holder["runtime"].session_factory

    mailer = ways.mailer or SmtpMailer(
        url=settings.smtp_url,
        connections=settings.campaign_smtp_connections,
        timeout_s=settings.campaign_smtp_timeout_s,
    )
    ctx = CampaignContext(
        settings=settings,
        session_factory=session_factory,
        consent=ways.consent
        or HttpConsentGate(
            client=client, base_url=settings.consent_url, token=settings.admin_token.get_secret_value()
        ),
        tracker=ways.tracker
        or IngestTracker(
            client=client,
            base_url=settings.ingest_url,
            write_key=settings.default_write_key.get_secret_value(),
        ),
        mailer=mailer,
        sms=ways.sms
        or HttpSmsProvider(
            client=client, url=settings.campaign_sms_url, token=settings.campaign_sms_token.get_secret_value()
        ),
        webhooks=ways.webhooks
        or SafeWebhookSender(
            key=settings.hash_key.get_secret_value(),
            allowlist=parse_allowlist(settings.campaign_webhook_allowlist),
            timeout_s=settings.campaign_webhook_timeout_s,
        ),
        clock=ways.clock,
        composer=composer_for(settings=settings),
    )
    scheduler: dict[str, asyncio.Task[None]] = {}

    async def start_workers(runtime: ServiceRuntime) -> None:
        await ctx.composer.start()
        if ways.run_scheduler:
            scheduler["task"] = asyncio.create_task(run_scheduler(ctx), name="campaign-scheduler")

    runtime = ServiceRuntime(
        service=SERVICE,
        settings=settings,
        migrations=MIGRATIONS,
        consumers=consumer_specs(settings, ctx),
        topics=[SENDS_TOPIC],
        on_start=[start_workers],
    )
    holder["runtime"] = runtime
    app = build_app(
        runtime=runtime,
        routers=routers,
        title="CDP campaign service",
        description=ApiDescription(
            error_codes={
                409: ["invalid_transition", "suppressed"],
                422: [
                    "invalid_campaign",
                    "invalid_template",
                    "invalid_address",
                    "address_rejected",
                    "unknown_variant",
                    "unsupported_channel",
                    "webhook_not_allowed",
                ],
                503: ["consent_unavailable", "composing_unavailable", "smtp_failed"],
            }
        ),
    )
    app.state.campaign = ctx
    inner = app.router.lifespan_context

    @contextlib.asynccontextmanager
    async def lifespan(app: FastAPI) -> AsyncIterator[None]:
        async with inner(app):
            try:
                yield
            finally:
                task = scheduler.pop("task", None)
                if task is not None:
                    task.cancel()
                    await asyncio.gather(task, return_exceptions=True)
        if isinstance(mailer, SmtpMailer):
            await mailer.close()
        await ctx.composer.close()
        await client.aclose()

    app.router.lifespan_context = lifespan
    return app


async def run_scheduler(ctx: CampaignContext) -> None:
    """Run the scheduler's tick at the configured interval until cancelled."""
    while True:
        try:
            await scheduler_tick(ctx=ctx, now=ctx.clock.now())
        except asyncio.CancelledError:
            raise
        except Exception:
            logger.exception("scheduler tick failed")
        await asyncio.sleep(ctx.settings.campaign_scheduler_interval_s)


def main() -> None:
    """Run the service with uvicorn."""
    settings = Settings()
    serve(create_app(settings), host=settings.host, port=settings.port)
