"""Builds the profile service: the app and its runtime, with its consumers, jobs and periodic jobs."""

from __future__ import annotations

from pathlib import Path

from cdp_common.openapi import ApiDescription
from cdp_common.service import ServiceRuntime, build_app, serve
from cdp_common.topics import TopicName
from fastapi import FastAPI

from cdp_profile.accounts import MEMBERS_JOB, AccountMembersUpdate
from cdp_profile.api import routers
from cdp_profile.computed_traits import PURGE_JOB
from cdp_profile.consumer import consumer_specs
from cdp_profile.context import BACKFILL_JOB, SERVICE, Clock, ProfileContext, system_clock
from cdp_profile.duplicates_store import SCAN_JOB
from cdp_profile.jobs import ComputedTraitBackfill, ComputedTraitPurge, DuplicateScan, periodic_jobs
from cdp_profile.orders import ORDERS_JOB, VALUATION_JOB, OrdersFromEvents, OrdersValuation
from cdp_profile.settings import Settings

MIGRATIONS = Path(__file__).resolve().parents[2] / "migrations"


def profile_context(settings: Settings, *, clock: Clock = system_clock) -> ProfileContext:
    """Return what the handlers need from the settings."""
    return ProfileContext(
        profiles_topic=settings.topic(TopicName.PROFILES),
        privacy_topic=settings.topic(TopicName.PRIVACY),
        hash_key=settings.hash_key.get_secret_value(),
        default_region=settings.phone_default_region,
        reporting_currency=settings.reporting_currency,
        clock=clock,
    )


def create_app(settings: Settings, *, clock: Clock = system_clock) -> FastAPI:
    """Create the profile service's app; the runtime starts and stops it with the app's lifespan."""
    context = profile_context(settings, clock=clock)
    runtime = ServiceRuntime(
        service=SERVICE,
        settings=settings,
        migrations=MIGRATIONS,
        consumers=consumer_specs(context),
        periodic=periodic_jobs(
            context=context,
            window_check_interval_s=settings.window_check_interval_s,
            duplicates_interval_s=settings.duplicates_interval_s,
        ),
        jobs={
            BACKFILL_JOB: ComputedTraitBackfill(
                context=context,
                batch_size=settings.backfill_batch_size,
                max_batch_size=settings.backfill_max_batch_size,
            ),
            SCAN_JOB: DuplicateScan(),
            PURGE_JOB: ComputedTraitPurge(),
            ORDERS_JOB: OrdersFromEvents(context=context),
            VALUATION_JOB: OrdersValuation(context=context),
            MEMBERS_JOB: AccountMembersUpdate(context=context),
        },
    )
    app = build_app(
        runtime=runtime,
        routers=routers,
        title="CDP profile service",
        description=ApiDescription(
            error_codes={
                400: ["invalid_reference", "invalid_time"],
                404: ["profile_not_found", "merge_not_found", "account_not_found"],
                409: [
                    "computed_trait_exists",
                    "computed_trait_deleting",
                    "computed_trait_owned",
                    "merge_refused",
                    "same_profile",
                    "split_refused",
                ],
            }
        ),
    )
    app.state.profile_context = context
    return app


def main() -> None:
    """Run the service with uvicorn."""
    settings = Settings()
    serve(create_app(settings), host=settings.host, port=settings.port)
