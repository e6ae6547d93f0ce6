"""Builds the ingest service: the app and its runtime, the tracking producer and the intake, the
default source, and what uvicorn serves."""

from __future__ import annotations

from pathlib import Path

import uvicorn
from aiokafka import AIOKafkaProducer
from cdp_common.db import transaction
from cdp_common.openapi import ApiDescription
from cdp_common.service import ServiceRuntime, build_app
from fastapi import FastAPI
from fastapi.middleware.cors import CORSMiddleware

from cdp_ingest import handlers
from cdp_ingest.api import routers, tracking
from cdp_ingest.consumer import SERVICE, consumer_specs
from cdp_ingest.dispatch import TrackingDispatch, post_endpoints
from cdp_ingest.domain.call_schemas import tracking_bodies
from cdp_ingest.pipeline import Intake
from cdp_ingest.settings import Settings

MIGRATIONS = Path(__file__).resolve().parents[2] / "migrations"


def create_tracking_producer(settings: Settings) -> AIOKafkaProducer:
    """Create the producer of accepted events: idempotent, acks=all, with room for large batches."""
    return AIOKafkaProducer(
        bootstrap_servers=settings.kafka_bootstrap,
        client_id=f"{settings.env}.{SERVICE}.tracking",
        enable_idempotence=True,
        acks="all",
        linger_ms=2,
        max_batch_size=settings.produce_batch_bytes,
        request_timeout_ms=15_000,
    )


def create_app(settings: Settings) -> FastAPI:
    """Create the ingest service's app; the runtime starts and stops it with the app's lifespan."""

    async def start_intake(runtime: ServiceRuntime) -> None:
        # Built here: a producer belongs to the event loop that runs the service.
        producer = create_tracking_producer(settings)
        await producer.start()
        app.state.intake = Intake(
            settings=settings,
            write_keys=handlers.WriteKeys(
                session_factory=runtime.session_factory, ttl_s=settings.write_key_cache_s
            ),
            producer=producer,
            session_factory=runtime.session_factory,
        )
        default_key = settings.default_write_key.get_secret_value()
        if default_key:
            async with transaction(runtime.session_factory) as session:
                await handlers.create_source(session=session, name="default", write_key=default_key)

    async def stop_intake(_: ServiceRuntime) -> None:
        # The tracking producer sends what it holds before the runtime's engine and producer stop.
        intake: Intake | None = getattr(app.state, "intake", None)
        if intake is not None:
            await intake.close()

    runtime = ServiceRuntime(
        service=SERVICE,
        settings=settings,
        migrations=MIGRATIONS,
        consumers=consumer_specs(settings),
        on_start=[start_intake],
        on_stop=[stop_intake],
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
