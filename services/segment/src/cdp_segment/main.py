"""Builds the segment service: the app and its runtime, with its consumers, jobs and periodic jobs."""

from __future__ import annotations

from pathlib import Path

from cdp_common.envelope import utc_now
from cdp_common.openapi import ApiDescription
from cdp_common.service import ServiceRuntime, build_app, serve
from cdp_common.topics import TopicName
from fastapi import FastAPI

from cdp_segment.api import routers
from cdp_segment.computed_traits import ComputedTraitsClient, HttpComputedTraitsClient
from cdp_segment.consumer import SERVICE, consumer_specs
from cdp_segment.domain.lifecycle import LifecycleThresholds
from cdp_segment.handlers import Clock, SegmentContext, ensure_builtin_segments
from cdp_segment.jobs import WATCH_JOB, job_kinds, periodic_jobs
from cdp_segment.settings import Settings

MIGRATIONS = Path(__file__).resolve().parents[2] / "migrations"


def create_app(
    settings: Settings,
    *,
    computed_traits: ComputedTraitsClient | None = None,
    clock: Clock = utc_now,
    run_scheduler: bool = True,
) -> FastAPI:
    """Create the segment service's app; the runtime starts and stops it with the app's lifespan."""
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
        # A segment's build job, once submitted, has the watch of computed traits look at once.
        runtime.job_runner.on_notify(lambda _kind: runtime.periodic_jobs.wake(WATCH_JOB))

    runtime = ServiceRuntime(
        service=SERVICE,
        settings=settings,
        migrations=MIGRATIONS,
        consumers=consumer_specs(settings, context),
        on_start=[start_segments],
        # Segments wait for their computed traits whether or not the clock rounds run.
        periodic=periodic_jobs(
            context=context,
            client=client,
            interval_s=settings.scheduler_interval_s,
            models_interval_s=settings.models_interval_s,
            watch_interval_s=settings.computed_trait_poll_s,
            clock_rounds=run_scheduler,
        ),
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
    return app


def main() -> None:
    """Run the service with uvicorn."""
    settings = Settings()
    serve(create_app(settings), host=settings.host, port=settings.port)
