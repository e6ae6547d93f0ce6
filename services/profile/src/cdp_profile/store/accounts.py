"""The profile store: accounts (companies from `group` calls) and the people linked to them."""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from datetime import datetime
from typing import Any

import sqlalchemy as sa
from sqlalchemy.dialects import postgresql
from sqlalchemy.ext.asyncio import AsyncSession

from cdp_profile.domain.traits import TraitValue
from cdp_profile.store.tables import metadata

accounts = sa.Table(
    "accounts",
    metadata,
    sa.Column("group_id", sa.Text, primary_key=True),
    sa.Column("traits", postgresql.JSONB, nullable=False),
    sa.Column("version", sa.BigInteger, nullable=False),
    sa.Column("created_at", sa.DateTime(timezone=True), nullable=False, server_default=sa.func.now()),
    sa.Column("updated_at", sa.DateTime(timezone=True), nullable=False, server_default=sa.func.now()),
)

account_members = sa.Table(
    "account_members",
    metadata,
    sa.Column("group_id", sa.Text, primary_key=True),
    sa.Column("origin_profile_id", sa.Text, primary_key=True),
    sa.Column("profile_id", sa.Text, nullable=False),
    sa.Column("event_id", sa.Text, nullable=False),
    sa.Column("linked_at", sa.DateTime(timezone=True), nullable=False),
)


@dataclass
class StoredAccount:
    """An account as held: its traits with provenance and its version, which only grows."""

    group_id: str
    traits: dict[str, TraitValue]
    version: int
    created_at: datetime
    updated_at: datetime

    def values(self) -> dict[str, Any]:
        """Return the account's trait values."""
        return {name: trait.value for name, trait in sorted(self.traits.items())}


def _account_of(row: Any) -> StoredAccount:
    return StoredAccount(
        group_id=row.group_id,
        traits={name: TraitValue.from_json(raw) for name, raw in row.traits.items()},
        version=row.version,
        created_at=row.created_at,
        updated_at=row.updated_at,
    )


async def lock_account(*, session: AsyncSession, group_id: str) -> StoredAccount | None:
    """Return an account locked until the transaction ends; None when there is none."""
    row = (
        await session.execute(sa.select(accounts).where(accounts.c.group_id == group_id).with_for_update())
    ).first()
    return None if row is None else _account_of(row)


async def get_account(*, session: AsyncSession, group_id: str) -> StoredAccount | None:
    """Return an account; None when there is none."""
    row = (await session.execute(sa.select(accounts).where(accounts.c.group_id == group_id))).first()
    return None if row is None else _account_of(row)


async def save_account(
    *, session: AsyncSession, group_id: str, traits: dict[str, TraitValue]
) -> StoredAccount:
    """Create an account or write its traits, bumping its version; return it as saved."""
    stored = {name: trait.to_json() for name, trait in traits.items()}
    statement = postgresql.insert(accounts).values(group_id=group_id, traits=stored, version=1)
    row = (
        await session.execute(
            statement.on_conflict_do_update(
                index_elements=[accounts.c.group_id],
                set_={
                    "traits": statement.excluded.traits,
                    "version": accounts.c.version + 1,
                    "updated_at": sa.func.now(),
                },
            ).returning(*accounts.c)
        )
    ).one()
    return _account_of(row)


async def link_account(
    *, session: AsyncSession, group_id: str, profile_id: str, event_id: str, linked_at: datetime
) -> bool:
    """Link a profile to an account (a group call resolved to it); True when it was not linked before."""
    linked_before = (
        await session.execute(
            sa.select(sa.literal(1)).where(
                account_members.c.group_id == group_id, account_members.c.profile_id == profile_id
            )
        )
    ).first() is not None
    statement = postgresql.insert(account_members).values(
        group_id=group_id,
        origin_profile_id=profile_id,
        profile_id=profile_id,
        event_id=event_id,
        linked_at=linked_at,
    )
    await session.execute(
        statement.on_conflict_do_update(
            index_elements=[account_members.c.group_id, account_members.c.origin_profile_id],
            set_={"event_id": statement.excluded.event_id, "linked_at": statement.excluded.linked_at},
            where=account_members.c.linked_at < statement.excluded.linked_at,
        )
    )
    return not linked_before


async def accounts_of_profiles(
    *, session: AsyncSession, profile_ids: Sequence[str]
) -> dict[str, list[tuple[StoredAccount, datetime]]]:
    """Return each profile's accounts with when it was last linked, most recently linked first."""
    found: dict[str, list[tuple[StoredAccount, datetime]]] = {pid: [] for pid in profile_ids}
    if not profile_ids:
        return found
    linked = (
        sa.select(
            account_members.c.profile_id,
            account_members.c.group_id,
            sa.func.max(account_members.c.linked_at).label("linked_at"),
        )
        .where(account_members.c.profile_id.in_(list(profile_ids)))
        .group_by(account_members.c.profile_id, account_members.c.group_id)
        .subquery()
    )
    rows = await session.execute(
        sa.select(linked.c.profile_id, linked.c.linked_at, *accounts.c)
        .select_from(linked.join(accounts, accounts.c.group_id == linked.c.group_id))
        .order_by(linked.c.profile_id, linked.c.linked_at.desc(), linked.c.group_id)
    )
    for row in rows:
        found[row.profile_id].append((_account_of(row), row.linked_at))
    return found


async def count_members(*, session: AsyncSession, group_id: str) -> int:
    """Return how many profiles belong to an account."""
    return int(
        (
            await session.execute(
                sa.select(sa.func.count(sa.distinct(account_members.c.profile_id))).where(
                    account_members.c.group_id == group_id
                )
            )
        ).scalar_one()
    )


async def members_of(*, session: AsyncSession, group_id: str, after: str, limit: int) -> list[str]:
    """Return a page of the profiles that belong to an account, in profile id order."""
    rows = await session.execute(
        sa.select(account_members.c.profile_id)
        .where(account_members.c.group_id == group_id, account_members.c.profile_id > after)
        .group_by(account_members.c.profile_id)
        .order_by(account_members.c.profile_id)
        .limit(limit)
    )
    return list(rows.scalars())


async def move_account_links(*, session: AsyncSession, absorbed_id: str, survivor_id: str) -> None:
    """Give a merge's survivor the absorbed profile's account links."""
    await session.execute(
        account_members.update()
        .where(account_members.c.profile_id == absorbed_id)
        .values(profile_id=survivor_id)
    )


async def move_account_links_back(
    *, session: AsyncSession, survivor_id: str, restored_id: str, family: Sequence[str]
) -> None:
    """Give a restored profile back the links its family's group calls made, as its events go back."""
    await session.execute(
        account_members.update()
        .where(
            account_members.c.profile_id == survivor_id,
            account_members.c.origin_profile_id.in_(list(family)),
        )
        .values(profile_id=restored_id)
    )


def unlink_statement(profile_ids: Sequence[str]) -> sa.Delete:
    """Return the statement that removes these profiles from every account (the accounts stay)."""
    ids = list(profile_ids)
    return account_members.delete().where(
        sa.or_(account_members.c.profile_id.in_(ids), account_members.c.origin_profile_id.in_(ids))
    )
