"""Accounts on the real PostgreSQL: group calls create and update an account and link the person;
merges, splits and erasure carry, give back and remove the links; the person's change messages
carry their accounts, and the account's other members hear of new traits from a job."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta
from typing import Any

import pytest
from cdp_common.db import transaction
from cdp_common.envelope import Envelope
from cdp_common.events import PrivacyRequestOpened, ProfileChanged, make_envelope
from cdp_common.hashing import subject_hash
from cdp_common.jobs import JobRunner
from cdp_profile import accounts, handlers, store
from cdp_profile.accounts import MEMBERS_JOB, AccountMembersUpdate

from ..conftest import T0, ProfileDb, tracking, uid

pytestmark = pytest.mark.integration

ACME = {"name": "Acme", "industry": "Retail", "employees": 120, "plan": "enterprise"}


def group(group_id: str, traits: dict[str, Any], **fields: Any) -> Envelope[Any]:
    """Build the envelope of `group {"groupId": group_id, "traits": traits}`."""
    envelope = tracking(type="group", traits=traits, **fields)
    return envelope.model_copy(update={"data": envelope.data.model_copy(update={"groupId": group_id})})


async def account(db: ProfileDb, group_id: str) -> dict[str, Any]:
    async with transaction(db.sessions) as session:
        found = await accounts.account_document(session=session, group_id=group_id)
    assert found is not None, group_id
    return found


async def group_ids_of(db: ProfileDb, profile_id: str) -> list[str]:
    async with transaction(db.sessions) as session:
        return [
            a["group_id"] for a in await accounts.served_accounts_of(session=session, profile_id=profile_id)
        ]


async def announced(db: ProfileDb, profile_id: str | None) -> list[dict[str, Any]] | None:
    """Return the accounts the latest change message of a profile that carried accounts announced."""
    carried = [
        e.data.accounts
        for e in await db.published()
        if isinstance(e.data, ProfileChanged)
        and e.data.profile_id == profile_id
        and e.data.accounts is not None
    ]
    return [a.model_dump() for a in carried[-1]] if carried else None


async def run_members_jobs(db: ProfileDb) -> int:
    """Run every queued job that tells an account's members of its traits; return how many ran."""
    runner = JobRunner(
        service="profile",
        engine=db.engine,
        session_factory=db.sessions,
        kinds={MEMBERS_JOB: AccountMembersUpdate(context=db.context, batch_size=2)},
    )
    queued = await db.scalar(
        "SELECT coalesce(array_agg(id ORDER BY created_at), '{}') FROM jobs WHERE state = 'queued' AND kind = :k",
        k=MEMBERS_JOB,
    )
    for job_id in queued:
        assert await runner.run_job(job_id)
    return len(queued)


async def test_group_creates_an_account_with_its_traits_and_links_the_person(db: ProfileDb) -> None:
    company, user = uid("acme"), uid()
    [profile_id] = await db.resolve(group(company, ACME, user_id=user))
    assert profile_id is not None
    held = await account(db, company)
    assert held["group_id"] == company
    assert held["traits"] == ACME
    assert held["members"] == [profile_id]
    assert await group_ids_of(db, profile_id) == [company]
    assert await announced(db, profile_id) == [{"group_id": company, "traits": ACME}]
    # Company traits are the account's, never the person's.
    async with transaction(db.sessions) as session:
        profile = await store.load_profile(session=session, profile_id=profile_id)
    assert profile is not None
    assert "industry" not in profile.traits


async def test_later_group_calls_update_traits_the_latest_event_time_winning(db: ProfileDb) -> None:
    company, ada, bob = uid("acme"), uid(), uid()
    await db.resolve(group(company, ACME, user_id=ada, at=T0 + timedelta(hours=2)))
    # Bob's call was made earlier but arrives later: its industry is older than the one held.
    [bob_id] = await db.resolve(
        group(
            company,
            {"industry": "Banking", "website": "acme.example"},
            user_id=bob,
            at=T0 + timedelta(hours=1),
        )
    )
    held = await account(db, company)
    assert held["traits"] == {**ACME, "website": "acme.example"}
    assert len(held["members"]) == 2
    assert held["member_count"] == 2
    assert bob_id in held["members"]
    await db.resolve(group(company, {"industry": "Wholesale"}, user_id=bob, at=T0 + timedelta(hours=3)))
    assert (await account(db, company))["traits"]["industry"] == "Wholesale"
    # Calling again changes nothing in the membership.
    assert len((await account(db, company))["members"]) == 2


async def test_new_account_traits_reach_every_member_through_a_job(db: ProfileDb) -> None:
    company = uid("acme")
    users = [uid() for _ in range(5)]
    resolved = await db.resolve(*(group(company, ACME, user_id=u) for u in users))
    assert await run_members_jobs(db) == 0
    [changer] = await db.resolve(
        group(company, {"industry": "Wholesale"}, user_id=users[0], at=T0 + timedelta(hours=5))
    )
    wholesale = {"group_id": company, "traits": {**ACME, "industry": "Wholesale"}}
    # The caller's own message says so at once; the other members' follow from the job.
    assert await announced(db, changer) == [wholesale]
    others = [pid for pid in resolved if pid != changer]
    for pid in others:
        assert await announced(db, pid) == [{"group_id": company, "traits": ACME}]
    assert await run_members_jobs(db) == 1
    for pid in others:
        assert await announced(db, pid) == [wholesale]


async def test_a_superseded_members_job_stops_and_the_latest_tells_everyone(db: ProfileDb) -> None:
    company = uid("acme")
    users = [uid() for _ in range(3)]
    resolved = await db.resolve(*(group(company, ACME, user_id=u) for u in users))
    await db.resolve(group(company, {"plan": "pro"}, user_id=users[0], at=T0 + timedelta(hours=5)))
    await db.resolve(group(company, {"plan": "team"}, user_id=users[1], at=T0 + timedelta(hours=6)))
    assert await run_members_jobs(db) == 2
    for pid in resolved:
        found = await announced(db, pid)
        assert found is not None
        assert found[0]["traits"]["plan"] == "team"


async def test_a_merge_carries_the_links_and_a_split_gives_them_back(db: ProfileDb) -> None:
    anon, user, shop, firm = uid("a"), uid(), uid("shop"), uid("firm")
    browsing, customer = await db.resolve(
        group(shop, {"name": "Shop"}, anonymous_id=anon),
        group(firm, {"name": "Firm"}, user_id=user),
    )
    assert browsing is not None
    assert customer is not None
    [survivor] = await db.resolve(tracking(user_id=user, anonymous_id=anon))
    assert survivor == customer
    assert sorted(await group_ids_of(db, customer)) == sorted([shop, firm])
    assert (await account(db, shop))["members"] == [customer]
    assert sorted(a["group_id"] for a in await announced(db, customer) or []) == sorted([shop, firm])
    async with transaction(db.sessions) as session:
        [merge] = await store.ledger_of(session=session, profile_ids=[customer])
        await handlers.split_merge(session=session, context=db.context, merge_id=merge["merge_id"])
    assert await group_ids_of(db, customer) == [firm]
    assert await group_ids_of(db, browsing) == [shop]
    assert (await account(db, shop))["members"] == [browsing]
    assert await announced(db, customer) == [{"group_id": firm, "traits": {"name": "Firm"}}]
    assert await announced(db, browsing) == [{"group_id": shop, "traits": {"name": "Shop"}}]


async def test_erasure_unlinks_the_person_and_keeps_the_account(db: ProfileDb) -> None:
    company, ada, bob = uid("acme"), uid(), uid()
    ada_id, bob_id = await db.resolve(group(company, ACME, user_id=ada), group(company, ACME, user_id=bob))
    erasure = make_envelope(
        payload=PrivacyRequestOpened(
            request_id=uid("req"),
            request_type="erasure",
            subject_type="user_id",
            subject_hash=subject_hash(key=db.context.hash_key, subject_type="user_id", value=ada),
            deadline=datetime.now(UTC) + timedelta(days=30),
        ),
        source="consent",
        subject="req",
    )
    async with transaction(db.sessions) as session:
        assert await handlers.handle_privacy_request(
            session=session, envelope=erasure, context=db.context
        ) == [ada_id]
    held = await account(db, company)
    assert held["members"] == [bob_id]
    assert held["traits"] == ACME
