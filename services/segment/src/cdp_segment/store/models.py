"""Queries of the model runs: reading order aggregates and lifecycle inputs by range of profile ids,
the features a run keeps between its fit and its scoring, the fit's set-based aggregates, writing
results into the model documents, and the jobs that run the models.

Every read and write here is bounded by a range of profile ids (a job's step), except the fit's
aggregates, which are one read-only statement over the features of one run. Profiles excluded
from `profiling_segmentation` are never read as model inputs.
"""

from __future__ import annotations

import json
from collections.abc import Sequence
from dataclasses import dataclass
from datetime import datetime
from typing import Any

import sqlalchemy as sa
from cdp_common.jobs import job_body, jobs_table
from cdp_common.purposes import PurposePolicy
from sqlalchemy.ext.asyncio import AsyncSession

from cdp_segment.store import metadata, profiles
from cdp_segment.store.purposes import withheld

model_features = sa.Table(
    "model_features",
    metadata,
    sa.Column("model", sa.Text, primary_key=True),
    sa.Column("profile_id", sa.Text, primary_key=True),
    sa.Column("recency_days", sa.Float, nullable=False),
    sa.Column("orders", sa.BigInteger, nullable=False),
    sa.Column("revenue", sa.Float, nullable=False),
    sa.Column("tenure_days", sa.Float, nullable=False),
    sa.Column("span_days", sa.Float, nullable=False),
)

_LIVE = sa.and_(profiles.c.merged_into.is_(None), profiles.c.version > 0)


def _in_range(column: Any, after: str | None, until: str | None) -> Any:
    condition = column > (after or "")
    return condition if until is None else sa.and_(condition, column <= until)


def _number(key: str) -> Any:
    value = profiles.c.computed[key]
    return sa.case((sa.func.jsonb_typeof(value) == "number", sa.cast(value.astext, sa.Float)), else_=None)


def _string(key: str) -> Any:
    value = profiles.c.computed[key]
    return sa.case((sa.func.jsonb_typeof(value) == "string", value.astext), else_=None)


@dataclass(frozen=True)
class OrderAggregates:
    """What profile publishes about one profile's orders, as the copy holds it."""

    profile_id: str
    orders: float | None
    revenue: float | None
    last_order: str | None
    first_seen: str | None


async def read_order_aggregates(
    *,
    session: AsyncSession,
    after: str | None,
    until: str | None,
    count_key: str,
    revenue_key: str,
    last_key: str,
    first_key: str,
    policy: PurposePolicy,
) -> list[OrderAggregates]:
    """Return the order aggregates of the live profiles in (after, until] that may have ordered and
    may be profiled."""
    query = (
        sa.select(
            profiles.c.profile_id,
            _number(count_key),
            _number(revenue_key),
            _string(last_key),
            _string(first_key),
        )
        .where(
            _LIVE,
            _in_range(profiles.c.profile_id, after, until),
            sa.not_(withheld(policy)),
            sa.func.jsonb_typeof(profiles.c.computed[count_key]) == "number",
            sa.func.jsonb_typeof(profiles.c.computed[last_key]) == "string",
        )
        .order_by(profiles.c.profile_id)
    )
    return [OrderAggregates(*row) for row in (await session.execute(query)).all()]


@dataclass(frozen=True)
class LifecycleInputs:
    """What a profile's lifecycle stage is computed from, and the stage it has."""

    profile_id: str
    computed: dict[str, Any]
    previous: dict[str, Any] | None


async def read_lifecycle_inputs(
    *,
    session: AsyncSession,
    after: str | None,
    until: str | None,
    keys: Sequence[str],
    last_key: str,
    policy: PurposePolicy,
) -> list[LifecycleInputs]:
    """Return the inputs of the live profiles in (after, until] that ordered or have a stage and may
    be profiled."""
    values = [profiles.c.computed[key].label(f"k{n}") for n, key in enumerate(keys)]
    query = (
        sa.select(profiles.c.profile_id, profiles.c.model["lifecycle"], *values)
        .where(
            _LIVE,
            _in_range(profiles.c.profile_id, after, until),
            sa.not_(withheld(policy)),
            sa.or_(profiles.c.computed.has_key(last_key), profiles.c.model.has_key("lifecycle")),
        )
        .order_by(profiles.c.profile_id)
    )
    found = []
    for row in (await session.execute(query)).all():
        computed = {key: value for key, value in zip(keys, row[2:], strict=True) if value is not None}
        found.append(LifecycleInputs(profile_id=row[0], computed=computed, previous=row[1]))
    return found


@dataclass(frozen=True)
class Features:
    """One customer's order features, in days and the reporting currency."""

    profile_id: str
    recency_days: float
    orders: int
    revenue: float
    tenure_days: float
    span_days: float


async def replace_features(
    *, session: AsyncSession, model: str, after: str | None, until: str | None, rows: Sequence[Features]
) -> None:
    """Keep a range's features for a run of a model, in place of any an earlier run left there."""
    await session.execute(
        model_features.delete().where(
            model_features.c.model == model, _in_range(model_features.c.profile_id, after, until)
        )
    )
    if not rows:
        return
    await session.execute(
        sa.text(
            """
            INSERT INTO model_features (model, profile_id, recency_days, orders, revenue, tenure_days, span_days)
            SELECT :model, * FROM unnest(CAST(:ids AS text[]), CAST(:recency AS float8[]),
                   CAST(:orders AS bigint[]), CAST(:revenue AS float8[]), CAST(:tenure AS float8[]),
                   CAST(:span AS float8[]))
            """
        ),
        {
            "model": model,
            "ids": [r.profile_id for r in rows],
            "recency": [r.recency_days for r in rows],
            "orders": [r.orders for r in rows],
            "revenue": [r.revenue for r in rows],
            "tenure": [r.tenure_days for r in rows],
            "span": [r.span_days for r in rows],
        },
    )


def _features(row: Any) -> Features:
    return Features(
        profile_id=row.profile_id,
        recency_days=row.recency_days,
        orders=row.orders,
        revenue=row.revenue,
        tenure_days=row.tenure_days,
        span_days=row.span_days,
    )


async def read_features(
    *, session: AsyncSession, model: str, after: str | None, until: str | None
) -> list[Features]:
    """Return a range's features of a run, by profile id."""
    rows = await session.execute(
        sa.select(model_features)
        .where(model_features.c.model == model, _in_range(model_features.c.profile_id, after, until))
        .order_by(model_features.c.profile_id)
    )
    return [_features(r) for r in rows]


async def delete_features(*, session: AsyncSession, model: str, after: str | None, until: str | None) -> None:
    """Drop a range's features once its results are written."""
    await session.execute(
        model_features.delete().where(
            model_features.c.model == model, _in_range(model_features.c.profile_id, after, until)
        )
    )


async def count_features(*, session: AsyncSession, model: str) -> int:
    """Return how many customers a run extracted."""
    query = sa.select(sa.func.count()).select_from(model_features).where(model_features.c.model == model)
    return int((await session.execute(query)).scalar_one())


async def sample_features(*, session: AsyncSession, model: str, size: int) -> list[Features]:
    """Return a fixed pseudo-random sample of a run's customers (all of them up to `size`), by profile id."""
    sample = (
        sa.select(model_features)
        .where(model_features.c.model == model)
        .order_by(sa.func.md5(model_features.c.profile_id))
        .limit(size)
        .subquery()
    )
    rows = await session.execute(sa.select(sample).order_by(sample.c.profile_id))
    return [_features(r) for r in rows]


async def order_statistics(
    *, session: AsyncSession, model: str, positions: Sequence[int], count: int
) -> dict[str, list[float]]:
    """Return, for minus recency, orders and revenue, the values at these 1-based sorted positions."""
    # percentile_disc(f) takes the value at position ceil(f * count): half a position early lands on it
    # whatever the rounding of f.
    fractions = [(position - 0.5) / count for position in positions]
    columns = {
        "recency": -model_features.c.recency_days,
        "frequency": model_features.c.orders,
        "monetary": model_features.c.revenue,
    }
    query = sa.select(
        *(
            sa.func.percentile_disc(sa.cast(fractions, sa.ARRAY(sa.Float))).within_group(column).label(name)
            for name, column in columns.items()
        )
    ).where(model_features.c.model == model)
    row = (await session.execute(query)).one()
    return {name: [float(v) for v in getattr(row, name)] for name in columns}


async def profiles_holding(
    *, session: AsyncSession, name: str, after: str | None, until: str | None
) -> list[str]:
    """Return the live profiles in (after, until] whose model document holds a result of `name`."""
    rows = await session.execute(
        sa.select(profiles.c.profile_id).where(
            _LIVE, _in_range(profiles.c.profile_id, after, until), profiles.c.model.has_key(name)
        )
    )
    return list(rows.scalars())


async def withheld_in_range(
    *, session: AsyncSession, after: str | None, until: str | None, policy: PurposePolicy, purpose: str
) -> set[str]:
    """Return the live profiles in (after, until] excluded from a purpose."""
    rows = await session.execute(
        sa.select(profiles.c.profile_id).where(
            _LIVE, _in_range(profiles.c.profile_id, after, until), withheld(policy, purpose)
        )
    )
    return set(rows.scalars())


# Rows are locked in profile-id order first, as the consumer's writes lock them, so the two never
# deadlock; only rows whose result changes are locked and written.
_LOCK_CHANGED = sa.text(
    """
    SELECT p.profile_id
      FROM known_profiles AS p
      JOIN unnest(CAST(:ids AS text[]), CAST(:docs AS text[])) AS u(id, doc) ON p.profile_id = u.id
     WHERE p.model -> CAST(:name AS text) IS DISTINCT FROM CAST(u.doc AS jsonb)
     ORDER BY p.profile_id
       FOR UPDATE OF p
    """
)
_WRITE_CHANGED = sa.text(
    """
    UPDATE known_profiles AS p
       SET model = CASE WHEN u.doc IS NULL THEN p.model - CAST(:name AS text)
                        ELSE jsonb_set(p.model, ARRAY[CAST(:name AS text)], CAST(u.doc AS jsonb)) END,
           updated_at = now()
      FROM unnest(CAST(:ids AS text[]), CAST(:docs AS text[])) AS u(id, doc)
     WHERE p.profile_id = u.id AND p.profile_id = ANY(CAST(:locked AS text[]))
       AND p.model -> CAST(:name AS text) IS DISTINCT FROM CAST(u.doc AS jsonb)
    """
)


async def write_results(*, session: AsyncSession, name: str, results: dict[str, Any | None]) -> int:
    """Set (or remove, for None) one model's result in each profile's model document; return rows changed."""
    if not results:
        return 0
    ids = list(results)
    params = {
        "name": name,
        "ids": ids,
        "docs": [None if results[i] is None else json.dumps(results[i]) for i in ids],
    }
    locked = list((await session.execute(_LOCK_CHANGED, params)).scalars())
    if not locked:
        return 0
    changed = await session.execute(_WRITE_CHANGED, {**params, "locked": locked})
    return int(getattr(changed, "rowcount", 0) or 0)


# --- the jobs that run models ------------------------------------------------------------------


def _model_jobs(kind: str, model: str) -> Any:
    return sa.and_(jobs_table.c.kind == kind, jobs_table.c.params["model"].astext == model)


async def lock_model(*, session: AsyncSession, model: str) -> None:
    """Serialise, until the transaction ends, the submissions of runs of one model."""
    await session.execute(
        sa.text("SELECT pg_advisory_xact_lock(hashtextextended(:key, 0))"),
        {"key": f"cdp-segment-model:{model}"},
    )


async def open_model_job(*, session: AsyncSession, kind: str, model: str) -> dict[str, Any] | None:
    """Return the queued or running job of a model, if any."""
    row = (
        await session.execute(
            sa.select(jobs_table)
            .where(_model_jobs(kind, model), jobs_table.c.state.in_(("queued", "running")))
            .order_by(jobs_table.c.created_at.desc())
            .limit(1)
        )
    ).first()
    return None if row is None else job_body(row)


async def latest_model_job(*, session: AsyncSession, kind: str, model: str) -> dict[str, Any] | None:
    """Return the newest job of a model, whatever its state."""
    row = (
        await session.execute(
            sa.select(jobs_table)
            .where(_model_jobs(kind, model))
            .order_by(jobs_table.c.created_at.desc(), jobs_table.c.id.desc())
            .limit(1)
        )
    ).first()
    return None if row is None else job_body(row)


async def open_job_of_kind(*, session: AsyncSession, kind: str) -> dict[str, Any] | None:
    """Return a queued or running job of a kind, if any."""
    row = (
        await session.execute(
            sa.select(jobs_table)
            .where(jobs_table.c.kind == kind, jobs_table.c.state.in_(("queued", "running")))
            .limit(1)
        )
    ).first()
    return None if row is None else job_body(row)


def parse_at(value: str) -> datetime:
    """Return the instant a job runs at, from its params."""
    return datetime.fromisoformat(value)
