"""Builds the consent service: the app, its lifespan, its consumers."""

from __future__ import annotations

from pathlib import Path

from cdp_common.service import ServiceRuntime, build_app, serve
from cdp_common.topics import TopicName
from fastapi import FastAPI

from cdp_consent.api import routers
from cdp_consent.consumer import SERVICE, consumer_specs
from cdp_consent.handlers import ConsentContext
from cdp_consent.settings import Settings

MIGRATIONS = Path(__file__).resolve().parents[2] / "migrations"


def create_app(settings: Settings) -> FastAPI:
    """Create the consent service's app; resources are built in its lifespan."""
    runtime = ServiceRuntime(
        service=SERVICE, settings=settings, migrations=MIGRATIONS, consumers=consumer_specs(settings)
    )
    app = build_app(runtime=runtime, routers=routers, title="CDP consent service")
    app.state.consent_context = ConsentContext.from_settings(
        settings, consents_topic=settings.topic(TopicName.CONSENTS)
    )
    return app


def main() -> None:
    """Run the service with uvicorn."""
    settings = Settings()
    serve(create_app(settings), host=settings.host, port=settings.port)
