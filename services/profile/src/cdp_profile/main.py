"""Builds the profile service: the app, its lifespan, its consumers."""

from __future__ import annotations

from pathlib import Path

from cdp_common.service import ServiceRuntime, build_app, serve
from fastapi import FastAPI

from cdp_profile.api import routers
from cdp_profile.consumer import SERVICE, consumer_specs
from cdp_profile.settings import Settings

MIGRATIONS = Path(__file__).resolve().parents[2] / "migrations"


def create_app(settings: Settings) -> FastAPI:
    """Create the profile service's app; resources are built in its lifespan."""
    runtime = ServiceRuntime(
        service=SERVICE, settings=settings, migrations=MIGRATIONS, consumers=consumer_specs(settings)
    )
    return build_app(runtime=runtime, routers=routers, title="CDP profile service")


def main() -> None:
    """Run the service with uvicorn."""
    settings = Settings()
    serve(create_app(settings), host=settings.host, port=settings.port)
