"""Periodic and batch work of the campaign service: the scheduler tick (a periodic job the runtime
runs every `CDP_CAMPAIGN_SCHEDULER_INTERVAL_S`) and the send worker."""

from __future__ import annotations

import asyncio
from collections.abc import Sequence
from datetime import datetime
from typing import Any

import sqlalchemy as sa
from cdp_common.envelope import Envelope
from cdp_common.events import CampaignSendsRequested
from cdp_common.periodic import PeriodicJob
from sqlalchemy.ext.asyncio import AsyncSession

from cdp_campaign import store
from cdp_campaign.context import CampaignContext, parsed_campaign
from cdp_campaign.delivery import deliver_sends, hand_over_sends, prepare_sends
from cdp_campaign.domain.campaigns import Status
from cdp_campaign.handlers import advance_due_positions, enqueue_sends, run_due_campaigns

# --- the scheduler tick ------------------------------------------------------------------------

_SCHEDULER_LOCK = sa.text(
    "SELECT pg_try_advisory_xact_lock(hashtextextended('cdp-campaign-scheduler:' || current_schema(), 0))"
)


def periodic_jobs(*, ctx: CampaignContext) -> list[PeriodicJob]:
    """Return the service's periodic jobs: the scheduler tick at the clock's time."""

    async def tick(*, session: AsyncSession) -> None:
        await scheduler_tick(session=session, ctx=ctx, now=ctx.clock.now())

    return [
        PeriodicJob(name="scheduler_tick", interval_s=ctx.settings.campaign_scheduler_interval_s, run=tick)
    ]


async def scheduler_tick(*, session: AsyncSession, ctx: CampaignContext, now: datetime) -> bool:
    """Do what is due at `now`: start campaigns, release quiet-hour sends, advance journeys, finish
    broadcasts; False when another replica's tick holds the lock."""
    if not (await session.execute(_SCHEDULER_LOCK)).scalar_one():
        return False
    await run_due_campaigns(session=session, ctx=ctx, now=now)
    released = await store.release_deferred(session=session, now=now)
    await enqueue_sends(session=session, ctx=ctx, send_ids=released, key="released")
    await advance_due_positions(session=session, ctx=ctx, now=now)
    for row in await store.running_campaigns(session=session):
        spec = parsed_campaign(row["spec"])
        one_off = spec.is_broadcast and spec.schedule.type != "recurring" and row["runs"] >= 1
        if one_off and not await store.pending_count(session=session, source="campaign", source_id=row["id"]):
            await store.update_definition(
                session=session, table=store.campaigns, id=row["id"], status=Status.COMPLETED.value
            )
    return True


# --- the send worker ---------------------------------------------------------------------------


async def on_sends_requested(*, session: AsyncSession, envelope: Envelope[Any], ctx: CampaignContext) -> None:
    """Work through a send job; the sends' own records make a redelivered job harmless."""
    data: CampaignSendsRequested = envelope.data
    await deliver_sends(ctx=ctx, send_ids=data.send_ids)


async def on_sends_requested_together(
    *, session: AsyncSession, envelopes: Sequence[Envelope[Any]], ctx: CampaignContext
) -> None:
    """Work through the send jobs of one poll, `campaign_parallel_jobs` at a time."""
    await deliver_jobs(ctx=ctx, jobs=[envelope.data.send_ids for envelope in envelopes])


async def deliver_jobs(*, ctx: CampaignContext, jobs: Sequence[Sequence[str]]) -> dict[str, int]:
    """Deliver send jobs, up to `campaign_parallel_jobs` at a time; return the outcomes summed.

    Every job runs to its end before a failure is raised, so a retry of the jobs never meets
    a send another of them is still handing over (each job's records make the retry harmless).
    """
    # Preparing and handing over are limited apart, so that the next jobs are read and composed
    # while others hold the SMTP connections, and the connections do not wait between jobs;
    # at most as many jobs again as hand over are prepared ahead.
    parallel = ctx.settings.campaign_parallel_jobs
    in_flight = asyncio.Semaphore(2 * parallel)
    preparing = asyncio.Semaphore(parallel)
    handing_over = asyncio.Semaphore(parallel)

    async def one(send_ids: Sequence[str]) -> dict[str, int]:
        async with in_flight:
            async with preparing:
                prepared = await prepare_sends(ctx=ctx, send_ids=send_ids)
            async with handing_over:
                return await hand_over_sends(ctx=ctx, prepared=prepared)

    results = await asyncio.gather(*(one(job) for job in jobs), return_exceptions=True)
    totals: dict[str, int] = {}
    for result in results:
        if isinstance(result, BaseException):
            raise result
        for outcome, count in result.items():
            totals[outcome] = totals.get(outcome, 0) + count
    return totals
