"""Profile's long work, as jobs in short steps: backfilling a computed trait from the event store,
and scanning the whole base for duplicate suspects; and its periodic jobs, run by the runtime:
recomputing windowed computed traits as their events age out (every
`CDP_PROFILE_WINDOW_CHECK_INTERVAL_S`) and comparing changed profiles for the duplicate queue
(every `CDP_PROFILE_DUPLICATES_INTERVAL_S`)."""

from __future__ import annotations

import time
from functools import partial
from typing import Any

from cdp_common.jobs import Job, Step
from cdp_common.periodic import PeriodicJob
from sqlalchemy.ext.asyncio import AsyncSession

from cdp_profile import computed_store, duplicates, duplicates_store, handlers, store
from cdp_profile.changes import publish_update
from cdp_profile.context import ProfileContext
from cdp_profile.domain.computed import Definition, derive_defined, fold_all, next_change_at
from cdp_profile.domain.duplicates import (
    KEYS_VERSION,
    STORED_SCORE,
    block_keys,
    block_number,
    candidate_of,
    suspects_in_blocks,
)

# A step holds the writers' lock, so the event flow may wait for one step: each step takes
# as many profiles as fit in about this long (a sparse trait's step covers many more
# profiles than a dense one's), between the configured smallest and largest batch.
STEP_TARGET_S = 0.25
# Profiles whose windowed traits are expired in one transaction.
WINDOW_BATCH = 500


def periodic_jobs(
    *, context: ProfileContext, window_check_interval_s: float, duplicates_interval_s: float
) -> list[PeriodicJob]:
    """Return the service's periodic jobs: the expiry of windowed computed traits, the duplicate
    queue kept current."""
    return [
        PeriodicJob(
            name="expire_windowed_traits",
            interval_s=window_check_interval_s,
            run=partial(expire_windows, context=context),
        ),
        PeriodicJob(
            name="compare_changed_profiles",
            interval_s=duplicates_interval_s,
            run=duplicates.keep_queue_current,
        ),
    ]


async def expire_windows(*, session: AsyncSession, context: ProfileContext) -> int:
    """Expire the windowed traits due at the context's clock, a committed batch at a time; return
    the profiles changed."""
    total = 0
    while True:
        outcome = await handlers.expire_windowed_traits(session=session, context=context, limit=WINDOW_BATCH)
        await session.commit()
        total += outcome["changed"]
        if outcome["due"] < WINDOW_BATCH:
            return total


class ComputedTraitBackfill:
    """Goes through every profile in id order, a batch per step, and computes one trait for it.

    The cursor (last profile id done, profiles that hold the trait so far, the next batch's
    size) commits with each batch's values, so a restart carries on after the last committed
    batch and nothing is computed or published twice.
    """

    def __init__(self, *, context: ProfileContext, batch_size: int, max_batch_size: int) -> None:
        self._context = context
        self._batch_size = batch_size
        self._max_batch_size = max(batch_size, max_batch_size)

    async def plan(self, *, session: AsyncSession, job: Job) -> int | None:
        """Return how many profiles the backfill goes through."""
        return await store.count_profiles(session=session)

    async def step(self, *, session: AsyncSession, job: Job) -> Step:
        """Backfill the next batch of profiles, or mark the trait built when none is left."""
        key = str(job.params["key"])
        cursor: dict[str, Any] = job.cursor or {"after": "", "holding": 0}
        definition = await store.load_definition(session=session, key=key)
        if definition is None:
            return Step(cursor=cursor, advanced=0, finished=True, result={"deleted": True})
        batch = int(cursor.get("batch", self._batch_size))
        count, high = await store.next_profile_range(session=session, after=cursor["after"], limit=batch)
        if high is None:
            await store.serialise_writers(session=session)
            await store.mark_backfilled(session=session, key=key, profiles_count=cursor["holding"])
            return Step(
                cursor=cursor,
                advanced=0,
                finished=True,
                total=job.done,
                result={"profiles_holding_value": cursor["holding"]},
            )
        started = time.monotonic()
        holding = await backfill_profiles(
            session=session, context=self._context, definition=definition, after=cursor["after"], high=high
        )
        return Step(
            cursor={
                "after": high,
                "holding": cursor["holding"] + holding,
                "batch": self._next_batch(batch, time.monotonic() - started),
            },
            advanced=count,
        )

    def _next_batch(self, batch: int, elapsed_s: float) -> int:
        """Grow or shrink the batch towards a step of STEP_TARGET_S."""
        if elapsed_s < STEP_TARGET_S / 2:
            return min(batch * 2, self._max_batch_size)
        if elapsed_s > STEP_TARGET_S * 2:
            return max(batch // 2, self._batch_size)
        return batch


class ComputedTraitPurge:
    """Removes the states of a deleted computed trait, a batch of profiles per step, from the store
    and from those profiles' computed traits; the key may be defined again once it has finished.

    Each step deletes what is left from the start, so a state written behind it cannot stay.
    """

    def __init__(self, *, batch_size: int = 2000) -> None:
        self._batch_size = batch_size

    async def plan(self, *, session: AsyncSession, job: Job) -> int | None:
        """Return how many states the deletion removes."""
        return await computed_store.count_states(session=session, key=str(job.params["key"]))

    async def step(self, *, session: AsyncSession, job: Job) -> Step:
        """Remove the next batch of states, or finish the deletion when none is left."""
        key = str(job.params["key"])
        await store.serialise_writers(session=session)
        removed = await computed_store.purge_states(session=session, key=key, limit=self._batch_size)
        if removed:
            return Step(cursor={}, advanced=removed)
        await computed_store.finish_purge(session=session, key=key)
        return Step(cursor={}, advanced=0, finished=True, total=job.done, result={"states_removed": job.done})


class DuplicateScan:
    """Fills the duplicate review queue from the whole base, in three phases of short steps.

    1. Every live profile in id order, a batch per step: its candidate and blocks are stored; a
       new or changed candidate (every one when the job's params say `full`) becomes pending.
    2. Every block in block order, about a batch of memberships per step: the pairs of a block
       with a pending member are scored, and those at or above the threshold are added to the
       queue or refreshed; a pair an operator dismissed or merged keeps its state.
    3. The pending candidates, a batch per step: their open pairs that this scan did not find
       again leave the queue, and they are pending no more.

    Progress counts profiles, then block memberships (the total is set when phase 2 starts).
    Profiles are read without a lock and no lock of the event flow is taken; the cursor commits
    with each step's writes, so a restarted scan carries on and stores nothing twice. The changes'
    job waits while a scan is queued or running; phase 1 removes the notes of the changes it read.
    """

    def __init__(self, *, batch_size: int = 5000, threshold: float = STORED_SCORE) -> None:
        self._batch_size = batch_size
        self._threshold = threshold

    async def plan(self, *, session: AsyncSession, job: Job) -> int | None:
        """Return how many live profiles the scan goes through first."""
        return await duplicates_store.count_active_profiles(session=session)

    async def step(self, *, session: AsyncSession, job: Job) -> Step:
        """Do the next batch of the phase the cursor is in."""
        cursor: dict[str, Any] = job.cursor or {
            "phase": "candidates",
            "after": "",
            "memberships": 0,
            "profiles": 0,
            "changed": 0,
            "found": 0,
        }
        await duplicates_store.hold_queue(session=session)
        if cursor["phase"] == "candidates":
            return await self._candidates(session=session, job=job, cursor=cursor)
        if cursor["phase"] == "blocks":
            return await self._blocks(session=session, job=job, cursor=cursor)
        settled = await duplicates_store.settle_pending(
            session=session, job_id=job.id, limit=self._batch_size
        )
        if settled:
            return Step(cursor=cursor, advanced=0)
        return Step(
            cursor=cursor,
            advanced=0,
            finished=True,
            total=job.done,
            result={
                "profiles": cursor["profiles"],
                "changed": cursor["changed"],
                "pairs_found": cursor["found"],
            },
        )

    async def _candidates(self, *, session: AsyncSession, job: Job, cursor: dict[str, Any]) -> Step:
        after = str(cursor["after"])
        rows = await duplicates_store.active_profile_traits(
            session=session, after=after, limit=self._batch_size
        )
        found = [candidate_of(profile_id, common) for profile_id, common in rows]
        # A short batch is the last: its stretch runs to the end of the id space.
        last = rows[-1][0] if len(rows) == self._batch_size else None
        changed = await duplicates_store.save_candidates(
            session=session,
            found=found,
            blocks=[[block_number(key) for key in block_keys(c)] for c in found],
            keys_version=KEYS_VERSION,
            after=after,
            last=last,
            full=bool(job.params.get("full")),
        )
        memberships = cursor["memberships"] + await duplicates_store.count_keys(
            session=session, after=after, last=last
        )
        moved = {
            **cursor,
            "memberships": memberships,
            "profiles": cursor["profiles"] + len(rows),
            "changed": cursor["changed"] + changed,
        }
        if last is not None:
            return Step(cursor={**moved, "after": last}, advanced=len(rows))
        return Step(
            cursor={**moved, "phase": "blocks", "after": None},
            advanced=len(rows),
            total=job.done + len(rows) + memberships,
        )

    async def _blocks(self, *, session: AsyncSession, job: Job, cursor: dict[str, Any]) -> Step:
        blocks, pending, last, walked = await duplicates_store.next_blocks(
            session=session, after=cursor["after"], rows=self._batch_size
        )
        if last is None:
            return Step(cursor={**cursor, "phase": "settle"}, advanced=0)
        suspects = suspects_in_blocks(blocks, threshold=self._threshold, changed=pending)
        await duplicates_store.record_suspects(
            session=session,
            found=[(s.profile_ids, s.score, s.reasons) for s in suspects],
            job_id=job.id,
        )
        return Step(
            cursor={**cursor, "after": last, "found": cursor["found"] + len(suspects)},
            advanced=walked,
        )


async def backfill_profiles(
    *,
    session: AsyncSession,
    context: ProfileContext,
    definition: Definition,
    after: str,
    high: str,
) -> int:
    """Compute a trait from the event store for the profiles with ids in (after, high]; return how many hold it.

    Runs under the writers' lock, so no event of these profiles is being folded meanwhile:
    each state is recomputed whole from the store, which is exact whatever the event flow
    folded before. A profile that never published the trait keeps only the state, without a
    new version: reads derive its value from it, segment copies such values in bulk once the
    trait is ready, and the profile's next change publishes it. One that did publish a value,
    because the event flow folded into it meanwhile, publishes the new one if it differs.
    """
    await store.serialise_writers(session=session)
    now = context.clock()
    since = now - definition.window if definition.window else None
    low = after
    if not definition.filters and definition.property is None:
        counted = await store.backfill_counts(
            session=session, definition=definition, low=low, high=high, since=since
        )
        await publish_backfilled(
            session=session, context=context, key=definition.key, changed=counted.changed
        )
        return counted.holding
    states: dict[str, dict[str, Any]] = {}
    found = await store.selected_events(
        session=session, definition=definition, low=low, high=high, since=since
    )
    for profile_id, stored_events in found.items():
        state = fold_all(stored_events, definition, now=now)
        if state:
            states[profile_id] = state
    published = await store.published_values(session=session, profile_ids=list(states), key=definition.key)
    live = {pid: state for pid, state in states.items() if pid in published}
    await store.save_states_of_key(
        session=session,
        key=definition.key,
        states=[(pid, state, next_change_at(state, definition)) for pid, state in live.items()],
    )
    changed: dict[str, Any] = {}
    for profile_id, state in live.items():
        value = derive_defined(state, definition)
        known, current = published[profile_id]
        if known and current != value:
            changed[profile_id] = value
    await publish_backfilled(session=session, context=context, key=definition.key, changed=changed)
    return len(live)


async def publish_backfilled(
    *, session: AsyncSession, context: ProfileContext, key: str, changed: dict[str, Any]
) -> None:
    """Publish the new value of a trait for profiles that had published another one."""
    if not changed:
        return
    locked = await store.lock_profiles(session=session, profile_ids=sorted(changed))
    for profile_id, value in changed.items():
        profile = locked[profile_id]
        computed_before = dict(profile.computed)
        profile.computed = {**profile.computed, key: value}
        await publish_update(
            session=session,
            context=context,
            profile=profile,
            traits_before={name: trait.value for name, trait in profile.traits.items()},
            computed_before=computed_before,
        )
