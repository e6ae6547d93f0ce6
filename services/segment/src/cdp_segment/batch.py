"""Batch membership: a segment recomputed over every profile in one SQL statement.

The rule is compiled to a predicate (`cdp_segment.compiler`); a read-only statement
finds who enters and who leaves against the stored memberships (PostgreSQL may scan
the profiles in parallel, which it never does for a statement that writes), and one
statement with data-modifying CTEs applies only that difference: memberships, history
and the events in the outbox. A recompute of a segment whose membership is current
writes nothing. A member excluded from `profiling_segmentation` leaves with consent as the reason.
"""

from __future__ import annotations

import json
from datetime import datetime
from typing import Any

import sqlalchemy as sa
from cdp_common.db import outbox_table
from cdp_common.events import SegmentEntered, SegmentExited
from cdp_common.outbox import lock_outbox_writes
from cdp_common.purposes import PROFILING, PurposePolicy
from sqlalchemy.dialects.postgresql import ARRAY, JSONB
from sqlalchemy.ext.asyncio import AsyncSession

from cdp_segment import store
from cdp_segment.compiler import members_query
from cdp_segment.domain.membership import Catalog
from cdp_segment.domain.rules import parse_rule
from cdp_segment.store.purposes import withheld

# Each leaver costs one index probe (the lateral subquery, kept apart by its LIMIT, runs once
# per leaver), whatever the planner guesses of the sizes: a plain join could be planned as a
# scan of every listed change for each membership of the segment, quadratic in a large one.
_LEAVE = sa.text(
    """
    DELETE FROM memberships WHERE ctid = ANY (ARRAY(
      SELECT m.ctid FROM unnest(CAST(:profile_ids AS text[])) AS l(profile_id)
      CROSS JOIN LATERAL (
        SELECT ctid FROM memberships WHERE segment_id = :segment_id AND profile_id = l.profile_id LIMIT 1
      ) AS m
    ))
    """
)


async def recompute_segment(
    *,
    session: AsyncSession,
    segment: store.SegmentRow,
    now: datetime,
    topic: str,
    trigger: str,
    everyone_leaves: bool = False,
    after: str | None = None,
    until: str | None = None,
    policy: PurposePolicy | None = None,
) -> dict[str, int]:
    """Bring one segment's memberships in line with its rule; return the changes.

    With `after` and `until`, only the profiles whose ids lie in (after, until] are looked at
    (a job's step); without them, every profile. `policy` says who is excluded from profiling
    (legitimate interest for every purpose when not given).
    """
    policy = policy or PurposePolicy()
    rule = parse_rule(segment.rule).root
    members = store.memberships
    query = members_query(rule, now, policy=policy)
    if everyone_leaves:
        query = query.where(sa.false())
    held_query = sa.select(members.c.profile_id).where(members.c.segment_id == segment.id)
    if after is not None:
        query = query.where(store.profiles.c.profile_id > after)
        held_query = held_query.where(members.c.profile_id > after)
    if until is not None:
        query = query.where(store.profiles.c.profile_id <= until)
        held_query = held_query.where(members.c.profile_id <= until)
    # Taken before the difference is read, so no writer changes the memberships in between.
    await lock_outbox_writes(session=session)
    target = query.subquery("target")
    held = held_query.subquery("held")
    # A read alone (no write in the statement), so PostgreSQL may scan the profiles in parallel.
    difference = (
        sa.select(sa.func.coalesce(target.c.profile_id, held.c.profile_id), held.c.profile_id.is_(None))
        .select_from(target.outerjoin(held, held.c.profile_id == target.c.profile_id, full=True))
        .where(sa.or_(target.c.profile_id.is_(None), held.c.profile_id.is_(None)))
    )
    profile_ids: list[str] = []
    kinds: list[str] = []
    for profile_id, entering in await session.execute(difference):
        profile_ids.append(profile_id)
        kinds.append("entered" if entering else "exited")
    result = {"entered": kinds.count("entered"), "exited": kinds.count("exited")}
    if not profile_ids:
        return result
    leavers = [p for p, kind in zip(profile_ids, kinds, strict=True) if kind == "exited"]
    withdrawn: set[str] = set()
    if leavers:
        await session.execute(_LEAVE, {"segment_id": segment.id, "profile_ids": leavers})
    if leavers and not everyone_leaves:
        listed_leavers = sa.cast(sa.literal(leavers, ARRAY(sa.Text)), ARRAY(sa.Text))
        found = await session.execute(
            sa.select(store.profiles.c.profile_id).where(
                store.profiles.c.profile_id == sa.any_(listed_leavers), withheld(policy)
            )
        )
        withdrawn = set(found.scalars())
    recomputed = {"cause": {"type": "recompute", "trigger": trigger}, "conditions": {}}
    by_consent = {
        "cause": {"type": "recompute", "trigger": trigger, "why": "consent"},
        "conditions": {"type": "consent_withheld", "purpose": PROFILING, "result": False},
    }
    consent = [p in withdrawn for p in profile_ids]
    at = sa.literal(now, sa.DateTime(timezone=True))
    event_id = sa.cast(sa.func.gen_random_uuid(), sa.Text)
    listed = (
        sa.func.unnest(
            sa.cast(sa.literal(profile_ids, ARRAY(sa.Text)), ARRAY(sa.Text)),
            sa.cast(sa.literal(kinds, ARRAY(sa.Text)), ARRAY(sa.Text)),
            sa.cast(sa.literal(consent, ARRAY(sa.Boolean)), ARRAY(sa.Boolean)),
        )
        .table_valued("profile_id", "change", "consent")
        .render_derived(name="listed")
    )
    changes = sa.select(
        listed.c.profile_id,
        listed.c.change,
        sa.case(
            (listed.c.consent, sa.cast(sa.literal(json.dumps(by_consent)), JSONB)),
            else_=sa.cast(sa.literal(json.dumps(recomputed)), JSONB),
        ).label("reason"),
        event_id.label("event_id"),
    ).cte("changes")
    entered = (
        sa.insert(members)
        .from_select(
            ["segment_id", "profile_id", "entered_at"],
            sa.select(sa.literal(segment.id), changes.c.profile_id, at).where(changes.c.change == "entered"),
        )
        .cte("entered")
    )
    history = (
        sa.insert(store.membership_history)
        .from_select(
            ["segment_id", "profile_id", "change", "segment_version", "at", "event_id", "reason"],
            sa.select(
                sa.literal(segment.id),
                changes.c.profile_id,
                changes.c.change,
                sa.literal(segment.version),
                at,
                changes.c.event_id,
                changes.c.reason,
            ),
        )
        .returning(store.membership_history.c.id)
        .cte("history")
    )
    stamp = sa.literal(now.isoformat())
    envelope = sa.func.jsonb_build_object(
        "specversion", "1.0",
        "id", changes.c.event_id,
        "type", sa.case(
            (changes.c.change == "entered", SegmentEntered.EVENT_TYPE), else_=SegmentExited.EVENT_TYPE
        ),
        "source", "segment",
        "time", stamp,
        "subject", changes.c.profile_id,
        "datacontenttype", "application/json",
        "data", sa.func.jsonb_build_object(
            "profile_id", changes.c.profile_id,
            "segment_key", segment.key,
            "segment_version", segment.version,
            "reason", changes.c.reason,
            "at", stamp,
        ),
    )  # fmt: skip
    outbox = (
        sa.insert(outbox_table)
        .from_select(
            ["topic", "key", "event_id", "payload"],
            sa.select(
                sa.literal(topic),
                changes.c.profile_id,
                changes.c.event_id,
                sa.func.convert_to(sa.cast(envelope, sa.Text), "UTF8"),
            ),
        )
        .returning(outbox_table.c.id)
        .cte("published")
    )
    await session.execute(sa.select(sa.func.count()).select_from(changes).add_cte(entered, history, outbox))
    return result


async def recompute_segments(
    *,
    session: AsyncSession,
    catalog: Catalog,
    keys: set[str],
    now: datetime,
    topic: str,
    trigger: str,
    after: str | None = None,
    until: str | None = None,
) -> dict[str, Any]:
    """Recompute segments and, after them, every segment that refers to one whose membership changed.

    With `after` and `until`, over the profiles whose ids lie in (after, until] (a job's step): a
    rule refers only to the same profile's memberships, so a range evaluated in dependency order
    is right on its own.
    """
    pending = set(keys)
    report: dict[str, Any] = {}
    for definition in catalog.ordered:
        # A segment still waiting for its computed traits is computed by its own job once they are in.
        if definition.key not in pending or not definition.realtime:
            continue
        segment = await store.get_segment(session=session, ref=definition.id)
        if segment is None:
            continue
        changes = await recompute_segment(
            session=session,
            segment=segment,
            now=now,
            topic=topic,
            trigger=trigger,
            after=after,
            until=until,
            policy=catalog.policy,
        )
        report[definition.key] = changes
        if changes["entered"] or changes["exited"]:
            pending |= catalog.by_dependency.get(f"segment:{definition.key}", set())
    return report
