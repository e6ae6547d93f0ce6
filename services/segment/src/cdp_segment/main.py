"""Builds the segment service: the app, its lifespan, its consumers, jobs and scheduler."""

from __future__ import annotations

from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from pathlib import Path

from cdp_common.envelope import utc_now
from cdp_common.openapi import ApiDescription
from cdp_common.service import ServiceRuntime, build_app, serve
from cdp_common.topics import TopicName
from fastapi import FastAPI

from cdp_segment.api import routers
from cdp_segment.computed_traits import (
    ComputedTraitsClient,
    HttpComputedTraitsClient,
    watch_computed_traits,
)
from cdp_segment.consumer import SERVICE, consumer_specs
from cdp_segment.domain.lifecycle import LifecycleThresholds
from cdp_segment.handlers import Clock, SegmentContext, ensure_builtin_segments
from cdp_segment.jobs import job_kinds
from cdp_segment.scheduler import Scheduler
from cdp_segment.settings import Settings

MIGRATIONS = Path(__file__).resolve().parents[2] / "migrations"


def create_app(
    settings: Settings,
    *,
    computed_traits: ComputedTraitsClient | None = None,
    clock: Clock = utc_now,
    run_scheduler: bool = True,
) -> FastAPI:
    """Create the segment service's app; resources are built in its lifespan."""
    context = SegmentContext(
        segments_topic=settings.topic(TopicName.SEGMENTS),
        clock=clock,
        lifecycle=LifecycleThresholds(
            new_days=settings.lifecycle_new_days,
            active_days=settings.lifecycle_active_days,
            churn_days=settings.lifecycle_churn_days,
        ),
    )
    client = computed_traits or HttpComputedTraitsClient(
        base_url=settings.profile_url, admin_token=settings.admin_token.get_secret_value()
    )

    async def start_segments(runtime: ServiceRuntime) -> None:
        async with runtime.session_factory() as session, session.begin():
            await ensure_builtin_segments(session=session, new_days=settings.lifecycle_new_days)
        app.state.scheduler = Scheduler(
            session_factory=runtime.session_factory,
            context=context,
            computed_traits=client,
            interval_s=settings.scheduler_interval_s,
            models_interval_s=settings.models_interval_s,
            watch_interval_s=settings.computed_trait_poll_s,
        )
        app.state.watch_computed_traits = lambda: watch_computed_traits(
            session_factory=runtime.session_factory, client=client
        )
        # Segments wait for their computed traits whether or not the clock-driven rounds run; a
        # segment's build job, once submitted, has the watch look at once.
        runtime.job_runner.on_notify(app.state.scheduler.kick_watch)
        app.state.scheduler.start_watching()
        if run_scheduler:
            app.state.scheduler.start()

    runtime = ServiceRuntime(
        service=SERVICE,
        settings=settings,
        migrations=MIGRATIONS,
        consumers=consumer_specs(settings, context),
        on_start=[start_segments],
        jobs=job_kinds(
            context=context,
            client=client,
            batch_size=settings.segment_build_batch,
            page_size=settings.computed_trait_page,
            model_batch_size=settings.model_batch,
            model_sample_size=settings.model_fit_sample,
            cluster_count=settings.cluster_count,
            clv_horizon_days=settings.clv_horizon_days,
        ),
    )
    app = build_app(
        runtime=runtime,
        routers=routers,
        title="CDP segment service",
        description=ApiDescription(error_codes={413: ["payload_too_large"], 422: ["invalid_segment"]}),
    )
    app.state.segment_context = context
    app.state.preview_sample_size = settings.preview_sample_size
    app.state.preview_timeout_s = settings.preview_timeout_s
    runtime_lifespan = app.router.lifespan_context

    @asynccontextmanager
    async def lifespan(app: FastAPI) -> AsyncIterator[None]:
        async with runtime_lifespan(app):
            try:
                yield
            finally:
                scheduler = getattr(app.state, "scheduler", None)
                if scheduler is not None:
                    await scheduler.stop()

    app.router.lifespan_context = lifespan
    return app


def main() -> None:
    """Run the service with uvicorn."""
    settings = Settings()
    serve(create_app(settings), host=settings.host, port=settings.port)
