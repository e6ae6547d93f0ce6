"""Long work of the segment service, run as jobs by the runtime: building segments, filling computed traits.

`segment_build` makes a new or changed segment's members right: it starts once every
computed trait the rule reads is in the copy (until then it waits parked, holding no worker),
then evaluates the segment over the profiles in ranges of ids, one short transaction each,
and the segments that refer to it when its members changed; then the segment is ready.

`computed_trait_fill` copies a computed trait that profile has built into the copy, a page
of profile's values per step, setting it only where the copy holds no value yet (a value
that came by message is as new or newer); then the trait is ready and the live segments
that read it are evaluated again, range by range.

`clock_recompute` evaluates the segments that depend on the clock alone (relative dates, age,
birthdays) at the clock round's instant, range by range; `segment_delete` takes a deleted segment's
members out of it, a range of members at a time; `model_run` runs a model (`cdp_segment.models`).

Each step records its cursor with its effect, so a job that is run again carries on where it was.

Two periodic jobs, run by the runtime (`periodic_jobs`): the clock round and the watch of
computed traits. Event windows are profile's to expire; what segment re-evaluates with time is
what depends on the clock itself (relative dates on traits, age, birthdays) and the lifecycle
stages. A clock round (`clock_round`, every `scheduler_interval_s`) queues at the clock's time a
lifecycle run, the evaluation of the segments on the clock (when there are any) and, when due,
the other models' runs, each a job (never two of one kind, or of one model, queued or running at
once), so the round is a few short statements whatever the size of the base; then it sets the
segment-size gauge. The watch (`ComputedTraitsWatch`, every `computed_trait_poll_s`, at once when a
job is submitted) moves on the computed traits segments wait for.
"""

from __future__ import annotations

from datetime import datetime, timedelta
from functools import partial
from typing import Any

from cdp_common.jobs import Job, JobKind, Step, submit_job
from cdp_common.periodic import PeriodicJob
from sqlalchemy.ext.asyncio import AsyncSession

from cdp_segment import store
from cdp_segment.batch import recompute_segment, recompute_segments
from cdp_segment.computed_traits import (
    FILL_JOB,
    ComputedTraitsClient,
    release_ready_builds,
    watch_computed_traits,
)
from cdp_segment.domain.rules import parse_rule
from cdp_segment.handlers import BUILD_JOB, DELETE_JOB, SegmentContext
from cdp_segment.metrics import SEGMENT_MEMBERS
from cdp_segment.models import MODEL_JOB, ModelRun, submit_model_run
from cdp_segment.store import builds
from cdp_segment.store import models as runs

CLOCK_JOB = "clock_recompute"
WATCH_JOB = "watch_computed_traits"
PERIODIC_MODELS = ("rfm", "clusters", "clv")
BUSY_WATCH_INTERVAL_S = 0.1


class ComputedTraitUnavailable(Exception):
    """Profile refused a computed trait a segment needs, so its members cannot be computed."""


async def _members_step(
    *,
    session: AsyncSession,
    context: SegmentContext,
    cursor: dict[str, Any],
    batch_size: int,
    trigger: str,
) -> tuple[dict[str, Any], int, bool]:
    """Evaluate the first queued segment over the next range of profiles; return the cursor, how many
    profiles were looked at, and whether the queue is done.

    A segment whose members changed queues the segments that refer to it, after it.
    """
    catalog = await context.catalog.current(session)
    queue: list[str] = list(cursor["queue"])
    after: str | None = cursor.get("after")
    report: dict[str, dict[str, int]] = dict(cursor.get("report", {}))
    while queue and not (queue[0] in catalog.by_key and catalog.by_key[queue[0]].realtime):
        # Deleted since, or waiting for its computed traits (its own job evaluates it then).
        queue.pop(0)
        after = None
    if not queue:
        return {**cursor, "queue": [], "after": None, "report": report}, 0, True
    key = queue[0]
    segment = await store.get_segment(session=session, ref=catalog.by_key[key].id)
    if segment is None:
        return {**cursor, "queue": queue[1:], "after": None, "report": report}, 0, not queue[1:]
    until, looked_at = await builds.profile_range(session=session, after=after, size=batch_size)
    changes = await recompute_segment(
        session=session,
        segment=segment,
        now=context.clock(),
        topic=context.segments_topic,
        trigger=trigger,
        after=after,
        until=until,
        policy=catalog.policy,
    )
    held = report.get(key, {"entered": 0, "exited": 0})
    report[key] = {name: held[name] + changes[name] for name in ("entered", "exited")}
    if until is not None:
        return {**cursor, "queue": queue, "after": until, "report": report}, looked_at, False
    rest = queue[1:]
    if report[key]["entered"] or report[key]["exited"]:
        referring = catalog.by_dependency.get(f"segment:{key}", set())
        rest = [d.key for d in catalog.ordered if d.key in set(rest) | referring]
    return {**cursor, "queue": rest, "after": None, "report": report}, looked_at, not rest


class ComputedTraitsNotReady(Exception):
    """A build job started before the computed traits its segment reads were in the copy."""


class SegmentBuild:
    """The job that brings a new or changed segment's members in line (kind `segment_build`).

    While the computed traits its rule reads are not in the copy, the job waits parked (see
    `cdp_segment.computed_traits`); it starts once they are.
    """

    def __init__(self, *, context: SegmentContext, batch_size: int = 10_000) -> None:
        self._context = context
        self._batch_size = batch_size

    async def plan(self, *, session: AsyncSession, job: Job) -> int | None:
        """Return the profiles one evaluation of the segment goes over."""
        return await builds.count_profiles(session=session)

    async def step(self, *, session: AsyncSession, job: Job) -> Step:
        """Check the segment's data is in the copy, or evaluate the segment over one range of profiles."""
        segment = await store.get_segment(session=session, ref=job.params["segment_id"])
        if segment is None or segment.job_id != job.id:
            return Step(cursor=job.cursor, advanced=0, finished=True, result={"outcome": "superseded"})
        if job.cursor is None:
            keys = {spec.key for spec in parse_rule(segment.rule).computed_traits}
            missing = keys - await builds.ready_traits(session=session, keys=keys)
            if missing:
                refused = await builds.trait_requests(session=session, keys=missing)
                reasons = {r.key: r.error or r.status for r in refused}
                raise ComputedTraitsNotReady(f"computed traits not in segment's copy: {reasons}")
            await builds.data_arrived(session=session, segment_id=segment.id, job_id=job.id)
            members = await builds.count_profiles(session=session)
            started = {"phase": "members", "members": members, "queue": [segment.key], "after": None}
            return Step(cursor=started, advanced=0, total=job.done + members)
        cursor, looked_at, finished = await _members_step(
            session=session,
            context=self._context,
            cursor=job.cursor,
            batch_size=self._batch_size,
            trigger=str(job.params.get("trigger", "built")),
        )
        total = max(job.total or 0, job.done + looked_at + len(cursor["queue"]) * cursor["members"])
        if not finished:
            return Step(cursor=cursor, advanced=looked_at, total=total)
        await builds.finish_build(session=session, segment_id=segment.id, job_id=job.id)
        return Step(
            cursor=cursor,
            advanced=looked_at,
            finished=True,
            total=job.done + looked_at,
            result={"outcome": "ready", "segments": cursor["report"]},
        )


class ComputedTraitFill:
    """The job that copies a computed trait profile has built into the copy (kind `computed_trait_fill`)."""

    def __init__(
        self,
        *,
        context: SegmentContext,
        client: ComputedTraitsClient,
        page_size: int = 5_000,
        batch_size: int = 10_000,
    ) -> None:
        self._context = context
        self._client = client
        self._page_size = page_size
        self._batch_size = batch_size

    async def plan(self, *, session: AsyncSession, job: Job) -> int | None:
        """Return about how many values profile holds (the profiles its job went over)."""
        expected = job.params.get("expected")
        return int(expected) if expected else None

    async def step(self, *, session: AsyncSession, job: Job) -> Step:
        """Copy one page of profile's values, or evaluate a segment that reads the trait over a range."""
        cursor: dict[str, Any] = job.cursor or {"phase": "values", "after": None, "filled": 0}
        key = str(job.params["key"])
        if cursor["phase"] == "members":
            cursor, looked_at, finished = await _members_step(
                session=session,
                context=self._context,
                cursor=cursor,
                batch_size=self._batch_size,
                trigger=f"computed:{key} ready",
            )
            total = max(job.total or 0, job.done + looked_at)
            result = {"filled": cursor.get("filled", 0), "segments": cursor.get("report", {})}
            return Step(
                cursor=cursor,
                advanced=looked_at,
                finished=finished,
                total=job.done + looked_at if finished else total,
                result=result if finished else None,
            )
        # Profile is asked before any statement, so the step holds no connection while it answers.
        page = await self._client.values(key, after=cursor["after"], limit=self._page_size)
        filled = int(cursor.get("filled", 0)) + await builds.fill_missing(
            session=session, key=key, items=page.items
        )
        done = job.done + len(page.items)
        if page.next is not None:
            moved = {"phase": "values", "after": page.next, "filled": filled}
            return Step(cursor=moved, advanced=len(page.items), total=max(job.total or 0, done))
        await builds.mark_trait_ready(session=session, key=key)
        await release_ready_builds(session=session)
        catalog = await self._context.catalog.current(session)
        readers = catalog.affected_by({f"computed:{key}"})
        queue = [d.key for d in catalog.ordered if d.key in readers and d.realtime]
        if not queue:
            return Step(
                cursor={"phase": "values", "after": None, "filled": filled},
                advanced=len(page.items),
                finished=True,
                total=done,
                result={"filled": filled, "segments": {}},
            )
        members = await builds.count_profiles(session=session)
        evaluate = {"phase": "members", "queue": queue, "after": None, "filled": filled, "members": members}
        return Step(cursor=evaluate, advanced=len(page.items), total=done + members * len(queue))


async def submit_clock_recompute(*, session: AsyncSession, at: datetime) -> dict[str, Any] | None:
    """Queue the evaluation of the segments that depend on the clock at an instant, unless one is
    queued or running or no segment depends on the clock; return its job."""
    await runs.lock_model(session=session, model=CLOCK_JOB)
    if await runs.open_job_of_kind(session=session, kind=CLOCK_JOB) is not None:
        return None
    return await submit_job(session=session, kind=CLOCK_JOB, params={"at": at.isoformat()})


class ClockRecompute:
    """The job that evaluates the segments on the clock at one instant, range by range (kind `clock_recompute`)."""

    def __init__(self, *, context: SegmentContext, batch_size: int = 10_000) -> None:
        self._context = context
        self._batch_size = batch_size

    async def plan(self, *, session: AsyncSession, job: Job) -> int | None:
        """Return the profiles the evaluation goes over."""
        return await builds.count_profiles(session=session)

    async def step(self, *, session: AsyncSession, job: Job) -> Step:
        """Evaluate the segments on the clock (and those that refer to them) over one range of profiles."""
        cursor: dict[str, Any] = job.cursor or {"after": None, "segments": {}}
        catalog = await self._context.catalog.current(session)
        keys = catalog.affected_by({"clock"})
        if not keys:
            return Step(cursor=cursor, advanced=0, finished=True, total=job.done, result={"segments": {}})
        until, looked_at = await builds.profile_range(
            session=session, after=cursor["after"], size=self._batch_size
        )
        found = await recompute_segments(
            session=session,
            catalog=catalog,
            keys=keys,
            now=runs.parse_at(job.params["at"]),
            topic=self._context.segments_topic,
            trigger="clock",
            after=cursor["after"],
            until=until,
        )
        report: dict[str, dict[str, int]] = dict(cursor["segments"])
        for key, moves in found.items():
            held = report.get(key, {"entered": 0, "exited": 0})
            report[key] = {kind: held[kind] + moves[kind] for kind in ("entered", "exited")}
        moved = {"after": until, "segments": report}
        done = job.done + looked_at
        if until is not None:
            return Step(cursor=moved, advanced=looked_at, total=max(job.total or 0, done))
        return Step(cursor=moved, advanced=looked_at, finished=True, total=done, result={"segments": report})


class SegmentDelete:
    """The job that takes a deleted segment's members out of it, a range at a time (kind `segment_delete`).

    The segment is deleted (its key taken, no longer listed or evaluated) before the job starts;
    each member leaves with an exit event and a history entry whose reason is the deletion.
    """

    def __init__(self, *, context: SegmentContext, batch_size: int = 10_000) -> None:
        self._context = context
        self._batch_size = batch_size

    async def plan(self, *, session: AsyncSession, job: Job) -> int | None:
        """Return the members that leave."""
        return await store.count_segment_members(session=session, segment_id=job.params["segment_id"])

    async def step(self, *, session: AsyncSession, job: Job) -> Step:
        """Take the next range of members out of the segment."""
        segment = await store.get_segment_by_id(session=session, segment_id=job.params["segment_id"])
        after = (job.cursor or {}).get("after")
        if segment is None:
            return Step(cursor=job.cursor, advanced=0, finished=True, total=job.done, result={"exited": 0})
        until, count = await store.member_range(
            session=session, segment_id=segment.id, after=after, size=self._batch_size
        )
        changes = await recompute_segment(
            session=session,
            segment=segment,
            now=self._context.clock(),
            topic=self._context.segments_topic,
            trigger="deleted",
            everyone_leaves=True,
            after=after,
            until=until,
        )
        exited = int((job.cursor or {}).get("exited", 0)) + changes["exited"]
        done = job.done + count
        if until is not None:
            return Step(
                cursor={"after": until, "exited": exited}, advanced=count, total=max(job.total or 0, done)
            )
        return Step(
            cursor={"after": None, "exited": exited},
            advanced=count,
            finished=True,
            total=done,
            result={"exited": exited},
        )


def job_kinds(
    *,
    context: SegmentContext,
    client: ComputedTraitsClient,
    batch_size: int = 10_000,
    page_size: int = 5_000,
    model_batch_size: int = 20_000,
    model_sample_size: int = 10_000,
    cluster_count: int = 4,
    clv_horizon_days: int = 365,
) -> dict[str, JobKind]:
    """Return the service's job kinds by name, for the runtime."""
    return {
        BUILD_JOB: SegmentBuild(context=context, batch_size=batch_size),
        FILL_JOB: ComputedTraitFill(
            context=context, client=client, page_size=page_size, batch_size=batch_size
        ),
        CLOCK_JOB: ClockRecompute(context=context, batch_size=batch_size),
        DELETE_JOB: SegmentDelete(context=context, batch_size=batch_size),
        MODEL_JOB: ModelRun(
            context=context,
            cluster_count=cluster_count,
            clv_horizon_days=clv_horizon_days,
            batch_size=model_batch_size,
            sample_size=model_sample_size,
        ),
    }


def periodic_jobs(
    *,
    context: SegmentContext,
    client: ComputedTraitsClient,
    interval_s: float = 60.0,
    models_interval_s: float = 3600.0,
    watch_interval_s: float = 1.0,
    clock_rounds: bool = True,
) -> list[PeriodicJob]:
    """Return the service's periodic jobs, for the runtime: the watch, and the clock round unless turned off."""
    watch = ComputedTraitsWatch(client=client, interval_s=watch_interval_s)
    jobs = [PeriodicJob(name=WATCH_JOB, interval_s=watch.interval, run=watch)]
    if clock_rounds:
        every = timedelta(seconds=models_interval_s)
        jobs.append(
            PeriodicJob(
                name="clock_round",
                interval_s=interval_s,
                run=partial(clock_round, context=context, models_every=every),
            )
        )
    return jobs


async def clock_round(*, session: AsyncSession, context: SegmentContext, models_every: timedelta) -> None:
    """Queue the clock-driven work at the clock's time, then set the segment-size gauge."""
    await queue_clock_work(session=session, context=context, models_every=models_every)
    await session.commit()
    await report_sizes(session=session)


async def queue_clock_work(
    *,
    session: AsyncSession,
    context: SegmentContext,
    models_every: timedelta = timedelta(hours=1),
    now: datetime | None = None,
) -> dict[str, Any]:
    """Queue lifecycle, the clock segments, and the models when due, at an instant (the clock's by
    default); return the jobs queued by name."""
    at = now or context.clock()
    report: dict[str, Any] = {}
    job, new = await submit_model_run(session=session, name="lifecycle", at=at)
    if new:
        report["lifecycle"] = job
    catalog = await context.catalog.current(session)
    if catalog.affected_by({"clock"}):
        clock = await submit_clock_recompute(session=session, at=at)
        if clock is not None:
            report["clock_segments"] = clock
    for name in PERIODIC_MODELS:
        if await _model_due(session=session, name=name, at=at, every=models_every):
            job, new = await submit_model_run(session=session, name=name, at=at)
            if new:
                report[name] = job
    return report


async def _model_due(*, session: AsyncSession, name: str, at: datetime, every: timedelta) -> bool:
    """Whether a model's last run (by any replica, or asked for) started `every` before `at`."""
    latest = await runs.latest_model_job(session=session, kind=MODEL_JOB, model=name)
    if latest is None:
        return True
    return at - runs.parse_at(latest["params"]["at"]) >= every


async def report_sizes(*, session: AsyncSession) -> None:
    """Set the segment-size gauge from the memberships held now."""
    for key, members in (await store.count_members(session=session)).items():
        SEGMENT_MEMBERS.labels(key).set(members)


class ComputedTraitsWatch:
    """The watch of the computed traits segments wait for, as a periodic job's run.

    Cheap when nothing waits: one query of the requests that are not ready. While profile builds
    a trait a segment waits for, it runs every BUSY_WATCH_INTERVAL_S, so the fill starts within a
    fraction of a second of profile's job ending.
    """

    def __init__(self, *, client: ComputedTraitsClient, interval_s: float) -> None:
        self._client = client
        self._interval_s = interval_s
        self._busy = False

    async def __call__(self, *, session: AsyncSession) -> None:
        """Move the computed traits on once, in the session's transaction."""
        self._busy = False
        progress = await watch_computed_traits(session=session, client=self._client)
        self._busy = any(p.state in ("waiting", "building") for p in progress.values())

    def interval(self) -> float:
        """Return the seconds until the next watch: shorter while profile builds a trait."""
        return min(self._interval_s, BUSY_WATCH_INTERVAL_S) if self._busy else self._interval_s
