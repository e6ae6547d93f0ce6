"""Profile's long work: backfilling a computed trait from the event store, as a job in short steps."""

from __future__ import annotations

from typing import Any

from cdp_common.jobs import Job, Step
from sqlalchemy.ext.asyncio import AsyncSession

from cdp_profile import handlers, store
from cdp_profile.handlers import ProfileContext


class ComputedTraitBackfill:
    """Goes through every profile in id order, a batch per step, and computes one trait for it.

    The cursor (last profile id done, profiles that hold the trait so far) commits with each
    batch's values, so a restart carries on after the last committed batch and nothing is
    computed or published twice.
    """

    def __init__(self, *, context: ProfileContext, batch_size: int) -> None:
        self._context = context
        self._batch_size = batch_size

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
        profile_ids = await store.next_profile_ids(
            session=session, after=cursor["after"], limit=self._batch_size
        )
        if not profile_ids:
            await store.serialise_writers(session=session)
            await store.mark_backfilled(session=session, key=key, profiles_count=cursor["holding"])
            return Step(
                cursor=cursor,
                advanced=0,
                finished=True,
                total=job.done,
                result={"profiles_holding_value": cursor["holding"]},
            )
        holding = await handlers.backfill_profiles(
            session=session, context=self._context, definition=definition, profile_ids=profile_ids
        )
        return Step(
            cursor={"after": profile_ids[-1], "holding": cursor["holding"] + holding},
            advanced=len(profile_ids),
        )
