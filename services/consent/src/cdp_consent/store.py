"""Tables and queries of the consent service, in its own schema: the consent ledger and the state
derived from it, contact hashes and the suppression list, and the known-profiles replica."""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from datetime import datetime, timedelta
from typing import Any

import sqlalchemy as sa
from cdp_common.replica import erase_known_profiles, export_known_profile, known_profiles_table
from sqlalchemy.dialects import postgresql
from sqlalchemy.ext.asyncio import AsyncSession

from cdp_consent.domain.consents import (
    SUPPRESSION_KIND_OF_CHANNEL,
    ConsentStatus,
    RefusalReason,
    StateEntry,
    supersedes,
)

metadata = sa.MetaData()
known_profiles = known_profiles_table(metadata)

consent_ledger = sa.Table(
    "consent_ledger",
    metadata,
    sa.Column("id", sa.BigInteger, sa.Identity(always=True), primary_key=True),
    sa.Column("profile_id", sa.Text, nullable=False),
    sa.Column("purpose", sa.Text, nullable=False),
    sa.Column("channel", sa.Text, nullable=False),
    sa.Column("status", sa.Text, nullable=False),
    sa.Column("at", sa.DateTime(timezone=True), nullable=False),
    sa.Column("recorded_at", sa.DateTime(timezone=True), nullable=False, server_default=sa.func.now()),
    sa.Column("source", sa.Text, nullable=False),
    sa.Column("legal_basis", sa.Text),
    sa.Column("wording", sa.Text),
    sa.Column("wording_version", sa.Text),
    sa.Column("evidence", postgresql.JSONB, nullable=False),
    sa.Column("event_id", sa.Text),
)

consent_state = sa.Table(
    "consent_state",
    metadata,
    sa.Column("profile_id", sa.Text, primary_key=True),
    sa.Column("purpose", sa.Text, primary_key=True),
    sa.Column("channel", sa.Text, primary_key=True),
    sa.Column("status", sa.Text, nullable=False),
    sa.Column("at", sa.DateTime(timezone=True), nullable=False),
    sa.Column("ledger_id", sa.BigInteger, nullable=False),
)

profile_contacts = sa.Table(
    "profile_contacts",
    metadata,
    sa.Column("profile_id", sa.Text, primary_key=True),
    sa.Column("kind", sa.Text, nullable=False),
    sa.Column("hash", sa.Text, primary_key=True),
)

suppressions = sa.Table(
    "suppressions",
    metadata,
    sa.Column("hash", sa.Text, primary_key=True),
    sa.Column("kind", sa.Text, nullable=False),
    sa.Column("reason", sa.Text, nullable=False),
    sa.Column("created_at", sa.DateTime(timezone=True), nullable=False, server_default=sa.func.now()),
)

merges_applied = sa.Table(
    "merges_applied",
    metadata,
    sa.Column("merge_id", sa.Text, primary_key=True),
    sa.Column("profile_id", sa.Text, nullable=False),
    sa.Column("absorbed_profile_id", sa.Text, nullable=False),
    sa.Column("conflicts", sa.Integer, nullable=False),
    sa.Column("applied_at", sa.DateTime(timezone=True), nullable=False, server_default=sa.func.now()),
)

opt_ins = sa.Table(
    "opt_ins",
    metadata,
    sa.Column("id", sa.Text, primary_key=True),
    sa.Column("profile_id", sa.Text, nullable=False),
    sa.Column("purpose", sa.Text, nullable=False),
    sa.Column("channel", sa.Text, nullable=False),
    sa.Column("address_hash", sa.Text, nullable=False),
    sa.Column("token_hash", sa.Text, nullable=False, unique=True),
    sa.Column("status", sa.Text, nullable=False),
    sa.Column("requested_at", sa.DateTime(timezone=True), nullable=False, server_default=sa.func.now()),
    sa.Column("expires_at", sa.DateTime(timezone=True), nullable=False),
    sa.Column("request_evidence", postgresql.JSONB, nullable=False),
    sa.Column("legal_basis", sa.Text, nullable=False),
    sa.Column("wording", sa.Text),
    sa.Column("wording_version", sa.Text),
    sa.Column("confirmed_at", sa.DateTime(timezone=True)),
    sa.Column("confirm_evidence", postgresql.JSONB),
    sa.Column("ledger_id", sa.BigInteger),
)

privacy_requests = sa.Table(
    "privacy_requests",
    metadata,
    sa.Column("id", sa.Text, primary_key=True),
    sa.Column("type", sa.Text, nullable=False),
    sa.Column("subject_type", sa.Text, nullable=False),
    sa.Column("subject_hash", sa.Text, nullable=False),
    sa.Column("status", sa.Text, nullable=False),
    sa.Column("opened_at", sa.DateTime(timezone=True), nullable=False, server_default=sa.func.now()),
    sa.Column("deadline", sa.DateTime(timezone=True), nullable=False),
    sa.Column("completed_at", sa.DateTime(timezone=True)),
    sa.Column("profile_ids", postgresql.JSONB),
    sa.Column("note", sa.Text),
    sa.Column("bundle", postgresql.JSONB),
    sa.Column("bundle_erased_at", sa.DateTime(timezone=True)),
    sa.Column("assembly_due_at", sa.DateTime(timezone=True)),
    sa.Column("assembly_attempts", sa.Integer, nullable=False, server_default="0"),
    sa.Column("last_error", sa.Text),
)

privacy_receipts = sa.Table(
    "privacy_receipts",
    metadata,
    sa.Column("request_id", sa.Text, primary_key=True),
    sa.Column("service", sa.Text, primary_key=True),
    sa.Column("status", sa.Text, nullable=False),
    sa.Column("profile_ids", postgresql.JSONB, nullable=False),
    sa.Column("details", postgresql.JSONB, nullable=False),
    sa.Column("received_at", sa.DateTime(timezone=True), nullable=False, server_default=sa.func.now()),
)


@dataclass(frozen=True)
class LedgerEntry:
    """One appended ledger entry, and whether it changed the state in force."""

    row: dict[str, Any]
    previous: ConsentStatus | None
    in_force: bool

    @property
    def changes_status(self) -> bool:
        """Whether the status in force is now different from before."""
        return self.in_force and self.previous != self.row["status"]


def ledger_entry_view(row: Any) -> dict[str, Any]:
    """Return a ledger row as the API shows it."""
    return {
        "id": row.id,
        "profile_id": row.profile_id,
        "purpose": row.purpose,
        "channel": row.channel,
        "status": row.status,
        "at": row.at,
        "recorded_at": row.recorded_at,
        "source": row.source,
        "legal_basis": row.legal_basis,
        "wording": row.wording,
        "wording_version": row.wording_version,
        "evidence": row.evidence,
        "event_id": row.event_id,
    }


async def current_entry(
    *, session: AsyncSession, profile_id: str, purpose: str, channel: str, for_update: bool = False
) -> StateEntry | None:
    """Return the decision in force for one purpose and channel, or None."""
    query = sa.select(consent_state.c.status, consent_state.c.at, consent_state.c.ledger_id).where(
        consent_state.c.profile_id == profile_id,
        consent_state.c.purpose == purpose,
        consent_state.c.channel == channel,
    )
    if for_update:
        query = query.with_for_update()
    row = (await session.execute(query)).first()
    return None if row is None else StateEntry(ConsentStatus(row.status), row.at, row.ledger_id)


async def append_entry(
    *,
    session: AsyncSession,
    profile_id: str,
    purpose: str,
    channel: str,
    status: ConsentStatus,
    at: datetime,
    source: str,
    legal_basis: str | None = None,
    wording: str | None = None,
    wording_version: str | None = None,
    evidence: dict[str, Any] | None = None,
    event_id: str | None = None,
) -> LedgerEntry:
    """Append a decision to the ledger and bring the state in force up to date."""
    current = await current_entry(
        session=session, profile_id=profile_id, purpose=purpose, channel=channel, for_update=True
    )
    row = (
        await session.execute(
            consent_ledger.insert()
            .values(
                profile_id=profile_id,
                purpose=purpose,
                channel=channel,
                status=status.value,
                at=at,
                source=source,
                legal_basis=legal_basis,
                wording=wording,
                wording_version=wording_version,
                evidence=evidence or {},
                event_id=event_id,
            )
            .returning(*consent_ledger.c)
        )
    ).one()
    in_force = supersedes(new_at=row.at, new_id=row.id, current=current)
    if in_force:
        statement = postgresql.insert(consent_state).values(
            profile_id=profile_id,
            purpose=purpose,
            channel=channel,
            status=status.value,
            at=row.at,
            ledger_id=row.id,
        )
        excluded = statement.excluded
        await session.execute(
            statement.on_conflict_do_update(
                index_elements=[consent_state.c.profile_id, consent_state.c.purpose, consent_state.c.channel],
                set_={"status": excluded.status, "at": excluded.at, "ledger_id": excluded.ledger_id},
                where=sa.tuple_(consent_state.c.at, consent_state.c.ledger_id)
                <= sa.tuple_(excluded.at, excluded.ledger_id),
            )
        )
    return LedgerEntry(
        row=ledger_entry_view(row), previous=current.status if current else None, in_force=in_force
    )


async def states_of(*, session: AsyncSession, profile_id: str) -> dict[tuple[str, str], StateEntry]:
    """Return every decision in force for a profile, by (purpose, channel)."""
    rows = await session.execute(
        sa.select(consent_state).where(consent_state.c.profile_id == profile_id).with_for_update()
    )
    return {(r.purpose, r.channel): StateEntry(ConsentStatus(r.status), r.at, r.ledger_id) for r in rows}


async def state_view(*, session: AsyncSession, profile_id: str) -> list[dict[str, Any]]:
    """Return the decisions in force for a profile with the ledger entry behind each."""
    rows = await session.execute(
        sa.select(
            consent_state.c.purpose,
            consent_state.c.channel,
            consent_state.c.status,
            consent_state.c.at,
            consent_state.c.ledger_id,
            consent_ledger.c.source,
            consent_ledger.c.legal_basis,
            consent_ledger.c.wording_version,
        )
        .join(consent_ledger, consent_ledger.c.id == consent_state.c.ledger_id)
        .where(consent_state.c.profile_id == profile_id)
        .order_by(consent_state.c.purpose, consent_state.c.channel)
    )
    return [dict(r._mapping) for r in rows]


async def ledger_page(
    *, session: AsyncSession, profile_id: str, after_id: int | None, limit: int
) -> list[dict[str, Any]]:
    """Return a profile's ledger entries in the order they were recorded."""
    query = sa.select(consent_ledger).where(consent_ledger.c.profile_id == profile_id)
    if after_id is not None:
        query = query.where(consent_ledger.c.id > after_id)
    rows = await session.execute(query.order_by(consent_ledger.c.id).limit(limit))
    return [ledger_entry_view(r) for r in rows]


async def survivor_of(*, session: AsyncSession, profile_id: str) -> str:
    """Return the profile a merged-away id now belongs to, or the id itself."""
    merged_into = (
        await session.execute(
            sa.select(known_profiles.c.merged_into).where(known_profiles.c.profile_id == profile_id)
        )
    ).scalar_one_or_none()
    return merged_into or profile_id


# The profiles asked about, each with the id that answers for it (a merged-away id's survivor).
_RESOLVED = """
    WITH requested AS (
        SELECT DISTINCT unnest(CAST(:profile_ids AS text[])) AS profile_id
    ), resolved AS (
        SELECT r.profile_id, COALESCE(k.merged_into, r.profile_id) AS effective_id
        FROM requested r LEFT JOIN known_profiles k ON k.profile_id = r.profile_id
    )
"""
# The whole check as one statement: resolve merged-away ids, take the state in force,
# and refuse any profile one of whose addresses for this channel is suppressed.
CHECK_QUERY = sa.text(
    _RESOLVED  # noqa: S608 - both parts are constant SQL of this module
    + """
    SELECT res.profile_id, s.status,
           EXISTS (
               SELECT 1 FROM profile_contacts c JOIN suppressions x ON x.hash = c.hash
               WHERE c.profile_id = res.effective_id AND c.kind = :kind
           ) AS suppressed
    FROM resolved res
    LEFT JOIN consent_state s
        ON s.profile_id = res.effective_id AND s.purpose = :purpose AND s.channel = :channel
    """
)


# The decisions in force on one purpose, every channel, of profiles (merged-away ids answer for
# their survivor); a profile with none has one row of nulls.
DECISIONS_QUERY = sa.text(
    _RESOLVED  # noqa: S608 - both parts are constant SQL of this module
    + """
    SELECT res.profile_id, s.channel, s.status
    FROM resolved res
    LEFT JOIN consent_state s ON s.profile_id = res.effective_id AND s.purpose = :purpose
    """
)


async def purpose_decisions(
    *, session: AsyncSession, profile_ids: Sequence[str], purpose: str
) -> dict[str, dict[str, str]]:
    """Return each profile's decisions in force on a purpose, keyed `purpose:channel`."""
    rows = await session.execute(DECISIONS_QUERY, {"profile_ids": list(profile_ids), "purpose": purpose})
    decisions: dict[str, dict[str, str]] = {}
    for row in rows:
        held = decisions.setdefault(row.profile_id, {})
        if row.status is not None:
            held[f"{purpose}:{row.channel}"] = row.status
    return decisions


async def check_contactable(
    *, session: AsyncSession, profile_ids: Sequence[str], purpose: str, channel: str
) -> dict[str, RefusalReason | None]:
    """Return, per profile id, None when it may be contacted or the reason it may not."""
    kind = SUPPRESSION_KIND_OF_CHANNEL.get(channel, "")
    rows = await session.execute(
        CHECK_QUERY, {"profile_ids": list(profile_ids), "purpose": purpose, "channel": channel, "kind": kind}
    )
    verdicts: dict[str, RefusalReason | None] = {}
    for row in rows:
        if row.suppressed:
            verdicts[row.profile_id] = RefusalReason.SUPPRESSED
        elif row.status is None:
            verdicts[row.profile_id] = RefusalReason.NO_RECORD
        elif row.status == ConsentStatus.GRANTED:
            verdicts[row.profile_id] = None
        else:
            verdicts[row.profile_id] = RefusalReason(row.status)
    return verdicts


# One statement whatever the number of hashes, so it is prepared once per connection.
_RECORD_CONTACTS = sa.text(
    "INSERT INTO profile_contacts (profile_id, kind, hash)"
    " SELECT * FROM unnest(CAST(:profile_ids AS text[]), CAST(:kinds AS text[]), CAST(:hashes AS text[]))"
    " ON CONFLICT DO NOTHING"
)


async def record_contacts(*, session: AsyncSession, contacts: Sequence[tuple[str, str, str]]) -> None:
    """Remember the keyed hashes of profiles' e-mail addresses and phone numbers: (profile_id, kind, hash) each."""
    if not contacts:
        return
    await session.execute(
        _RECORD_CONTACTS,
        {
            "profile_ids": [profile_id for profile_id, _, _ in contacts],
            "kinds": [kind for _, kind, _ in contacts],
            "hashes": [h for _, _, h in contacts],
        },
    )


async def move_contacts(*, session: AsyncSession, from_profile_id: str, to_profile_id: str) -> None:
    """Give a survivor the contact hashes of a profile merged into it."""
    await session.execute(
        sa.text(
            "INSERT INTO profile_contacts (profile_id, kind, hash)"
            " SELECT :to_id, kind, hash FROM profile_contacts WHERE profile_id = :from_id"
            " ON CONFLICT DO NOTHING"
        ),
        {"to_id": to_profile_id, "from_id": from_profile_id},
    )


async def contacts_of(*, session: AsyncSession, profile_ids: Sequence[str]) -> list[tuple[str, str]]:
    """Return the (kind, hash) pairs known for some profiles."""
    rows = await session.execute(
        sa.select(profile_contacts.c.kind, profile_contacts.c.hash)
        .where(profile_contacts.c.profile_id.in_(profile_ids))
        .distinct()
    )
    return [(r.kind, r.hash) for r in rows]


async def record_merge(
    *, session: AsyncSession, merge_id: str, profile_id: str, absorbed_profile_id: str, conflicts: int
) -> bool:
    """Record that a merge was applied; False when it already was (it arrives on both keys)."""
    statement = (
        postgresql.insert(merges_applied)
        .values(
            merge_id=merge_id,
            profile_id=profile_id,
            absorbed_profile_id=absorbed_profile_id,
            conflicts=conflicts,
        )
        .on_conflict_do_nothing()
        .returning(merges_applied.c.merge_id)
    )
    return (await session.execute(statement)).first() is not None


async def redirect_merged(*, session: AsyncSession, absorbed_profile_id: str, survivor_id: str) -> None:
    """Point profiles merged into an absorbed profile at its survivor, so one hop always suffices."""
    await session.execute(
        known_profiles.update()
        .where(known_profiles.c.merged_into == absorbed_profile_id)
        .values(merged_into=survivor_id)
    )


async def add_suppression(
    *, session: AsyncSession, hash_value: str, kind: str, reason: str
) -> dict[str, Any]:
    """Put a hashed address on the suppression list (kept as is when already there)."""
    statement = postgresql.insert(suppressions).values(hash=hash_value, kind=kind, reason=reason)
    await session.execute(statement.on_conflict_do_nothing())
    return await get_suppression(session=session, hash_value=hash_value) or {}


async def get_suppression(*, session: AsyncSession, hash_value: str) -> dict[str, Any] | None:
    """Return one suppression entry, or None."""
    row = (await session.execute(sa.select(suppressions).where(suppressions.c.hash == hash_value))).first()
    return None if row is None else dict(row._mapping)


async def delete_suppression(*, session: AsyncSession, hash_value: str) -> bool:
    """Take a hash off the suppression list; False when it was not on it."""
    result = await session.execute(suppressions.delete().where(suppressions.c.hash == hash_value))
    return bool(getattr(result, "rowcount", 0))


async def suppression_page(*, session: AsyncSession, after: str | None, limit: int) -> list[dict[str, Any]]:
    """Return suppression entries in hash order."""
    query = sa.select(suppressions).order_by(suppressions.c.hash).limit(limit)
    if after is not None:
        query = query.where(suppressions.c.hash > after)
    return [dict(r._mapping) for r in await session.execute(query)]


async def create_opt_in(*, session: AsyncSession, values: dict[str, Any]) -> dict[str, Any]:
    """Store a pending opt-in request."""
    row = (await session.execute(opt_ins.insert().values(**values).returning(*opt_ins.c))).one()
    return dict(row._mapping)


async def opt_in_by_token(*, session: AsyncSession, token_hash: str) -> dict[str, Any] | None:
    """Return the opt-in request a token belongs to, locked for the confirmation, or None."""
    row = (
        await session.execute(sa.select(opt_ins).where(opt_ins.c.token_hash == token_hash).with_for_update())
    ).first()
    return None if row is None else dict(row._mapping)


async def get_opt_in(*, session: AsyncSession, opt_in_id: str) -> dict[str, Any] | None:
    """Return one opt-in request, or None."""
    row = (await session.execute(sa.select(opt_ins).where(opt_ins.c.id == opt_in_id))).first()
    return None if row is None else dict(row._mapping)


async def update_opt_in(*, session: AsyncSession, opt_in_id: str, values: dict[str, Any]) -> None:
    """Change an opt-in request's status and evidence."""
    await session.execute(opt_ins.update().where(opt_ins.c.id == opt_in_id).values(**values))


async def expire_opt_ins(*, session: AsyncSession, now: datetime) -> int:
    """Mark pending opt-in requests past their expiry as expired; return how many."""
    result = await session.execute(
        opt_ins.update()
        .where(opt_ins.c.status == "pending", opt_ins.c.expires_at <= now)
        .values(status="expired")
    )
    return int(getattr(result, "rowcount", 0) or 0)


async def pending_opt_ins(*, session: AsyncSession, profile_id: str) -> list[dict[str, Any]]:
    """Return a profile's opt-in requests awaiting confirmation."""
    rows = await session.execute(
        sa.select(
            opt_ins.c.id, opt_ins.c.purpose, opt_ins.c.channel, opt_ins.c.requested_at, opt_ins.c.expires_at
        )
        .where(opt_ins.c.profile_id == profile_id, opt_ins.c.status == "pending")
        .order_by(opt_ins.c.requested_at)
    )
    return [dict(r._mapping) for r in rows]


async def opt_ins_of(*, session: AsyncSession, profile_id: str) -> list[dict[str, Any]]:
    """Return every opt-in request of a profile, without the token hash."""
    rows = await session.execute(
        sa.select(*[c for c in opt_ins.c if c.name != "token_hash"])
        .where(opt_ins.c.profile_id == profile_id)
        .order_by(opt_ins.c.requested_at)
    )
    return [dict(r._mapping) for r in rows]


async def create_privacy_request(*, session: AsyncSession, values: dict[str, Any]) -> dict[str, Any]:
    """Store a new privacy request."""
    row = (
        await session.execute(privacy_requests.insert().values(**values).returning(*privacy_requests.c))
    ).one()
    return dict(row._mapping)


async def get_privacy_request(
    *, session: AsyncSession, request_id: str, for_update: bool = False
) -> dict[str, Any] | None:
    """Return one privacy request, or None."""
    query = sa.select(privacy_requests).where(privacy_requests.c.id == request_id)
    if for_update:
        query = query.with_for_update()
    row = (await session.execute(query)).first()
    return None if row is None else dict(row._mapping)


async def update_privacy_request(*, session: AsyncSession, request_id: str, values: dict[str, Any]) -> None:
    """Change a privacy request."""
    await session.execute(
        privacy_requests.update().where(privacy_requests.c.id == request_id).values(**values)
    )


async def record_receipt(
    *,
    session: AsyncSession,
    request_id: str,
    service: str,
    status: str,
    profile_ids: list[str],
    details: dict[str, Any],
) -> bool:
    """Record a service's receipt; False when that service had already answered."""
    statement = (
        postgresql.insert(privacy_receipts)
        .values(
            request_id=request_id, service=service, status=status, profile_ids=profile_ids, details=details
        )
        .on_conflict_do_nothing()
        .returning(privacy_receipts.c.service)
    )
    return (await session.execute(statement)).first() is not None


async def receipts_of(*, session: AsyncSession, request_id: str) -> dict[str, dict[str, Any]]:
    """Return a request's receipts by service."""
    rows = await session.execute(
        sa.select(privacy_receipts).where(privacy_receipts.c.request_id == request_id)
    )
    return {
        r.service: {
            "status": r.status,
            "profile_ids": r.profile_ids,
            "details": r.details,
            "received_at": r.received_at,
        }
        for r in rows
    }


async def claim_due_assemblies(
    *, session: AsyncSession, now: datetime, lease_s: float, limit: int = 5
) -> list[dict[str, Any]]:
    """Take access requests whose bundle is due, leasing them so no other replica takes them too."""
    due = (
        sa.select(privacy_requests.c.id)
        .where(
            privacy_requests.c.assembly_due_at <= now,
            privacy_requests.c.status == "in_progress",
        )
        .order_by(privacy_requests.c.assembly_due_at)
        .limit(limit)
        .with_for_update(skip_locked=True)
        .scalar_subquery()
    )
    rows = await session.execute(
        privacy_requests.update()
        .where(privacy_requests.c.id.in_(due))
        .values(assembly_due_at=now + timedelta(seconds=lease_s))
        .returning(*privacy_requests.c)
    )
    return [dict(r._mapping) for r in rows]


@dataclass(frozen=True)
class OpenRequests:
    """How the open privacy requests stand against their deadlines."""

    open: int
    due_soon: int
    overdue: int
    oldest_age_s: float


async def summarise_open_requests(
    *, session: AsyncSession, now: datetime, warn_before: timedelta
) -> OpenRequests:
    """Count open privacy requests, those near or past their deadline, and the oldest one's age."""
    is_open = privacy_requests.c.status.in_(["pending", "in_progress"])
    row = (
        await session.execute(
            sa.select(
                sa.func.count(),
                sa.func.count().filter(
                    privacy_requests.c.deadline >= now, privacy_requests.c.deadline < now + warn_before
                ),
                sa.func.count().filter(privacy_requests.c.deadline < now),
                sa.func.min(privacy_requests.c.opened_at),
            )
            .select_from(privacy_requests)
            .where(is_open)
        )
    ).one()
    oldest = row[3]
    return OpenRequests(
        open=int(row[0]),
        due_soon=int(row[1]),
        overdue=int(row[2]),
        oldest_age_s=max((now - oldest).total_seconds(), 0.0) if oldest is not None else 0.0,
    )


async def erase_bundles(*, session: AsyncSession, profile_ids: list[str]) -> int:
    """Drop the access bundles that hold data of these profiles; return how many."""
    result = await session.execute(
        sa.text(
            "UPDATE privacy_requests SET bundle = NULL, bundle_erased_at = now()"
            " WHERE bundle IS NOT NULL AND profile_ids ?| CAST(:ids AS text[])"
        ),
        {"ids": profile_ids},
    )
    return int(getattr(result, "rowcount", 0) or 0)


async def expire_bundles(*, session: AsyncSession, completed_before: datetime) -> int:
    """Drop access bundles of requests completed before a time; return how many."""
    result = await session.execute(
        privacy_requests.update()
        .where(privacy_requests.c.bundle.is_not(None), privacy_requests.c.completed_at < completed_before)
        .values(bundle=None, bundle_erased_at=sa.func.now())
    )
    return int(getattr(result, "rowcount", 0) or 0)


async def _delete_where(
    session: AsyncSession, table: sa.Table, column: sa.ColumnElement[Any], ids: list[str]
) -> int:
    result = await session.execute(table.delete().where(column.in_(ids)))
    return int(getattr(result, "rowcount", 0) or 0)


async def erase_profiles(*, session: AsyncSession, profile_ids: list[str]) -> dict[str, int]:
    """Delete everything held about these profiles; return the rows removed per table (none: left out).

    The profiles' e-mail and phone hashes go onto the suppression list first, so the
    erased person is never contacted again even if their address comes back.
    """
    for kind, hash_value in await contacts_of(session=session, profile_ids=profile_ids):
        await add_suppression(session=session, hash_value=hash_value, kind=kind, reason="erased")
    removed = {
        "consent_ledger": await _delete_where(
            session, consent_ledger, consent_ledger.c.profile_id, profile_ids
        ),
        "consent_state": await _delete_where(session, consent_state, consent_state.c.profile_id, profile_ids),
        "opt_ins": await _delete_where(session, opt_ins, opt_ins.c.profile_id, profile_ids),
        "access_bundles": await erase_bundles(session=session, profile_ids=profile_ids),
        "profile_contacts": await _delete_where(
            session, profile_contacts, profile_contacts.c.profile_id, profile_ids
        ),
        "merges_applied": await _delete_where(
            session, merges_applied, merges_applied.c.profile_id, profile_ids
        )
        + await _delete_where(session, merges_applied, merges_applied.c.absorbed_profile_id, profile_ids),
        "known_profiles": await erase_known_profiles(
            session=session, table=known_profiles, profile_ids=profile_ids
        ),
    }
    return {table: count for table, count in removed.items() if count}


async def export_profile(*, session: AsyncSession, profile_id: str) -> dict[str, Any] | None:
    """Return everything held about one profile, or None."""
    known = await export_known_profile(session=session, table=known_profiles, profile_id=profile_id)
    ledger = await ledger_page(session=session, profile_id=profile_id, after_id=None, limit=100_000)
    state = await state_view(session=session, profile_id=profile_id)
    requests = await opt_ins_of(session=session, profile_id=profile_id)
    if known is None and not ledger and not state and not requests:
        return None
    return {
        "known_profile": known,
        "consents": _jsonable(state),
        "consent_ledger": _jsonable(ledger),
        "opt_ins": _jsonable(requests),
    }


def _jsonable(rows: list[dict[str, Any]]) -> list[dict[str, Any]]:
    return [{k: v.isoformat() if isinstance(v, datetime) else v for k, v in row.items()} for row in rows]
