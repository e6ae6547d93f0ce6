"""Deleting a computed trait on the real PostgreSQL: refused while owned, then gone at once, its
backfill cancelled, and its states and values removed by a job in bounded steps."""

from __future__ import annotations

from typing import Any

import pytest
from cdp_common.db import transaction
from cdp_common.jobs import JobRunner, get_job
from cdp_profile import computed_traits, store
from cdp_profile.computed_traits import PURGE_JOB, DefinitionOwned
from cdp_profile.domain.computed import Definition
from cdp_profile.jobs import ComputedTraitPurge

from ..conftest import ProfileDb, tracking, uid

pytestmark = pytest.mark.integration

ORDERS = Definition(key="orders_seen", aggregation="count", event_name="Order Completed")


async def define(db: ProfileDb, definition: Definition, owner: str | None) -> dict[str, Any]:
    async with transaction(db.sessions) as session:
        defined = await computed_traits.define_computed_trait(
            session=session, definition=definition, owner=owner
        )
    return defined.body


async def purge(db: ProfileDb, job_id: str, *, batch_size: int) -> dict[str, Any]:
    """Run a deletion job to its end with the service's job runner; return the finished job."""
    runner = JobRunner(
        service="profile",
        engine=db.engine,
        session_factory=db.sessions,
        kinds={PURGE_JOB: ComputedTraitPurge(batch_size=batch_size)},
    )
    assert await runner.run_job(job_id)
    async with transaction(db.sessions) as session:
        job = await get_job(session=session, job_id=job_id)
    assert job is not None
    return job


async def test_an_owned_trait_is_kept_and_a_released_one_is_removed_in_steps(db: ProfileDb) -> None:
    users = [uid() for _ in range(5)]
    await db.resolve(*(tracking(user_id=user, event="Order Completed") for user in users))
    created = await define(db, ORDERS, owner="segment:buyers")
    await db.run_job(created["job"]["id"])
    assert await db.scalar("SELECT count(*) FROM computed_values WHERE key = 'orders_seen'") == 5

    async with transaction(db.sessions) as session:
        with pytest.raises(DefinitionOwned) as refused:
            await computed_traits.delete_computed_trait(session=session, key=ORDERS.key)
    assert refused.value.owners == ["segment:buyers"]
    async with transaction(db.sessions) as session:
        assert (
            await computed_traits.release_owner(session=session, key=ORDERS.key, owner="segment:buyers") == []
        )
        job = await computed_traits.delete_computed_trait(session=session, key=ORDERS.key)
        # Gone at once for every reader and for the event flow.
        assert await store.get_definition(session=session, key=ORDERS.key) is None
        assert ORDERS.key not in [
            d.key for d in (await store.load_configuration(session=session)).definitions
        ]

    finished = await purge(db, job["id"], batch_size=2)
    assert finished["state"] == "succeeded"
    assert finished["done"] == 5
    assert await db.scalar("SELECT count(*) FROM computed_values WHERE key = 'orders_seen'") == 0
    assert await db.scalar("SELECT count(*) FROM profiles WHERE computed ? 'orders_seen'") == 0
    # The key is free again once its values are gone.
    again = await define(db, ORDERS, owner=None)
    assert again["computed_trait"]["status"] == "building"


async def test_deleting_a_trait_being_built_cancels_its_backfill_and_keeps_the_key_until_done(
    db: ProfileDb,
) -> None:
    await db.resolve(tracking(user_id=uid(), event="Order Completed"))
    created = await define(db, ORDERS, owner=None)
    async with transaction(db.sessions) as session:
        job = await computed_traits.delete_computed_trait(session=session, key=ORDERS.key)
        backfill = await get_job(session=session, job_id=created["job"]["id"])
    assert backfill is not None
    assert backfill["state"] == "cancelled"
    with pytest.raises(computed_traits.DefinitionTaken) as taken:
        await define(db, ORDERS, owner=None)
    assert taken.value.deleting
    assert (await purge(db, job["id"], batch_size=100))["state"] == "succeeded"
    assert (await define(db, ORDERS, owner="campaign:c-1"))["computed_trait"]["owners"] == ["campaign:c-1"]
