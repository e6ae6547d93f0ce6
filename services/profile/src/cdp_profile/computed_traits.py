"""Owners of computed traits and their deletion.

A caller that relies on a computed trait defines it with an owner (`segment:<key>`,
`campaign:<id>`); several owners may share one definition, and one defined without an owner is
an operator's own. A definition is deleted only when no owner is left: it is gone at once (the
event flow stops folding into it), and a job removes its states in short steps, the key staying
taken until that job has finished.
"""

from __future__ import annotations

import contextlib
import re
from dataclasses import dataclass
from typing import Any

from cdp_common.jobs import JobFinished, JobNotFound, cancel_job, get_job, new_job_id, submit_job
from sqlalchemy.ext.asyncio import AsyncSession

from cdp_profile import computed_store, handlers, store
from cdp_profile.domain.computed import Definition

PURGE_JOB = "computed_trait_purge"
OWNER_PATTERN = re.compile(r"^(segment|campaign):[A-Za-z0-9_.:-]{1,200}$")


class DefinitionTaken(Exception):
    """The key names another definition, or one whose deletion has not finished."""

    def __init__(self, message: str, *, owners: list[str], deleting: bool = False) -> None:
        super().__init__(message)
        self.owners = owners
        self.deleting = deleting


class DefinitionOwned(Exception):
    """A definition that still has owners cannot be deleted."""

    def __init__(self, key: str, owners: list[str]) -> None:
        super().__init__(f"the computed trait {key!r} is still used by {', '.join(owners)}")
        self.owners = owners


class DefinitionNotFound(Exception):
    """No computed trait has the key."""


@dataclass(frozen=True)
class Defined:
    """A definition as the caller sees it after asking for it, and whether this call created it."""

    body: dict[str, Any]
    created: bool


async def with_owners(*, session: AsyncSession, definitions: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """Return served definitions with their `owners`."""
    found = await computed_store.owners_of(session=session, keys=[d["key"] for d in definitions])
    return [{**d, "owners": found[d["key"]]} for d in definitions]


async def define_computed_trait(
    *, session: AsyncSession, definition: Definition, owner: str | None
) -> Defined:
    """Define a computed trait for an owner (or an operator): a new one is built by a job; asking
    for a definition that exists, the same, with an owner adds the owner."""
    await computed_store.lock_definitions(session=session)
    if await computed_store.purge_job_of(session=session, key=definition.key) is not None:
        raise DefinitionTaken(
            f"the computed trait {definition.key!r} is being deleted; define it again once that is done",
            owners=[],
            deleting=True,
        )
    created = await handlers.define_computed_trait(session=session, definition=definition)
    if created is not None:
        if owner is not None:
            await computed_store.add_owner(session=session, key=definition.key, owner=owner)
        (trait,) = await with_owners(session=session, definitions=[created["computed_trait"]])
        return Defined(body={**created, "computed_trait": trait}, created=True)
    existing = await store.load_definition(session=session, key=definition.key)
    owners = (await computed_store.owners_of(session=session, keys=[definition.key]))[definition.key]
    if owner is None or existing is None or existing.to_json() != definition.to_json():
        raise DefinitionTaken(f"a computed trait {definition.key!r} exists", owners=owners)
    await computed_store.add_owner(session=session, key=definition.key, owner=owner)
    stored = await store.get_definition(session=session, key=definition.key)
    assert stored is not None
    job = await get_job(session=session, job_id=stored["job_id"]) if stored.get("job_id") else None
    (trait,) = await with_owners(session=session, definitions=[stored])
    return Defined(body={"computed_trait": trait, "job": job}, created=False)


async def release_owner(*, session: AsyncSession, key: str, owner: str) -> list[str]:
    """Forget an owner of a definition (nothing when it was not one); return the owners left."""
    if await computed_store.lock_definition(session=session, key=key) is None:
        raise DefinitionNotFound(key)
    await computed_store.remove_owner(session=session, key=key, owner=owner)
    return (await computed_store.owners_of(session=session, keys=[key]))[key]


async def delete_computed_trait(*, session: AsyncSession, key: str) -> dict[str, Any]:
    """Delete a definition no owner relies on and queue the job that removes its states; return the job.

    Its backfill is cancelled, and the writers' lock is taken first, as a backfill step holds
    it, so no step of that backfill writes a state after the definition is gone.
    """
    await store.serialise_writers(session=session)
    await computed_store.lock_definitions(session=session)
    row = await computed_store.lock_definition(session=session, key=key)
    if row is None:
        raise DefinitionNotFound(key)
    owners = (await computed_store.owners_of(session=session, keys=[key]))[key]
    if owners:
        raise DefinitionOwned(key, owners)
    if row.job_id is not None:
        with contextlib.suppress(JobNotFound, JobFinished):
            await cancel_job(session=session, job_id=row.job_id)
    job_id = new_job_id()
    await computed_store.delete_definition(session=session, key=key, purge_job_id=job_id)
    return await submit_job(session=session, kind=PURGE_JOB, params={"key": key}, job_id=job_id)
