"""Tables and queries of the campaign service, in its own schema.

Campaigns and journeys with their positions; what the service keeps about profiles
(contact points, traits, memberships, the events its goals and journeys need, purchase
lines for recommendations); every send with its status and skip reason; engagement.
"""

from __future__ import annotations

import functools
import hashlib
from collections.abc import Sequence
from datetime import datetime
from typing import Any

import sqlalchemy as sa
from cdp_common.db import forget_for_transaction, once_per_transaction
from cdp_common.replica import erase_known_profiles, export_known_profile, known_profiles_table
from sqlalchemy.dialects import postgresql
from sqlalchemy.ext.asyncio import AsyncSession

metadata = sa.MetaData()
known_profiles = known_profiles_table(metadata)


def _any_of(column: sa.ColumnElement[Any], values: Sequence[str]) -> sa.ColumnElement[bool]:
    # One array parameter instead of an IN list: the statement stays the same for any number of ids.
    return column == sa.any_(sa.bindparam(None, list(values), type_=postgresql.ARRAY(sa.Text)))


def _dicts(result: sa.Result[Any]) -> list[dict[str, Any]]:
    keys = list(result.keys())
    return [dict(zip(keys, row, strict=True)) for row in result]


def _now_column(name: str) -> sa.Column[Any]:
    return sa.Column(name, sa.DateTime(timezone=True), nullable=False, server_default=sa.func.now())


campaigns = sa.Table(
    "campaigns",
    metadata,
    sa.Column("id", sa.Text, primary_key=True),
    sa.Column("name", sa.Text, nullable=False),
    sa.Column("status", sa.Text, nullable=False),
    sa.Column("spec", postgresql.JSONB, nullable=False),
    sa.Column("next_run_at", sa.DateTime(timezone=True)),
    sa.Column("runs", sa.Integer, nullable=False, server_default="0"),
    _now_column("created_at"),
    _now_column("updated_at"),
)

journeys = sa.Table(
    "journeys",
    metadata,
    sa.Column("id", sa.Text, primary_key=True),
    sa.Column("name", sa.Text, nullable=False),
    sa.Column("status", sa.Text, nullable=False),
    sa.Column("spec", postgresql.JSONB, nullable=False),
    _now_column("created_at"),
    _now_column("updated_at"),
)

journey_positions = sa.Table(
    "journey_positions",
    metadata,
    sa.Column("journey_id", sa.Text, primary_key=True),
    sa.Column("profile_id", sa.Text, primary_key=True),
    sa.Column("step", sa.Integer, nullable=False),
    sa.Column("state", sa.Text, nullable=False),
    sa.Column("wake_at", sa.DateTime(timezone=True)),
    sa.Column("waiting_for", sa.Text),
    sa.Column("step_started_at", sa.DateTime(timezone=True)),
    sa.Column("entered_at", sa.DateTime(timezone=True), nullable=False),
    _now_column("updated_at"),
)
sa.Index(
    "journey_positions_due",
    journey_positions.c.wake_at,
    postgresql_where=journey_positions.c.state == "waiting",
)

contacts = sa.Table(
    "contacts",
    metadata,
    sa.Column("profile_id", sa.Text, primary_key=True),
    sa.Column("version", sa.BigInteger, nullable=False),
    sa.Column("email", sa.Text),
    sa.Column("phone", sa.Text),
    sa.Column("locale", sa.Text),
    sa.Column("timezone", sa.Text),
    sa.Column("traits", postgresql.JSONB, nullable=False, server_default="{}"),
    sa.Column("computed", postgresql.JSONB, nullable=False, server_default="{}"),
    _now_column("updated_at"),
)

memberships = sa.Table(
    "memberships",
    metadata,
    sa.Column("segment_key", sa.Text, primary_key=True),
    sa.Column("profile_id", sa.Text, primary_key=True),
    sa.Column("entered_at", sa.DateTime(timezone=True), nullable=False),
)
sa.Index("memberships_profile", memberships.c.profile_id)

profile_events = sa.Table(
    "profile_events",
    metadata,
    sa.Column("event_id", sa.Text, primary_key=True),
    sa.Column("profile_id", sa.Text, nullable=False),
    sa.Column("event", sa.Text, nullable=False),
    sa.Column("at", sa.DateTime(timezone=True), nullable=False),
    sa.Column("revenue", sa.Float),
)
sa.Index("profile_events_lookup", profile_events.c.profile_id, profile_events.c.event, profile_events.c.at)

purchases = sa.Table(
    "purchases",
    metadata,
    sa.Column("event_id", sa.Text, primary_key=True),
    sa.Column("line", sa.Integer, primary_key=True),
    sa.Column("profile_id", sa.Text, nullable=False),
    sa.Column("order_id", sa.Text, nullable=False),
    sa.Column("product_id", sa.Text, nullable=False),
    sa.Column("name", sa.Text),
    sa.Column("category", sa.Text),
    sa.Column("price", sa.Float),
    sa.Column("quantity", sa.Integer, nullable=False),
    sa.Column("at", sa.DateTime(timezone=True), nullable=False),
)
sa.Index("purchases_profile", purchases.c.profile_id)
sa.Index("purchases_category", purchases.c.category)

sends = sa.Table(
    "sends",
    metadata,
    sa.Column("id", sa.Text, primary_key=True),
    sa.Column("source", sa.Text, nullable=False),
    sa.Column("source_id", sa.Text, nullable=False),
    sa.Column("step", sa.Integer),
    sa.Column("profile_id", sa.Text),
    sa.Column("profile_hash", sa.Text, nullable=False),
    sa.Column("variant", sa.Text, nullable=False),
    sa.Column("channel", sa.Text, nullable=False),
    sa.Column("status", sa.Text, nullable=False),
    sa.Column("reason", sa.Text),
    sa.Column("address", sa.Text),
    sa.Column("not_before", sa.DateTime(timezone=True)),
    sa.Column("claimed_at", sa.DateTime(timezone=True)),
    sa.Column("handed_at", sa.DateTime(timezone=True)),
    sa.Column("attempts", sa.Integer, nullable=False, server_default="0"),
    sa.Column("error", sa.Text),
    sa.Column("created_at", sa.DateTime(timezone=True), nullable=False),
    _now_column("updated_at"),
)
sa.Index("sends_source", sends.c.source, sends.c.source_id, sends.c.status)
sa.Index("sends_profile", sends.c.profile_id, sends.c.channel, sends.c.handed_at)
sa.Index("sends_deferred", sends.c.not_before, postgresql_where=sends.c.status == "deferred")

engagements = sa.Table(
    "engagements",
    metadata,
    sa.Column("id", sa.BigInteger, sa.Identity(), primary_key=True),
    sa.Column("send_id", sa.Text, nullable=False),
    sa.Column("kind", sa.Text, nullable=False),
    sa.Column("at", sa.DateTime(timezone=True), nullable=False),
    sa.Column("url", sa.Text),
    sa.Column("revenue", sa.Float),
    sa.Column("dedupe_key", sa.Text),
)
sa.Index("engagements_send", engagements.c.send_id, engagements.c.kind)
sa.Index(
    "engagements_dedupe", engagements.c.send_id, engagements.c.kind, engagements.c.dedupe_key, unique=True
)

# Statuses of a send: queued → handing_over → sent | bounced | failed | unknown;
# or skipped (with a reason), deferred (quiet hours, until not_before), holdout.
HANDED_STATUSES = ("handing_over", "sent", "unknown")


def profile_hash(*, key: str, profile_id: str) -> str:
    """Return the keyed hash a send keeps of its profile id, which survives erasure."""
    return hashlib.sha256(f"{key}:profile:{profile_id}".encode()).hexdigest()


def send_id_for(*, source: str, source_id: str, step: int | None, run_key: str, profile_id: str) -> str:
    """Return the id of the one send a person may get for a message; the same inputs give the same id."""
    digest = hashlib.sha256(f"{source}:{source_id}:{step}:{run_key}:{profile_id}".encode()).hexdigest()
    return "snd_" + digest[:32]


# --- campaigns and journeys -----------------------------------------------------------


async def insert_definition(
    *, session: AsyncSession, table: sa.Table, id: str, name: str, status: str, spec: dict[str, Any]
) -> dict[str, Any]:
    """Insert a campaign or journey and return its row."""
    _forget_definitions(session)
    row = (
        (
            await session.execute(
                table.insert().values(id=id, name=name, status=status, spec=spec).returning(*table.c)
            )
        )
        .mappings()
        .one()
    )
    return dict(row)


async def get_definition(
    *, session: AsyncSession, table: sa.Table, id: str, for_update: bool = False
) -> dict[str, Any] | None:
    """Return a campaign or journey row, or None."""
    query = sa.select(table).where(table.c.id == id)
    if for_update:
        query = query.with_for_update()
    row = (await session.execute(query)).mappings().first()
    return None if row is None else dict(row)


async def list_definitions(
    *, session: AsyncSession, table: sa.Table, after: str | None, limit: int
) -> list[dict[str, Any]]:
    """Return a page of campaigns or journeys in id order."""
    query = sa.select(table).order_by(table.c.id).limit(limit)
    if after is not None:
        query = query.where(table.c.id > after)
    return [dict(r) for r in (await session.execute(query)).mappings()]


async def update_definition(*, session: AsyncSession, table: sa.Table, id: str, **values: Any) -> None:
    """Change fields of a campaign or journey."""
    _forget_definitions(session)
    await session.execute(table.update().where(table.c.id == id).values(updated_at=sa.func.now(), **values))


async def delete_definition(*, session: AsyncSession, table: sa.Table, id: str) -> None:
    """Delete a campaign or journey."""
    _forget_definitions(session)
    await session.execute(table.delete().where(table.c.id == id))


# The definitions the event handlers look up, read once per transaction (a consumer's poll
# applies every event against the same ones) and dropped by any write of a definition in it.
def _forget_definitions(session: AsyncSession) -> None:
    for key in _DEFINITION_QUERIES:
        forget_for_transaction(session, key)


# Built once: the handlers ask for them for every event of a poll.
_DEFINITION_QUERIES: dict[str, sa.Select[Any]] = {
    "campaigns:running": sa.select(campaigns).where(campaigns.c.status == "running"),
    "campaigns:unfinished": sa.select(campaigns).where(campaigns.c.status != "completed"),
    "journeys:active": sa.select(journeys).where(journeys.c.status == "active"),
}


async def _definitions(session: AsyncSession, key: str) -> list[dict[str, Any]]:
    async def load() -> list[dict[str, Any]]:
        return [dict(r) for r in (await session.execute(_DEFINITION_QUERIES[key])).mappings()]

    return await once_per_transaction(session, key, load)


async def running_campaigns(*, session: AsyncSession) -> list[dict[str, Any]]:
    """Return the running campaigns (rows shared within the transaction: not to be changed)."""
    return await _definitions(session, "campaigns:running")


async def unfinished_campaigns(*, session: AsyncSession) -> list[dict[str, Any]]:
    """Return the campaigns that are not completed (rows shared within the transaction: not to be changed)."""
    return await _definitions(session, "campaigns:unfinished")


async def active_journeys(*, session: AsyncSession) -> list[dict[str, Any]]:
    """Return the active journeys (rows shared within the transaction: not to be changed)."""
    return await _definitions(session, "journeys:active")


async def due_campaigns(*, session: AsyncSession, now: datetime) -> list[dict[str, Any]]:
    """Return scheduled or running campaigns whose next run is due, locked for this replica."""
    query = (
        sa.select(campaigns)
        .where(campaigns.c.status.in_(("scheduled", "running")), campaigns.c.next_run_at <= now)
        .with_for_update(skip_locked=True)
    )
    return [dict(r) for r in (await session.execute(query)).mappings()]


# --- what the service knows about profiles ---------------------------------------------


@functools.cache
def _contact_upsert(fields: tuple[str, ...]) -> Any:
    """Build the upsert of a contact record for one set of contact fields, once."""
    names = ("profile_id", "version", "traits", "computed", *fields)
    statement = postgresql.insert(contacts).values(
        {name: sa.bindparam(name, type_=contacts.c[name].type) for name in names}
    )
    updates: dict[str, Any] = {
        "version": statement.excluded.version,
        "traits": contacts.c.traits.op("||")(statement.excluded.traits),
        "computed": contacts.c.computed.op("||")(statement.excluded.computed),
        "updated_at": sa.func.now(),
    }
    for name in fields:
        updates[name] = statement.excluded[name]
    return statement.on_conflict_do_update(
        index_elements=[contacts.c.profile_id],
        set_=updates,
        where=contacts.c.version < statement.excluded.version,
    )


async def apply_contact(
    *,
    session: AsyncSession,
    profile_id: str,
    version: int,
    fields: dict[str, Any],
    traits: dict[str, Any],
    computed: dict[str, Any],
) -> None:
    """Merge changed traits and contact points into a profile's record unless it holds a newer version."""
    change = {
        "profile_id": profile_id,
        "version": version,
        "fields": fields,
        "traits": traits,
        "computed": computed,
    }
    await apply_contacts(session=session, changes=[change])


async def apply_contacts(*, session: AsyncSession, changes: Sequence[dict[str, Any]]) -> None:
    """Apply contact changes as apply_contact would one after another, in a few batched statements.

    Each change holds profile_id, version, fields, traits and computed. A profile's changes
    go out in their order, one per round; within a round, changes with the same contact
    fields share one statement, sent with all its rows at once.
    """
    rounds: list[dict[tuple[str, ...], list[dict[str, Any]]]] = []
    seen: dict[str, int] = {}
    for change in changes:
        number = seen.get(change["profile_id"], 0)
        seen[change["profile_id"]] = number + 1
        if number == len(rounds):
            rounds.append({})
        fields = change["fields"]
        rounds[number].setdefault(tuple(sorted(fields)), []).append(
            {
                "profile_id": change["profile_id"],
                "version": change["version"],
                "traits": change["traits"],
                "computed": change["computed"],
                **fields,
            }
        )
    for statements in rounds:
        for fields, rows in statements.items():
            await session.execute(_contact_upsert(fields), rows)


async def contacts_of(*, session: AsyncSession, profile_ids: Sequence[str]) -> dict[str, dict[str, Any]]:
    """Return the records of profiles by id."""
    if not profile_ids:
        return {}
    rows = await session.execute(sa.select(contacts).where(_any_of(contacts.c.profile_id, profile_ids)))
    return {r["profile_id"]: r for r in _dicts(rows)}


_ENTER_MANY = sa.text(
    "INSERT INTO memberships (profile_id, segment_key, entered_at)"
    " SELECT * FROM unnest(CAST(:profile_ids AS text[]), CAST(:segment_keys AS text[]),"
    " CAST(:at AS timestamptz[]))"
    " ON CONFLICT DO NOTHING"
)
_LEAVE_MANY = sa.text(
    "DELETE FROM memberships m"
    " USING unnest(CAST(:profile_ids AS text[]), CAST(:segment_keys AS text[])) AS g(profile_id, segment_key)"
    " WHERE m.profile_id = g.profile_id AND m.segment_key = g.segment_key"
)


async def set_memberships(
    *, session: AsyncSession, changes: Sequence[tuple[str, str, datetime]], member: bool
) -> None:
    """Record that profiles entered (or left) segments: (profile_id, segment_key, at) each, in one statement."""
    if not changes:
        return
    values: dict[str, Any] = {
        "profile_ids": [profile_id for profile_id, _, _ in changes],
        "segment_keys": [segment_key for _, segment_key, _ in changes],
    }
    if member:
        await session.execute(_ENTER_MANY, {**values, "at": [at for _, _, at in changes]})
    else:
        await session.execute(_LEAVE_MANY, values)


async def segment_members(*, session: AsyncSession, segment_key: str) -> list[str]:
    """Return the profile ids in a segment."""
    rows = await session.execute(
        sa.select(memberships.c.profile_id).where(memberships.c.segment_key == segment_key)
    )
    return list(rows.scalars())


async def segments_of(*, session: AsyncSession, profile_ids: Sequence[str]) -> dict[str, list[str]]:
    """Return the segment keys of profiles."""
    result: dict[str, list[str]] = {pid: [] for pid in profile_ids}
    if not profile_ids:
        return result
    rows = await session.execute(
        sa.select(memberships.c.profile_id, memberships.c.segment_key)
        .where(_any_of(memberships.c.profile_id, profile_ids))
        .order_by(memberships.c.segment_key)
    )
    for profile_id, key in rows:
        result[profile_id].append(key)
    return result


async def record_event(
    *, session: AsyncSession, event_id: str, profile_id: str, event: str, at: datetime, revenue: float | None
) -> bool:
    """Keep an event a goal or journey needs; False when it was already kept."""
    statement = (
        postgresql.insert(profile_events)
        .values(event_id=event_id, profile_id=profile_id, event=event, at=at, revenue=revenue)
        .on_conflict_do_nothing()
        .returning(profile_events.c.event_id)
    )
    return (await session.execute(statement)).first() is not None


async def event_seen(*, session: AsyncSession, profile_id: str, event: str, since: datetime) -> bool:
    """Whether a profile did an event at or after a time."""
    query = sa.select(sa.literal(1)).where(
        profile_events.c.profile_id == profile_id,
        profile_events.c.event == event,
        profile_events.c.at >= since,
    )
    return (await session.execute(query.limit(1))).first() is not None


async def record_purchases(*, session: AsyncSession, rows: list[dict[str, Any]]) -> None:
    """Keep the product lines of an order."""
    if rows:
        await session.execute(postgresql.insert(purchases).values(rows).on_conflict_do_nothing())


async def purchase_history(*, session: AsyncSession, profile_id: str) -> list[dict[str, Any]]:
    """Return a profile's product lines."""
    rows = await session.execute(sa.select(purchases).where(purchases.c.profile_id == profile_id))
    return [dict(r) for r in rows.mappings()]


async def catalogue_sales(*, session: AsyncSession, limit: int = 20_000) -> list[dict[str, Any]]:
    """Return the most recent product lines of everyone, the base of best sellers and baskets."""
    rows = await session.execute(sa.select(purchases).order_by(purchases.c.at.desc()).limit(limit))
    return [dict(r) for r in rows.mappings()]


# --- sends -------------------------------------------------------------------------------


async def insert_sends(*, session: AsyncSession, rows: list[dict[str, Any]]) -> list[str]:
    """Record sends that do not exist yet; return the ids that are new."""
    new: list[str] = []
    for start in range(0, len(rows), 1000):
        chunk = rows[start : start + 1000]
        statement = postgresql.insert(sends).values(chunk).on_conflict_do_nothing().returning(sends.c.id)
        new.extend((await session.execute(statement)).scalars())
    return new


async def sends_by_id(*, session: AsyncSession, send_ids: Sequence[str]) -> list[dict[str, Any]]:
    """Return sends by id."""
    rows = await session.execute(sa.select(sends).where(_any_of(sends.c.id, send_ids)).order_by(sends.c.id))
    return _dicts(rows)


async def get_send(*, session: AsyncSession, send_id: str) -> dict[str, Any] | None:
    """Return one send."""
    row = (await session.execute(sa.select(sends).where(sends.c.id == send_id))).mappings().first()
    return None if row is None else dict(row)


async def set_send_status(
    *,
    session: AsyncSession,
    send_ids: Sequence[str],
    status: str,
    from_statuses: Sequence[str],
    **values: Any,
) -> list[str]:
    """Move sends from one of some statuses to another; return the ids that moved."""
    if not send_ids:
        return []
    statement = (
        sends.update()
        .where(_any_of(sends.c.id, send_ids), sends.c.status.in_(list(from_statuses)))
        .values(status=status, updated_at=sa.func.now(), **values)
        .returning(sends.c.id)
    )
    return list((await session.execute(statement)).scalars())


async def claim_sends(*, session: AsyncSession, addresses: dict[str, str], at: datetime) -> list[str]:
    """Mark queued sends as handing over to their addresses in one statement; return the ids claimed."""
    if not addresses:
        return []
    claimed = (
        sa.func.unnest(
            sa.bindparam("claim_ids", list(addresses), type_=postgresql.ARRAY(sa.Text)),
            sa.bindparam("claim_addresses", list(addresses.values()), type_=postgresql.ARRAY(sa.Text)),
        )
        .table_valued("id", "address")
        .render_derived(name="claimed")
    )
    statement = (
        sends.update()
        .where(sends.c.id == claimed.c.id, sends.c.status == "queued")
        .values(
            status="handing_over",
            address=claimed.c.address,
            claimed_at=at,
            handed_at=at,
            updated_at=sa.func.now(),
        )
        .returning(sends.c.id)
    )
    return list((await session.execute(statement)).scalars())


async def lock_contact_windows(*, session: AsyncSession, pairs: Sequence[tuple[str, str]]) -> None:
    """Serialise, until commit, the claims of sends to these (profile, channel) pairs, in one order."""
    if not pairs:
        return
    keys = sorted({f"{profile_id}\x1f{channel}" for profile_id, channel in pairs})
    await session.execute(
        sa.text(
            "SELECT pg_advisory_xact_lock(h) FROM (SELECT hashtextextended('cdp-cap:' || k, 0) AS h"
            " FROM unnest(CAST(:keys AS text[])) AS k ORDER BY 1) AS ordered"
        ),
        {"keys": keys},
    )


async def handed_counts(
    *, session: AsyncSession, profile_ids: Sequence[str], channel: str, since: datetime
) -> dict[str, int]:
    """Count messages handed over per profile on a channel since a time, across all campaigns."""
    if not profile_ids:
        return {}
    rows = await session.execute(
        sa.select(sends.c.profile_id, sa.func.count())
        .where(
            sends.c.profile_id.in_(list(profile_ids)),
            sends.c.channel == channel,
            sends.c.status.in_(HANDED_STATUSES),
            sends.c.handed_at >= since,
        )
        .group_by(sends.c.profile_id)
    )
    return {pid: int(n) for pid, n in rows}


async def queued_send_ids(*, session: AsyncSession, source: str, source_id: str) -> list[str]:
    """Return the ids of sends of a campaign or journey still waiting for a worker."""
    rows = await session.execute(
        sa.select(sends.c.id).where(
            sends.c.source == source, sends.c.source_id == source_id, sends.c.status == "queued"
        )
    )
    return list(rows.scalars())


async def release_deferred(*, session: AsyncSession, now: datetime) -> list[str]:
    """Queue again the sends whose quiet hours are over; return their ids."""
    statement = (
        sends.update()
        .where(sends.c.status == "deferred", sends.c.not_before <= now)
        .values(status="queued", updated_at=sa.func.now())
        .returning(sends.c.id)
    )
    return list((await session.execute(statement)).scalars())


async def pending_count(*, session: AsyncSession, source: str, source_id: str) -> int:
    """Count sends of a campaign not yet decided (queued or deferred)."""
    query = sa.select(sa.func.count()).where(
        sends.c.source == source, sends.c.source_id == source_id, sends.c.status.in_(("queued", "deferred"))
    )
    return int((await session.execute(query)).scalar_one())


async def open_sends_for_goal(
    *, session: AsyncSession, profile_id: str, event: str, at: datetime
) -> list[dict[str, Any]]:
    """Return a profile's campaign sends (and holdout assignments) whose goal is this event, within the window."""
    window_hours = campaigns.c.spec["goal"]["window_hours"].as_integer()
    query = (
        sa.select(sends.c.id)
        .join(campaigns, sa.and_(sends.c.source == "campaign", campaigns.c.id == sends.c.source_id))
        .where(
            sends.c.profile_id == profile_id,
            sends.c.status.in_(("handing_over", "sent", "unknown", "holdout")),
            campaigns.c.spec["goal"]["event"].as_string() == event,
            sa.func.coalesce(sends.c.handed_at, sends.c.created_at) <= at,
            sa.func.coalesce(sends.c.handed_at, sends.c.created_at)
            + window_hours * sa.text("interval '1 hour'")
            >= at,
        )
    )
    return [dict(r) for r in (await session.execute(query)).mappings()]


async def record_engagement(
    *,
    session: AsyncSession,
    send_id: str,
    kind: str,
    at: datetime,
    url: str | None = None,
    revenue: float | None = None,
    dedupe_key: str | None = None,
) -> bool:
    """Record an open, click, unsubscribe or conversion; False for a duplicate."""
    statement = (
        postgresql.insert(engagements)
        .values(send_id=send_id, kind=kind, at=at, url=url, revenue=revenue, dedupe_key=dedupe_key)
        .on_conflict_do_nothing()
        .returning(engagements.c.id)
    )
    return (await session.execute(statement)).first() is not None


async def engaged(
    *, session: AsyncSession, source: str, source_id: str, profile_id: str, kinds: Sequence[str]
) -> bool:
    """Whether a profile engaged in one of some ways with a campaign's or journey's messages."""
    query = (
        sa.select(sa.literal(1))
        .select_from(engagements.join(sends, sends.c.id == engagements.c.send_id))
        .where(
            sends.c.source == source,
            sends.c.source_id == source_id,
            sends.c.profile_id == profile_id,
            engagements.c.kind.in_(list(kinds)),
        )
        .limit(1)
    )
    return (await session.execute(query)).first() is not None


async def campaign_report_rows(*, session: AsyncSession, campaign_id: str) -> list[dict[str, Any]]:
    """Return per variant: sends by status and distinct recipients per engagement kind, with revenue."""
    status_rows = await session.execute(
        sa.select(sends.c.variant, sends.c.status, sends.c.reason, sa.func.count())
        .where(sends.c.source == "campaign", sends.c.source_id == campaign_id)
        .group_by(sends.c.variant, sends.c.status, sends.c.reason)
    )
    engagement_rows = await session.execute(
        sa.select(
            sends.c.variant,
            engagements.c.kind,
            sa.func.count(sa.distinct(engagements.c.send_id)),
            sa.func.coalesce(sa.func.sum(engagements.c.revenue), 0.0),
        )
        .select_from(engagements.join(sends, sends.c.id == engagements.c.send_id))
        .where(sends.c.source == "campaign", sends.c.source_id == campaign_id)
        .group_by(sends.c.variant, engagements.c.kind)
    )
    rows: list[dict[str, Any]] = [
        {"variant": v, "status": s, "reason": r, "count": int(n)} for v, s, r, n in status_rows
    ]
    rows.extend(
        {"variant": v, "engagement": k, "count": int(n), "revenue": float(rev)}
        for v, k, n, rev in engagement_rows
    )
    return rows


async def timeline(
    *, session: AsyncSession, source: str, source_id: str, profile_id: str
) -> list[dict[str, Any]]:
    """Return a profile's sends of a campaign or journey with their engagement, oldest first."""
    rows = await session.execute(
        sa.select(sends)
        .where(sends.c.source == source, sends.c.source_id == source_id, sends.c.profile_id == profile_id)
        .order_by(sends.c.created_at, sends.c.step, sends.c.id)
    )
    items = [dict(r) for r in rows.mappings()]
    if not items:
        return []
    engagement_rows = await session.execute(
        sa.select(
            engagements.c.send_id,
            engagements.c.kind,
            engagements.c.at,
            engagements.c.url,
            engagements.c.revenue,
        )
        .where(engagements.c.send_id.in_([i["id"] for i in items]))
        .order_by(engagements.c.at)
    )
    by_send: dict[str, list[dict[str, Any]]] = {}
    for send_id, kind, at, url, revenue in engagement_rows:
        by_send.setdefault(send_id, []).append({"kind": kind, "at": at, "url": url, "revenue": revenue})
    for item in items:
        item["engagement"] = by_send.get(item["id"], [])
    return items


# --- journey positions --------------------------------------------------------------------


async def get_position(
    *, session: AsyncSession, journey_id: str, profile_id: str, for_update: bool = False
) -> dict[str, Any] | None:
    """Return a person's position in a journey."""
    query = sa.select(journey_positions).where(
        journey_positions.c.journey_id == journey_id, journey_positions.c.profile_id == profile_id
    )
    if for_update:
        query = query.with_for_update()
    row = (await session.execute(query)).mappings().first()
    return None if row is None else dict(row)


async def save_position(
    *, session: AsyncSession, journey_id: str, profile_id: str, entered_at: datetime, **values: Any
) -> None:
    """Store a person's position in a journey."""
    statement = postgresql.insert(journey_positions).values(
        journey_id=journey_id, profile_id=profile_id, entered_at=entered_at, **values
    )
    await session.execute(
        statement.on_conflict_do_update(
            index_elements=[journey_positions.c.journey_id, journey_positions.c.profile_id],
            set_={**values, "updated_at": sa.func.now()},
        )
    )


async def positions_due(*, session: AsyncSession, now: datetime, limit: int = 1000) -> list[dict[str, Any]]:
    """Return waiting positions whose time has come, locked for this replica."""
    query = (
        sa.select(journey_positions)
        .where(journey_positions.c.state == "waiting", journey_positions.c.wake_at <= now)
        .order_by(journey_positions.c.wake_at)
        .limit(limit)
        .with_for_update(skip_locked=True)
    )
    return [dict(r) for r in (await session.execute(query)).mappings()]


async def positions_waiting_for(*, session: AsyncSession, profile_id: str) -> list[dict[str, Any]]:
    """Return a profile's positions in journeys that are still going."""
    query = sa.select(journey_positions).where(
        journey_positions.c.profile_id == profile_id, journey_positions.c.state.in_(("waiting", "active"))
    )
    return [dict(r) for r in (await session.execute(query)).mappings()]


# --- privacy ----------------------------------------------------------------------------------


async def erase_profiles(*, session: AsyncSession, profile_ids: list[str]) -> dict[str, int]:
    """Delete what is held about these profiles; sends keep only the hashed id and their outcome."""
    counts = {
        "known_profiles": await erase_known_profiles(
            session=session, table=known_profiles, profile_ids=profile_ids
        )
    }
    for table in (contacts, memberships, profile_events, purchases, journey_positions):
        result = await session.execute(table.delete().where(table.c.profile_id.in_(profile_ids)))
        counts[str(table.name)] = int(getattr(result, "rowcount", 0) or 0)
    result = await session.execute(
        sends.update()
        .where(sends.c.profile_id.in_(profile_ids))
        .values(profile_id=None, address=None, error=None, updated_at=sa.func.now())
    )
    counts["sends_anonymised"] = int(getattr(result, "rowcount", 0) or 0)
    return {name: count for name, count in counts.items() if count}


def _plain(row: dict[str, Any]) -> dict[str, Any]:
    return {k: v.isoformat() if isinstance(v, datetime) else v for k, v in row.items()}


async def export_profile(*, session: AsyncSession, profile_id: str) -> dict[str, Any] | None:
    """Return everything held about one profile, or None."""
    known = await export_known_profile(session=session, table=known_profiles, profile_id=profile_id)
    contact = (await contacts_of(session=session, profile_ids=[profile_id])).get(profile_id)
    send_rows = await session.execute(
        sa.select(sends).where(sends.c.profile_id == profile_id).order_by(sends.c.created_at)
    )
    sent = [_plain(dict(r)) for r in send_rows.mappings()]
    positions = await session.execute(
        sa.select(journey_positions).where(journey_positions.c.profile_id == profile_id)
    )
    segment_keys = (await segments_of(session=session, profile_ids=[profile_id]))[profile_id]
    if known is None and contact is None and not sent:
        return None
    return {
        "known_profile": known,
        "contact": None if contact is None else _plain(contact),
        "segments": segment_keys,
        "sends": sent,
        "journey_positions": [_plain(dict(r)) for r in positions.mappings()],
        "purchases": [_plain(p) for p in await purchase_history(session=session, profile_id=profile_id)],
    }
