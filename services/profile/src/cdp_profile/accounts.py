"""Accounts: the companies `group` calls name, their traits, and the people linked to them.

A group call creates or updates its account (per trait, the value with the latest event time
wins) and links the person to it. Every change of a person's accounts reaches the other
services on the person's change message (`accounts`, with each account's traits). When an
account's traits change, its other members' messages follow from a job, a batch of members
per step, never inside the event's transaction.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

from cdp_common.envelope import Envelope
from cdp_common.events import AccountOfProfile, TrackingEventReceived
from cdp_common.jobs import Job, Step, submit_job
from sqlalchemy.ext.asyncio import AsyncSession

from cdp_profile import store
from cdp_profile.changes import publish_update
from cdp_profile.context import ProfileContext
from cdp_profile.domain.traits import apply_traits
from cdp_profile.metrics import ACCOUNT_MEMBERS_UPDATED

# The job through which an account's other members hear of its new traits.
MEMBERS_JOB = "account_members_update"
# Members on a served account; the rest are paged from /v1/accounts/{group_id}/members.
SERVED_MEMBERS = 1000


async def record_group_call(*, session: AsyncSession, envelope: Envelope[Any], profile_id: str) -> bool:
    """Create or update the account a group call names and link the person; True when the person's
    accounts (or their traits) changed."""
    event: TrackingEventReceived = envelope.data
    group_id = event.groupId
    if event.type != "group" or not group_id:
        return False
    held = await store.lock_account(session=session, group_id=group_id)
    current = {} if held is None else held.traits
    changed = apply_traits(
        current, event.traits, source=event.sourceId, event_id=envelope.id, timestamp=event.timestamp
    )
    if held is None or changed:
        account = await store.save_account(session=session, group_id=group_id, traits={**current, **changed})
        if held is not None:
            await submit_job(
                session=session,
                kind=MEMBERS_JOB,
                params={"group_id": group_id, "version": account.version, "informed": profile_id},
            )
    linked = await store.link_account(
        session=session,
        group_id=group_id,
        profile_id=profile_id,
        event_id=envelope.id,
        linked_at=event.timestamp,
    )
    return linked or bool(changed)


async def accounts_of(
    *, session: AsyncSession, profile_ids: Sequence[str]
) -> dict[str, list[AccountOfProfile]]:
    """Return each profile's accounts with their traits, as its change messages carry them."""
    found = await store.accounts_of_profiles(session=session, profile_ids=profile_ids)
    return {
        pid: [AccountOfProfile(group_id=account.group_id, traits=account.values()) for account, _ in held]
        for pid, held in found.items()
    }


async def served_accounts_of(*, session: AsyncSession, profile_id: str) -> list[dict[str, Any]]:
    """Return a profile's accounts as its JSON lists them: group id, name and when last linked."""
    found = await store.accounts_of_profiles(session=session, profile_ids=[profile_id])
    return [
        {
            "group_id": account.group_id,
            "name": account.values().get("name"),
            "linked_at": linked_at.isoformat(),
        }
        for account, linked_at in found[profile_id]
    ]


async def account_document(*, session: AsyncSession, group_id: str) -> dict[str, Any] | None:
    """Return an account with its traits and members; None when no group call named it."""
    account = await store.get_account(session=session, group_id=group_id)
    if account is None:
        return None
    members = await store.members_of(session=session, group_id=group_id, after="", limit=SERVED_MEMBERS)
    count = len(members)
    if count == SERVED_MEMBERS:
        count = await store.count_members(session=session, group_id=group_id)
    return {
        "group_id": account.group_id,
        "traits": account.values(),
        "members": members,
        "member_count": count,
        "version": account.version,
        "created_at": account.created_at.isoformat(),
        "updated_at": account.updated_at.isoformat(),
    }


class AccountMembersUpdate:
    """Publishes the new traits of an account on each of its members' change messages, a batch of
    members per step, in profile id order.

    A later change of the same account queues a job of its own, which tells every member
    again: this one then stops where it is.
    """

    def __init__(self, *, context: ProfileContext, batch_size: int = 200) -> None:
        self._context = context
        self._batch_size = batch_size

    async def plan(self, *, session: AsyncSession, job: Job) -> int | None:
        """Return how many members the account has."""
        return await store.count_members(session=session, group_id=str(job.params["group_id"]))

    async def step(self, *, session: AsyncSession, job: Job) -> Step:
        """Publish the next batch of members' accounts, or finish."""
        group_id = str(job.params["group_id"])
        cursor: dict[str, Any] = job.cursor or {"after": ""}
        await store.serialise_writers(session=session)
        account = await store.get_account(session=session, group_id=group_id)
        if account is None or account.version > int(job.params["version"]):
            return Step(cursor=cursor, advanced=0, finished=True, total=job.done, result={"superseded": True})
        members = await store.members_of(
            session=session, group_id=group_id, after=cursor["after"], limit=self._batch_size
        )
        if not members:
            return Step(
                cursor=cursor, advanced=0, finished=True, total=job.done, result={"members": job.done}
            )
        informed = job.params.get("informed")
        locked = await store.lock_profiles(session=session, profile_ids=[m for m in members if m != informed])
        held = await accounts_of(session=session, profile_ids=list(locked))
        for profile_id, profile in locked.items():
            traits_now = {name: trait.value for name, trait in profile.traits.items()}
            await publish_update(
                session=session,
                context=self._context,
                profile=profile,
                traits_before=traits_now,
                computed_before=dict(profile.computed),
                accounts=held[profile_id],
            )
        ACCOUNT_MEMBERS_UPDATED.inc(len(locked))
        return Step(cursor={"after": members[-1]}, advanced=len(members))
