"""Builds the consent service: the app, its lifespan, its consumers and its scheduler."""

from __future__ import annotations

from dataclasses import dataclass, field
from datetime import timedelta
from pathlib import Path

from cdp_common.openapi import ApiDescription
from cdp_common.service import ServiceRuntime, build_app, serve
from cdp_common.topics import TopicName
from fastapi import FastAPI

from cdp_consent.api import routers
from cdp_consent.consumer import SERVICE, consumer_specs
from cdp_consent.handlers import ConsentContext
from cdp_consent.scheduler import AccessBundleAssembler, Scheduler, expire_bundles, report_overdue
from cdp_consent.settings import Settings

MIGRATIONS = Path(__file__).resolve().parents[2] / "migrations"


@dataclass
class ConsentRuntime(ServiceRuntime):
    """The platform's service runtime plus the consent service's scheduler."""

    scheduler: Scheduler = field(init=False)
    assembler: AccessBundleAssembler = field(init=False)

    async def start(self) -> None:
        """Start the platform's parts, then the scheduler."""
        await super().start()
        settings = self.settings
        assert isinstance(settings, Settings)
        self.scheduler = Scheduler(
            session_factory=self.session_factory, interval_s=settings.scheduler_interval_s
        )
        self.assembler = AccessBundleAssembler(
            session_factory=self.session_factory,
            settings=settings,
            privacy_topic=settings.topic(TopicName.PRIVACY),
        )
        self.scheduler.add_job("assemble_access_bundles", self.assembler.assemble_due)
        self.scheduler.add_job(
            "report_overdue_requests",
            lambda: report_overdue(
                self.session_factory, warn_before=timedelta(days=settings.privacy_deadline_warning_days)
            ),
        )
        self.scheduler.add_job(
            "expire_access_bundles",
            lambda: expire_bundles(self.session_factory, retention_days=settings.bundle_retention_days),
        )
        self.scheduler.start()

    async def stop(self) -> None:
        """Stop the scheduler first, then the platform's parts."""
        await self.scheduler.stop()
        await self.assembler.close()
        await super().stop()


def create_app(settings: Settings) -> FastAPI:
    """Create the consent service's app; resources are built in its lifespan."""
    runtime = ConsentRuntime(
        service=SERVICE, settings=settings, migrations=MIGRATIONS, consumers=consumer_specs(settings)
    )
    app = build_app(
        runtime=runtime,
        routers=routers,
        title="CDP consent service",
        description=ApiDescription(
            error_codes={
                404: ["not_found"],
                409: ["not_an_access_request", "bundle_not_ready"],
                410: ["bundle_erased"],
                413: ["too_many_profile_ids"],
                422: ["invalid_address", "invalid_subject", "unknown_purpose_or_channel"],
                503: ["mail_unavailable"],
            }
        ),
    )
    app.state.consent_context = ConsentContext.from_settings(
        settings, consents_topic=settings.topic(TopicName.CONSENTS)
    )
    return app


def main() -> None:
    """Run the service with uvicorn."""
    settings = Settings()
    serve(create_app(settings), host=settings.host, port=settings.port)
