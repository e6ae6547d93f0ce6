"""Builds the campaign service: the app and its runtime, its consumers, its ways out and its periodic jobs."""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path

import httpx
from cdp_common.openapi import ApiDescription
from cdp_common.service import ServiceRuntime, build_app, serve
from fastapi import FastAPI

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
from cdp_campaign.jobs import periodic_jobs
from cdp_campaign.settings import Settings

MIGRATIONS = Path(__file__).resolve().parents[2] / "migrations"


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
    """Create the campaign service's app; the runtime starts and stops it with the app's lifespan."""
    ways = gateways or Gateways()
    client = httpx.AsyncClient(timeout=settings.campaign_http_timeout_s, trust_env=False)
    runtime = ServiceRuntime(service=SERVICE, settings=settings, migrations=MIGRATIONS, topics=[SENDS_TOPIC])
    mailer = ways.mailer or SmtpMailer(
        url=settings.smtp_url,
        connections=settings.campaign_smtp_connections,
        timeout_s=settings.campaign_smtp_timeout_s,
    )
    ctx = CampaignContext(
        settings=settings,
        session_factory=runtime.session_factory,
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

    async def start_composer(_: ServiceRuntime) -> None:
        await ctx.composer.start()

    async def close_ways_out(_: ServiceRuntime) -> None:
        if isinstance(mailer, SmtpMailer):
            await mailer.close()
        await ctx.composer.close()
        await client.aclose()

    # The consumers and jobs hold the context, which holds the runtime's session factory.
    runtime.consumers = consumer_specs(settings, ctx)
    runtime.periodic = periodic_jobs(ctx=ctx) if ways.run_scheduler else []
    runtime.on_start = [start_composer]
    runtime.on_stop = [close_ways_out]
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
    return app


def main() -> None:
    """Run the service with uvicorn."""
    settings = Settings()
    serve(create_app(settings), host=settings.host, port=settings.port)
