"""Tables and queries of the duplicate review queue: what the queue knows of each live profile
(its candidate and blocks), the suspected pairs with their state, the operators' decisions, and
the profiles noted as changed since they were last compared.

Candidates and blocks belong to profiles and suspects name two: deleting a profile (erasure)
deletes them with it. A candidate is `pending` from the moment a scan sees it new or changed
until that scan has compared it with its blocks' members. A trigger on `profiles` (migration
0010) notes in `duplicate_changes` each profile created or changed in a trait listed in
`_CANDIDATE_TRAITS` or in its status; the queue's periodic job compares them and removes the
notes. Scans and that job take turns on the queue's lock (`hold_queue`).
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from datetime import datetime
from typing import Any

import sqlalchemy as sa
from cdp_common.jobs import jobs_table
from sqlalchemy.dialects import postgresql
from sqlalchemy.ext.asyncio import AsyncSession

from cdp_profile.domain.duplicates import Candidate
from cdp_profile.domain.traits import TraitValue, common_traits
from cdp_profile.store import profiles

SCAN_JOB = "duplicate_scan"
STATES = ("open", "dismissed", "merged")

metadata = sa.MetaData()

candidates = sa.Table(
    "duplicate_candidates",
    metadata,
    sa.Column("profile_id", sa.Text, primary_key=True),
    sa.Column("name", sa.Text),
    sa.Column("email", sa.Text),
    sa.Column("phone", sa.Text),
    sa.Column("address", sa.Text),
    sa.Column("company", sa.Text),
    sa.Column("postal_code", sa.Text),
    sa.Column("birthday", sa.Text),
    sa.Column("keys_version", sa.Integer, nullable=False),
    sa.Column("pending", sa.Boolean, nullable=False),
    sa.Column("updated_at", sa.DateTime(timezone=True), nullable=False, server_default=sa.func.now()),
)

keys = sa.Table(
    "duplicate_keys",
    metadata,
    sa.Column("block", sa.BigInteger, primary_key=True),
    sa.Column("profile_id", sa.Text, primary_key=True),
)

suspects = sa.Table(
    "duplicate_suspects",
    metadata,
    sa.Column("profile_a", sa.Text, primary_key=True),
    sa.Column("profile_b", sa.Text, primary_key=True),
    sa.Column("score", sa.Float, nullable=False),
    sa.Column("reasons", postgresql.JSONB, nullable=False),
    sa.Column("state", sa.Text, nullable=False),
    sa.Column("seen_job", sa.Text),
    sa.Column("decided_by", sa.Text),
    sa.Column("found_at", sa.DateTime(timezone=True), nullable=False, server_default=sa.func.now()),
    sa.Column("updated_at", sa.DateTime(timezone=True), nullable=False, server_default=sa.func.now()),
)

changes = sa.Table(
    "duplicate_changes",
    metadata,
    sa.Column("seq", sa.BigInteger, primary_key=True),
    sa.Column("profile_id", sa.Text, nullable=False),
)

# The traits a candidate is made of, read from the stored profile without the rest of it; the
# trigger of migration 0010 notes a profile whose value of one of them changed.
_CANDIDATE_TRAITS = (
    "first_name",
    "firstName",
    "last_name",
    "lastName",
    "name",
    "email",
    "phone",
    "address",
    "company",
    "birthday",
)
_TRAIT_SUBSET = sa.func.jsonb_strip_nulls(
    sa.func.jsonb_build_object(
        *(part for name in _CANDIDATE_TRAITS for part in (sa.literal(name), profiles.c.traits[name]))
    )
).label("traits")


_CANDIDATE_COLUMNS = (
    "profile_id",
    "name",
    "email",
    "phone",
    "address",
    "company",
    "postal_code",
    "birthday",
)
# One statement for a batch of candidates, whatever their number: new ones are inserted, changed
# ones (every one when `full`) updated; both come back, pending or not as asked.
_UPSERT_CANDIDATES = sa.text(
    """
    INSERT INTO duplicate_candidates (profile_id, name, email, phone, address, company, postal_code,
                                      birthday, keys_version, pending)
    SELECT t.*, :keys_version, :pending
      FROM unnest(CAST(:profile_id AS text[]), CAST(:name AS text[]), CAST(:email AS text[]),
                  CAST(:phone AS text[]), CAST(:address AS text[]), CAST(:company AS text[]),
                  CAST(:postal_code AS text[]), CAST(:birthday AS text[]))
           AS t(profile_id, name, email, phone, address, company, postal_code, birthday)
    ON CONFLICT (profile_id) DO UPDATE
       SET name = EXCLUDED.name, email = EXCLUDED.email, phone = EXCLUDED.phone,
           address = EXCLUDED.address, company = EXCLUDED.company, postal_code = EXCLUDED.postal_code,
           birthday = EXCLUDED.birthday, keys_version = EXCLUDED.keys_version,
           pending = EXCLUDED.pending, updated_at = now()
     WHERE CAST(:full AS boolean)
        OR (duplicate_candidates.name, duplicate_candidates.email, duplicate_candidates.phone,
            duplicate_candidates.address, duplicate_candidates.company, duplicate_candidates.postal_code,
            duplicate_candidates.birthday, duplicate_candidates.keys_version)
           IS DISTINCT FROM
           (EXCLUDED.name, EXCLUDED.email, EXCLUDED.phone, EXCLUDED.address, EXCLUDED.company,
            EXCLUDED.postal_code, EXCLUDED.birthday, EXCLUDED.keys_version)
    RETURNING profile_id
    """
)


def _among(column: sa.ColumnElement[Any], ids: Sequence[str] | Sequence[int]) -> sa.ColumnElement[bool]:
    """`column = ANY(ids)`: one array parameter, however many ids (an IN list is compiled per id)."""
    kind = sa.BigInteger if isinstance(column.type, sa.BigInteger) else sa.Text
    return column == sa.any_(sa.bindparam(None, list(ids), type_=postgresql.ARRAY(kind)))


@dataclass(frozen=True)
class StoredSuspect:
    """A pair of the queue."""

    profile_ids: tuple[str, str]
    score: float
    reasons: dict[str, float]
    state: str
    found_at: datetime


def _read_candidates(profile_ids: Sequence[str]) -> sa.Select[Any]:
    """Select these candidates: their fields in the order of `Candidate`, then whether they are pending."""
    return sa.select(*(candidates.c[name] for name in _CANDIDATE_COLUMNS), candidates.c.pending).where(
        _among(candidates.c.profile_id, profile_ids)
    )


# --- the scan and the changes -------------------------------------------------------------------


def _traits_of(row: Any) -> dict[str, Any]:
    return common_traits({name: TraitValue.from_json(raw) for name, raw in row.traits.items()})


async def hold_queue(*, session: AsyncSession, wait: bool = True) -> bool:
    """Take, until the transaction ends, the lock scans and the changes' job take turns on; without
    `wait`, return at once whether it was free."""
    if wait:
        await session.execute(sa.text("SELECT pg_advisory_xact_lock(hashtextextended('duplicate_queue', 0))"))
        return True
    return bool(
        await session.scalar(
            sa.text("SELECT pg_try_advisory_xact_lock(hashtextextended('duplicate_queue', 0))")
        )
    )


async def active_profile_traits(
    *, session: AsyncSession, after: str, limit: int
) -> list[tuple[str, dict[str, Any]]]:
    """Return the next live profiles in id order with their typed common traits; no row is locked.

    The notes of changes to the profiles of this stretch (every id after the last one returned
    when fewer than `limit` come back) are removed in the same statement, so exactly the changes
    read here are forgotten: the scan compares these profiles as they are now.
    """
    batch = (
        sa.select(profiles.c.id, _TRAIT_SUBSET)
        .where(profiles.c.id > after, profiles.c.status == "active")
        .order_by(profiles.c.id)
        .limit(limit)
        .cte("batch")
    )
    short = sa.select(sa.func.count()).select_from(batch).scalar_subquery() < limit
    last = sa.select(sa.func.max(batch.c.id)).scalar_subquery()
    cleared = (
        changes.delete()
        .where(changes.c.profile_id > after, sa.or_(short, changes.c.profile_id <= last))
        .cte("cleared")
    )
    rows = await session.execute(sa.select(batch.c.id, batch.c.traits).add_cte(cleared).order_by(batch.c.id))
    return [(row.id, _traits_of(row)) for row in rows]


async def save_candidates(
    *,
    session: AsyncSession,
    found: Sequence[Candidate],
    blocks: Sequence[list[int]],
    keys_version: int,
    after: str,
    last: str | None,
    full: bool,
) -> int:
    """Store the candidates of one stretch of profile ids (after, last] and their blocks.

    A new or changed candidate (every one with `full`) becomes pending and gets its blocks
    again; a profile of the stretch that is no longer live loses its candidate, its blocks and
    its open suspects. Returns how many candidates changed.
    """
    changed = await upsert_candidates(
        session=session, found=found, blocks=blocks, keys_version=keys_version, full=full, pending=True
    )
    stretch = candidates.c.profile_id > after
    if last is not None:
        stretch = sa.and_(stretch, candidates.c.profile_id <= last)
    live = [c.profile_id for c in found]
    gone = list(
        (
            await session.execute(
                sa.select(candidates.c.profile_id).where(
                    stretch, sa.not_(_among(candidates.c.profile_id, live))
                )
            )
        ).scalars()
    )
    await drop_candidates(session=session, profile_ids=gone)
    return len(changed)


async def upsert_candidates(
    *,
    session: AsyncSession,
    found: Sequence[Candidate],
    blocks: Sequence[list[int]],
    keys_version: int,
    full: bool,
    pending: bool,
) -> list[str]:
    """Store candidates; the new and the changed ones (every one with `full`) get their blocks
    again. Return the ids of those."""
    if not found:
        return []
    columns = {n: [getattr(c, n) for c in found] for n in _CANDIDATE_COLUMNS}
    changed = list(
        (
            await session.execute(
                _UPSERT_CANDIDATES,
                {**columns, "keys_version": keys_version, "full": full, "pending": pending},
            )
        ).scalars()
    )
    if changed:
        blocks_of = {c.profile_id: b for c, b in zip(found, blocks, strict=True)}
        await session.execute(keys.delete().where(_among(keys.c.profile_id, changed)))
        numbers = [n for pid in changed for n in sorted(set(blocks_of[pid]))]
        owners = [pid for pid in changed for _ in sorted(set(blocks_of[pid]))]
        if numbers:
            await session.execute(
                sa.text(
                    "INSERT INTO duplicate_keys (block, profile_id) "
                    "SELECT * FROM unnest(CAST(:blocks AS bigint[]), CAST(:owners AS text[])) "
                    "ON CONFLICT DO NOTHING"
                ),
                {"blocks": numbers, "owners": owners},
            )
    return changed


async def drop_candidates(*, session: AsyncSession, profile_ids: Sequence[str]) -> None:
    """Forget profiles that are no longer live: their candidates, blocks and open suspects."""
    if not profile_ids:
        return
    # Their blocks go with the candidates (the foreign key cascades).
    await session.execute(candidates.delete().where(_among(candidates.c.profile_id, profile_ids)))
    await session.execute(
        suspects.delete().where(
            suspects.c.state == "open",
            sa.or_(_among(suspects.c.profile_a, profile_ids), _among(suspects.c.profile_b, profile_ids)),
        )
    )


async def next_changes(*, session: AsyncSession, limit: int) -> list[tuple[int, str]]:
    """Return the oldest notes of changed profiles (note, profile id)."""
    rows = await session.execute(
        sa.select(changes.c.seq, changes.c.profile_id).order_by(changes.c.seq).limit(limit)
    )
    return [(row.seq, row.profile_id) for row in rows]


async def forget_changes(*, session: AsyncSession, notes: Sequence[int]) -> None:
    """Remove notes of changes once their profiles were compared."""
    await session.execute(changes.delete().where(_among(changes.c.seq, notes)))


async def count_changes(*, session: AsyncSession) -> int:
    """Return how many notes of changed profiles wait to be compared."""
    return int(await session.scalar(sa.select(sa.func.count()).select_from(changes)) or 0)


async def blocks_with(*, session: AsyncSession, blocks: Sequence[int]) -> list[list[Candidate]]:
    """Return the members of these blocks, whole, each block with more than one member."""
    if not blocks:
        return []
    members_of: dict[int, list[str]] = {}
    for block, profile_id in await session.execute(
        sa.select(keys.c.block, keys.c.profile_id).where(_among(keys.c.block, blocks))
    ):
        members_of.setdefault(block, []).append(profile_id)
    shared = sorted({pid for ids in members_of.values() if len(ids) > 1 for pid in ids})
    found = {row[0]: Candidate(*row[:-1]) for row in await session.execute(_read_candidates(shared))}
    return [[found[pid] for pid in ids if pid in found] for ids in members_of.values() if len(ids) > 1]


async def drop_unseen(*, session: AsyncSession, profile_ids: Sequence[str], seen: str) -> None:
    """Remove the open suspects of these profiles that the comparison `seen` did not find again."""
    if not profile_ids:
        return
    await session.execute(
        suspects.delete().where(
            suspects.c.state == "open",
            sa.or_(suspects.c.seen_job.is_(None), suspects.c.seen_job != seen),
            sa.or_(_among(suspects.c.profile_a, profile_ids), _among(suspects.c.profile_b, profile_ids)),
        )
    )


async def next_blocks(
    *, session: AsyncSession, after: int | None, rows: int
) -> tuple[list[list[Candidate]], set[str], int | None, int]:
    """Walk the blocks in block order from after the block `after`, about `rows` memberships at a time.

    Returns the whole blocks read that have a pending member and more than one member, the
    pending members, the last block read (None at the end) and how many memberships were read.
    """
    query = sa.select(keys.c.block, keys.c.profile_id).order_by(keys.c.block, keys.c.profile_id).limit(rows)
    if after is not None:
        query = query.where(keys.c.block > after)
    walked = (await session.execute(query)).all()
    if not walked:
        return [], set(), None, 0
    last = walked[-1].block
    if len(walked) == rows:
        if walked[0].block == last:
            # One block larger than a step's share: read it whole.
            walked = (
                await session.execute(sa.select(keys.c.block, keys.c.profile_id).where(keys.c.block == last))
            ).all()
        else:
            # The last block may go on past the limit: leave it to the next step.
            walked = [w for w in walked if w.block != last]
            last = walked[-1].block
    members_of: dict[int, list[str]] = {}
    for block, profile_id in walked:
        members_of.setdefault(block, []).append(profile_id)
    shared = {pid for ids in members_of.values() if len(ids) > 1 for pid in ids}
    found: dict[str, Candidate] = {}
    pending: set[str] = set()
    if shared:
        for row in await session.execute(_read_candidates(sorted(shared))):
            found[row[0]] = Candidate(*row[:-1])
            if row[-1]:
                pending.add(row[0])
    blocks = [
        [found[pid] for pid in ids if pid in found]
        for ids in members_of.values()
        if len(ids) > 1 and any(pid in pending for pid in ids)
    ]
    return blocks, pending, last, len(walked)


async def count_keys(*, session: AsyncSession, after: str, last: str | None) -> int:
    """Return how many block memberships the candidates of (after, last] have."""
    query = sa.select(sa.func.count()).select_from(keys).where(keys.c.profile_id > after)
    if last is not None:
        query = query.where(keys.c.profile_id <= last)
    return int(await session.scalar(query) or 0)


async def record_suspects(
    *, session: AsyncSession, found: Sequence[tuple[tuple[str, str], float, dict[str, float]]], job_id: str
) -> None:
    """Add or refresh open suspects seen by a scan; a dismissed or merged pair keeps its state."""
    if not found:
        return
    inserted = postgresql.insert(suspects)
    rows = [
        {
            "profile_a": pair[0],
            "profile_b": pair[1],
            "score": score,
            "reasons": reasons,
            "state": "open",
            "seen_job": job_id,
        }
        for pair, score, reasons in found
    ]
    await session.execute(
        inserted.on_conflict_do_update(
            index_elements=[suspects.c.profile_a, suspects.c.profile_b],
            set_={
                "score": inserted.excluded.score,
                "reasons": inserted.excluded.reasons,
                "seen_job": inserted.excluded.seen_job,
                "updated_at": sa.func.now(),
            },
            where=suspects.c.state == "open",
        ),
        rows,
    )


async def settle_pending(*, session: AsyncSession, job_id: str, limit: int) -> int:
    """Drop open suspects of compared candidates that the scan no longer found; clear their pending flag."""
    ids = list(
        (
            await session.execute(sa.select(candidates.c.profile_id).where(candidates.c.pending).limit(limit))
        ).scalars()
    )
    if not ids:
        return 0
    await drop_unseen(session=session, profile_ids=ids, seen=job_id)
    await session.execute(
        candidates.update().where(_among(candidates.c.profile_id, ids)).values(pending=False)
    )
    return len(ids)


async def count_active_profiles(*, session: AsyncSession) -> int:
    """Return how many live profiles there are."""
    count = await session.scalar(sa.text("SELECT count(*) FROM profiles WHERE status = 'active'"))
    return int(count or 0)


# --- the queue ----------------------------------------------------------------------------------


async def open_suspects(
    *,
    session: AsyncSession,
    min_score: float,
    after: tuple[float, str, str] | None,
    limit: int,
) -> list[StoredSuspect]:
    """Return open pairs of two live profiles, best score first, after a (score, a, b) position."""
    first_profile = profiles.alias("first_profile")
    second_profile = profiles.alias("second_profile")
    query = (
        sa.select(suspects)
        .join(first_profile, first_profile.c.id == suspects.c.profile_a)
        .join(second_profile, second_profile.c.id == suspects.c.profile_b)
        .where(
            suspects.c.state == "open",
            suspects.c.score >= min_score,
            first_profile.c.status == "active",
            second_profile.c.status == "active",
        )
        .order_by(suspects.c.score.desc(), suspects.c.profile_a, suspects.c.profile_b)
        .limit(limit)
    )
    if after is not None:
        score, first, second = after
        query = query.where(
            sa.or_(
                suspects.c.score < score,
                sa.and_(
                    suspects.c.score == score,
                    sa.tuple_(suspects.c.profile_a, suspects.c.profile_b) > sa.tuple_(first, second),
                ),
            )
        )
    return [
        StoredSuspect(
            profile_ids=(r.profile_a, r.profile_b),
            score=r.score,
            reasons=r.reasons,
            state=r.state,
            found_at=r.found_at,
        )
        for r in await session.execute(query)
    ]


async def states_of(
    *, session: AsyncSession, pairs: Sequence[tuple[str, str]]
) -> dict[tuple[str, str], tuple[str, float]]:
    """Return the state and score the queue holds for these pairs."""
    if not pairs:
        return {}
    rows = await session.execute(
        sa.text(
            "SELECT s.profile_a, s.profile_b, s.state, s.score FROM duplicate_suspects s "
            "JOIN unnest(CAST(:firsts AS text[]), CAST(:seconds AS text[])) AS p(a, b) "
            "ON s.profile_a = p.a AND s.profile_b = p.b"
        ),
        {"firsts": [p[0] for p in pairs], "seconds": [p[1] for p in pairs]},
    )
    return {(r.profile_a, r.profile_b): (r.state, r.score) for r in rows}


async def decide(
    *,
    session: AsyncSession,
    pair: tuple[str, str],
    state: str,
    score: float,
    reasons: dict[str, float],
    decided_by: str,
) -> dict[str, Any]:
    """Record an operator's decision on a pair (dismissed or merged), whether or not the queue held it."""
    inserted = postgresql.insert(suspects).values(
        profile_a=pair[0],
        profile_b=pair[1],
        score=score,
        reasons=reasons,
        state=state,
        decided_by=decided_by,
    )
    row = (
        await session.execute(
            inserted.on_conflict_do_update(
                index_elements=[suspects.c.profile_a, suspects.c.profile_b],
                set_={"state": state, "decided_by": decided_by, "updated_at": sa.func.now()},
            ).returning(suspects)
        )
    ).one()
    return {
        "profile_ids": [row.profile_a, row.profile_b],
        "score": row.score,
        "reasons": row.reasons,
        "state": row.state,
        "updated_at": row.updated_at.isoformat(),
    }


async def active_candidates(
    *, session: AsyncSession, profile_ids: Sequence[str]
) -> dict[str, dict[str, Any]]:
    """Return the typed common traits of these profiles that are live."""
    rows = await session.execute(
        sa.select(profiles.c.id, _TRAIT_SUBSET).where(
            profiles.c.id.in_(list(profile_ids)), profiles.c.status == "active"
        )
    )
    return {row.id: _traits_of(row) for row in rows}


async def scan_jobs(*, session: AsyncSession) -> tuple[dict[str, Any] | None, str | None]:
    """Return the last scan that finished (job id, finished at) and the id of a scan queued or running."""
    finished = (
        await session.execute(
            sa.select(jobs_table.c.id, jobs_table.c.finished_at)
            .where(jobs_table.c.kind == SCAN_JOB, jobs_table.c.state == "succeeded")
            .order_by(jobs_table.c.finished_at.desc())
            .limit(1)
        )
    ).first()
    running = await session.scalar(
        sa.select(jobs_table.c.id)
        .where(jobs_table.c.kind == SCAN_JOB, jobs_table.c.state.in_(("queued", "running")))
        .order_by(jobs_table.c.created_at)
        .limit(1)
    )
    last = (
        None if finished is None else {"job_id": finished.id, "finished_at": finished.finished_at.isoformat()}
    )
    return last, running


async def serialise_scan_requests(*, session: AsyncSession) -> None:
    """Hold, until the transaction ends, the lock that lets one request at a time start a scan."""
    await session.execute(sa.text("SELECT pg_advisory_xact_lock(hashtextextended('duplicate_scan', 0))"))
