"""Builds the ingest service: the app, its lifespan, the default source, and what uvicorn serves."""

from __future__ import annotations

from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from pathlib import Path

import uvicorn
from cdp_common.db import transaction
from cdp_common.openapi import ApiDescription
from cdp_common.service import ServiceRuntime, build_app
from fastapi import FastAPI
from fastapi.middleware.cors import CORSMiddleware

from cdp_ingest import handlers
from cdp_ingest.api import Intake, routers, tracking
from cdp_ingest.consumer import SERVICE, consumer_specs
from cdp_ingest.dispatch import TrackingDispatch, post_endpoints
from cdp_ingest.domain.call_schemas import tracking_bodies
from cdp_ingest.settings import Settings

MIGRATIONS = Path(__file__).resolve().parents[2] / "migrations"


def create_app(settings: Settings) -> FastAPI:
    """Create the ingest service's app; resources are built in its lifespan."""

    async def prepare(runtime: ServiceRuntime) -> None:
        producer = handlers.create_tracking_producer(settings)
        await producer.start()
        app.state.intake = Intake(
            settings=settings,
            write_keys=handlers.WriteKeys(
                session_factory=runtime.session_factory, ttl_s=settings.write_key_cache_s
            ),
            producer=producer,
        )
        default_key = settings.default_write_key.get_secret_value()
        if default_key:
            async with transaction(runtime.session_factory) as session:
                await handlers.create_source(session=session, name="default", write_key=default_key)

    runtime = ServiceRuntime(
        service=SERVICE,
        settings=settings,
        migrations=MIGRATIONS,
        consumers=consumer_specs(settings),
        on_start=[prepare],
    )
    app = build_app(
        runtime=runtime,
        routers=routers,
        title="CDP ingest service",
        description=ApiDescription(
            write_key_paths=set(post_endpoints(tracking)),
            request_bodies=tracking_bodies()[0],
            schemas=tracking_bodies()[1],
            error_codes={
                400: [
                    "invalid_json",
                    "invalid_gzip",
                    "invalid_batch",
                    "no_valid_event",
                    "invalid_type",
                    "invalid_field",
                    "invalid_item",
                    "invalid_message_id",
                    "invalid_timestamp",
                    "timestamp_out_of_range",
                    "no_user_id",
                    "no_user_anon_id",
                    "missing_event",
                    "missing_group_id",
                    "missing_previous_id",
                    "string_too_long",
                    "array_too_long",
                    "too_many_properties",
                    "non_finite_number",
                    "invalid_transaction",
                    "invalid_ecommerce_event",
                    "unplanned_event",
                    "tracking_plan_violation",
                ],
                401: ["missing_write_key"],
                404: ["source_not_found", "token_not_found", "tracking_plan_not_found"],
                413: ["event_too_large", "too_many_events"],
                415: ["unsupported_media_type", "unsupported_encoding"],
                422: ["invalid_tracking_plan"],
            },
        ),
    )
    runtime_lifespan = app.router.lifespan_context

    @asynccontextmanager
    async def lifespan(_: FastAPI) -> AsyncIterator[None]:
        # The tracking producer flushes and stops before the runtime (and its engine) does.
        async with runtime_lifespan(app):
            try:
                yield
            finally:
                intake: Intake | None = getattr(app.state, "intake", None)
                if intake is not None:
                    await intake.batcher.close()
                    await intake.producer.stop()

    app.router.lifespan_context = lifespan
    # Browsers call the tracking API from any site (analytics.js, sendBeacon); no cookies are read.
    app.add_middleware(
        CORSMiddleware,
        allow_origins=["*"],
        allow_methods=["GET", "POST", "PUT", "PATCH", "DELETE", "OPTIONS"],
        allow_headers=["*"],
        max_age=86400,
    )
    return app


def create_server(settings: Settings) -> TrackingDispatch:
    """Create what uvicorn serves: the app, with the tracking POSTs answered ahead of its middleware."""
    return TrackingDispatch(create_app(settings), service=SERVICE, endpoints=post_endpoints(tracking))


def main() -> None:
    """Run the service with uvicorn, as cdp_common.service.serve runs an app."""
    settings = Settings()
    uvicorn.run(
        create_server(settings),
        host=settings.host,
        port=settings.port,
        log_config=None,
        access_log=False,
        proxy_headers=False,
    )
