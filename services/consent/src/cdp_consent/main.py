"""Builds the consent service: the app and its runtime, with its consumers and periodic jobs."""

from __future__ import annotations

from pathlib import Path

from cdp_common.openapi import ApiDescription
from cdp_common.service import ServiceRuntime, build_app, serve
from cdp_common.topics import TopicName
from fastapi import FastAPI

from cdp_consent.api import routers
from cdp_consent.consumer import SERVICE, consumer_specs
from cdp_consent.handlers import ConsentContext
from cdp_consent.jobs import AccessBundleAssembler, periodic_jobs
from cdp_consent.settings import Settings

MIGRATIONS = Path(__file__).resolve().parents[2] / "migrations"


def create_app(settings: Settings) -> FastAPI:
    """Create the consent service's app; the runtime starts and stops it with the app's lifespan."""
    assembler = AccessBundleAssembler(settings=settings, privacy_topic=settings.topic(TopicName.PRIVACY))

    async def close_assembler(_: ServiceRuntime) -> None:
        await assembler.close()

    runtime = ServiceRuntime(
        service=SERVICE,
        settings=settings,
        migrations=MIGRATIONS,
        consumers=consumer_specs(settings),
        periodic=periodic_jobs(settings=settings, assembler=assembler),
        on_stop=[close_assembler],
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
