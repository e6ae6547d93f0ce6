"""The built-in models run over every customer as jobs: RFM, lifecycle, clusters, CLV and churn.

A run is one job (kind `model_run`, the model's name and the instant it scores at in its
params), never two of one model queued or running at once. It goes through the profile copy in
ranges of profile ids, each step one short transaction:

- `extract` (RFM, clusters, CLV): each customer's order features, computed from the copy's order
  aggregates, kept in `model_features`;
- `fit`, one step: RFM's quintile thresholds are the exact order statistics of the whole base,
  found by one set-based `percentile_disc`; k-means and BG/NBD + Gamma-Gamma are fitted on a
  fixed pseudo-random sample of at most `sample_size` customers (all of them on a smaller base),
  off the event loop;
- `score`: each customer of a range is scored from the fit, results are written into the model
  documents (only those that change), and the segments that depend on the model (the built-in
  `rfm_*` and `lifecycle_*`, and any other) are recomputed over the range when one changed.

Lifecycle needs no fit: it scores range by range. The run's parameters and summary are kept
once the last range is scored.

Consent purposes (`cdp_common.purposes`): a customer excluded from `profiling_segmentation` is not
extracted, fitted on or scored, and loses any result an earlier run gave them; one excluded from
`analytics` is scored but left out of the run's summary (the counts, sizes and means it reports).
"""

from __future__ import annotations

import asyncio
import logging
from collections import Counter
from datetime import datetime
from typing import Any

import numpy as np
from cdp_common.jobs import Job, Step, submit_job
from cdp_common.purposes import ANALYTICS
from numpy.typing import NDArray
from sqlalchemy.ext.asyncio import AsyncSession

from cdp_segment import store
from cdp_segment.batch import recompute_segments
from cdp_segment.domain import clusters as clustering
from cdp_segment.domain import clv as value_model
from cdp_segment.domain.lifecycle import (
    FIRST_SEEN,
    LAST_ORDER_DATE,
    NET_REVENUE,
    ORDERS,
    ORDERS_COUNT,
    lifecycle_model,
    recent_orders_spec,
)
from cdp_segment.domain.rfm import named_segment, quintile_positions, score_by_thresholds
from cdp_segment.domain.rules import parse_instant
from cdp_segment.handlers import SegmentContext
from cdp_segment.store import builds
from cdp_segment.store import models as runs
from cdp_segment.store.models import Features, OrderAggregates

logger = logging.getLogger(__name__)
DAY = 86400.0
MODEL_JOB = "model_run"
MODEL_NAMES = ("rfm", "lifecycle", "clusters", "clv")
FITTED = frozenset({"rfm", "clusters", "clv"})
# Where each model's result sits in a profile's model document.
RESULT_KEYS = {"clusters": "cluster"}
CLV_MINIMUM = 20


def result_key(name: str) -> str:
    """Return the key of a model's result in the model documents."""
    return RESULT_KEYS.get(name, name)


async def submit_model_run(*, session: AsyncSession, name: str, at: datetime) -> tuple[dict[str, Any], bool]:
    """Queue a run of a model at an instant unless one is queued or running; return its job and
    whether it is a new one."""
    await runs.lock_model(session=session, model=name)
    running = await runs.open_model_job(session=session, kind=MODEL_JOB, model=name)
    if running is not None:
        return running, False
    job = await submit_job(session=session, kind=MODEL_JOB, params={"model": name, "at": at.isoformat()})
    return job, True


def order_features(row: OrderAggregates, now: datetime) -> Features | None:
    """Return a customer's order features at an instant, or None for someone who never ordered."""
    last = parse_instant(row.last_order)
    if row.orders is None or row.orders < 1 or last is None:
        return None
    # Profile keeps no first-order time; the first event seen stands in for it.
    first = min(parse_instant(row.first_seen) or last, last)
    return Features(
        profile_id=row.profile_id,
        recency_days=max((now - last).total_seconds() / DAY, 0.0),
        orders=int(row.orders),
        revenue=row.revenue if row.revenue is not None else 0.0,
        tenure_days=max((now - first).total_seconds() / DAY, 0.0),
        span_days=max((last - first).total_seconds() / DAY, 0.0),
    )


def _cluster_matrix(rows: list[Features]) -> NDArray[np.float64]:
    return np.array(
        [[c.recency_days, c.orders, c.revenue, c.revenue / c.orders, c.tenure_days] for c in rows],
        dtype=np.float64,
    ).reshape(-1, len(clustering.FEATURES))


def _customers(rows: list[Features]) -> value_model.Customers:
    return value_model.Customers(
        frequency=np.array([c.orders - 1 for c in rows], dtype=np.float64),
        recency=np.array([c.span_days for c in rows], dtype=np.float64),
        age=np.array([max(c.tenure_days, c.span_days) for c in rows], dtype=np.float64),
        monetary=np.array([c.revenue / c.orders for c in rows], dtype=np.float64),
    )


class ModelRun:
    """The job that runs one model over the whole base in bounded steps (kind `model_run`)."""

    def __init__(
        self,
        *,
        context: SegmentContext,
        cluster_count: int = 4,
        clv_horizon_days: int = 365,
        batch_size: int = 20_000,
        sample_size: int = 10_000,
    ) -> None:
        self._context = context
        self._cluster_count = cluster_count
        self._clv_horizon_days = clv_horizon_days
        self._batch_size = batch_size
        self._sample_size = sample_size

    async def plan(self, *, session: AsyncSession, job: Job) -> int | None:
        """Return the profiles the run passes over: twice (extract, score) for a fitted model."""
        passes = 2 if job.params["model"] in FITTED else 1
        return passes * await builds.count_profiles(session=session)

    async def step(self, *, session: AsyncSession, job: Job) -> Step:
        """Extract, fit or score one range, as the cursor says."""
        name = str(job.params["model"])
        at = runs.parse_at(job.params["at"])
        cursor: dict[str, Any] = job.cursor or {
            "phase": "extract" if name in FITTED else "score",
            "after": None,
            "changed": 0,
            "segments": {},
            "totals": {},
        }
        if cursor["phase"] == "extract":
            return await self._extract(session, name, at, cursor, job)
        if cursor["phase"] == "fit":
            fit, parameters = await self._fit(session, name)
            moved = {**cursor, "phase": "score", "after": None, "fit": fit, "parameters": parameters}
            return Step(cursor=moved, advanced=0)
        return await self._score(session, name, at, cursor, job)

    async def _extract(
        self, session: AsyncSession, name: str, at: datetime, cursor: dict[str, Any], job: Job
    ) -> Step:
        after = cursor["after"]
        until, looked_at = await builds.profile_range(session=session, after=after, size=self._batch_size)
        aggregates = await runs.read_order_aggregates(
            session=session,
            after=after,
            until=until,
            count_key=ORDERS,
            revenue_key=NET_REVENUE,
            last_key=LAST_ORDER_DATE,
            first_key=FIRST_SEEN,
            policy=self._context.purposes,
        )
        features = [f for f in (order_features(row, at) for row in aggregates) if f is not None]
        await runs.replace_features(session=session, model=name, after=after, until=until, rows=features)
        moved = {**cursor, "after": until} if until is not None else {**cursor, "phase": "fit", "after": None}
        return Step(cursor=moved, advanced=looked_at, total=max(job.total or 0, job.done + looked_at))

    async def _fit(self, session: AsyncSession, name: str) -> tuple[dict[str, Any], dict[str, Any]]:
        """Fit a model on what the extraction kept; return the fit and the run's parameters."""
        count = await runs.count_features(session=session, model=name)
        if name == "rfm":
            thresholds = (
                await runs.order_statistics(
                    session=session, model=name, positions=quintile_positions(count), count=count
                )
                if count
                else None
            )
            parameters = {
                "scores": "quintiles by cumulative share; FM = round half up of (F + M) / 2",
                "customers": count,
                "fitted_on": "the whole base: the quintile thresholds are its exact order statistics",
                "thresholds": thresholds and {**thresholds, "recency": [-v for v in thresholds["recency"]]},
            }
            return {"thresholds": thresholds}, parameters
        if name == "clusters":
            parameters = {
                "k": self._cluster_count,
                "features": list(clustering.FEATURES),
                "algorithm": "k-means (scikit-learn), log1p and z-scores",
                "customers": count,
            }
            if count < self._cluster_count:
                return {"model": None}, parameters
            sample = await runs.sample_features(session=session, model=name, size=self._sample_size)
            matrix = _cluster_matrix(sample)
            model, _, _ = await asyncio.to_thread(clustering.fit_cluster_model, matrix, self._cluster_count)
            parameters["fitted_on"] = len(sample)
            return {"model": vars(model)}, parameters
        parameters = {
            "horizon_days": self._clv_horizon_days,
            "model": "BG/NBD + Gamma-Gamma, maximum likelihood (scipy)",
            "customers": count,
        }
        if count < CLV_MINIMUM:
            return {"bgnbd": None}, parameters
        sample = await runs.sample_features(session=session, model=name, size=self._sample_size)
        data = _customers(sample)

        def fit() -> tuple[value_model.BgNbd, value_model.GammaGamma]:
            return value_model.fit_bgnbd(data), value_model.fit_gamma_gamma(data)

        bgnbd, gamma_gamma = await asyncio.to_thread(fit)
        parameters.update({"bgnbd": vars(bgnbd), "gamma_gamma": vars(gamma_gamma), "fitted_on": len(sample)})
        return {"bgnbd": vars(bgnbd), "gamma_gamma": vars(gamma_gamma)}, parameters

    async def _score(
        self, session: AsyncSession, name: str, at: datetime, cursor: dict[str, Any], job: Job
    ) -> Step:
        after = cursor["after"]
        until, looked_at = await builds.profile_range(session=session, after=after, size=self._batch_size)
        key = result_key(name)
        totals: dict[str, Any] = dict(cursor["totals"])
        # Scored, but not counted in the run's summary.
        uncounted = await runs.withheld_in_range(
            session=session, after=after, until=until, policy=self._context.purposes, purpose=ANALYTICS
        )
        if name == "lifecycle":
            results = await self._lifecycle(session, at, after, until, totals, uncounted)
        else:
            rows = await runs.read_features(session=session, model=name, after=after, until=until)
            results = self._results(name, cursor["fit"], rows, totals, uncounted)
            await runs.delete_features(session=session, model=name, after=after, until=until)
        # Whoever holds a result and was not scored now (no longer a customer, or excluded from
        # profiling) loses it.
        for profile_id in await runs.profiles_holding(session=session, name=key, after=after, until=until):
            results.setdefault(profile_id, None)
        changed = await runs.write_results(session=session, name=key, results=results)
        report: dict[str, dict[str, int]] = dict(cursor["segments"])
        if changed:
            # Memberships follow the model documents; a range where none changed is current.
            catalog = await self._context.catalog.current(session)
            found = await recompute_segments(
                session=session,
                catalog=catalog,
                keys=catalog.affected_by({f"model:{key}"}),
                now=at,
                topic=self._context.segments_topic,
                trigger=f"model:{name}",
                after=after,
                until=until,
            )
            for segment, moves in found.items():
                held = report.get(segment, {"entered": 0, "exited": 0})
                report[segment] = {kind: held[kind] + moves[kind] for kind in ("entered", "exited")}
        moved = {
            **cursor,
            "after": until,
            "changed": cursor["changed"] + changed,
            "segments": report,
            "totals": totals,
        }
        done = job.done + looked_at
        if until is not None:
            return Step(cursor=moved, advanced=looked_at, total=max(job.total or 0, done))
        parameters = cursor.get("parameters") or self._lifecycle_parameters()
        summary = self._summary(name, cursor.get("fit") or {}, totals)
        await store.save_model_run(
            session=session, model=name, ran_at=at, parameters=parameters, summary=summary
        )
        result = {
            "model": name,
            "ran_at": at.isoformat(),
            "parameters": parameters,
            "summary": summary,
            "profiles_changed": moved["changed"],
            "segments": report,
        }
        return Step(cursor=moved, advanced=looked_at, finished=True, total=done, result=result)

    def _lifecycle_parameters(self) -> dict[str, Any]:
        thresholds = self._context.lifecycle
        return {
            "new_days": thresholds.new_days,
            "active_days": thresholds.active_days,
            "churn_days": thresholds.churn_days,
        }

    async def _lifecycle(
        self,
        session: AsyncSession,
        at: datetime,
        after: str | None,
        until: str | None,
        totals: dict[str, Any],
        uncounted: set[str],
    ) -> dict[str, Any]:
        thresholds = self._context.lifecycle
        # Only someone who ordered has a stage, and only someone with a stage can lose it.
        rows = await runs.read_lifecycle_inputs(
            session=session,
            after=after,
            until=until,
            keys=(ORDERS_COUNT.key, recent_orders_spec(thresholds.new_days).key, LAST_ORDER_DATE),
            last_key=LAST_ORDER_DATE,
            policy=self._context.purposes,
        )
        results = {r.profile_id: lifecycle_model(r.computed, r.previous, at, thresholds) for r in rows}
        stages = Counter(totals.get("stages", {}))
        stages.update(v["stage"] for p, v in results.items() if v and p not in uncounted)
        totals["stages"] = dict(stages)
        return results

    def _results(
        self,
        name: str,
        fit: dict[str, Any],
        rows: list[Features],
        totals: dict[str, Any],
        uncounted: set[str],
    ) -> dict[str, Any]:
        """Score a range's customers from the fit; add those not in `uncounted` to the run's totals."""
        counted = np.array([c.profile_id not in uncounted for c in rows], dtype=bool)
        results: dict[str, Any] = {}
        if name == "rfm":
            thresholds = fit["thresholds"]
            named = Counter(totals.get("segments", {}))
            for c in rows:
                r = score_by_thresholds(-c.recency_days, thresholds["recency"])
                f = score_by_thresholds(c.orders, thresholds["frequency"])
                m = score_by_thresholds(c.revenue, thresholds["monetary"])
                segment = named_segment(r, f, m)
                results[c.profile_id] = {"r": r, "f": f, "m": m, "score": f"{r}{f}{m}", "segment": segment}
                if c.profile_id not in uncounted:
                    named[segment] += 1
            totals["segments"] = dict(named)
            return results
        if name == "clusters":
            if fit["model"] is None or not rows:
                return {c.profile_id: None for c in rows}
            model = clustering.ClusterModel(**fit["model"])
            matrix = _cluster_matrix(rows)
            labels = model.assign(matrix)
            k = len(model.centers)
            for c, label in zip(rows, labels, strict=True):
                results[c.profile_id] = {"id": int(label), "description": model.descriptions[int(label)]}
            sums = np.zeros((k, matrix.shape[1]))
            np.add.at(sums, labels[counted], matrix[counted])
            held_sizes = np.asarray(totals.get("sizes") or [0] * k, dtype=np.int64)
            held_sums = np.asarray(totals.get("sums") or np.zeros((k, matrix.shape[1])), dtype=np.float64)
            totals["sizes"] = [int(v) for v in held_sizes + np.bincount(labels[counted], minlength=k)]
            totals["sums"] = (held_sums + sums).tolist()
            return results
        if fit["bgnbd"] is None or not rows:
            return {c.profile_id: None for c in rows}
        bgnbd = value_model.BgNbd(**fit["bgnbd"])
        gamma_gamma = value_model.GammaGamma(**fit["gamma_gamma"])
        data = _customers(rows)
        alive = bgnbd.probability_alive(data)
        purchases = bgnbd.expected_purchases(data, self._clv_horizon_days)
        value = purchases * gamma_gamma.expected_order_value(data)
        for c, p_alive, n, v in zip(rows, alive, purchases, value, strict=True):
            results[c.profile_id] = {
                "value": round(float(v), 2),
                "expected_orders": round(float(n), 3),
                "churn_probability": round(float(1 - p_alive), 4),
            }
        totals["customers"] = totals.get("customers", 0) + int(counted.sum())
        totals["value"] = totals.get("value", 0.0) + float(value[counted].sum())
        totals["alive"] = totals.get("alive", 0.0) + float(alive[counted].sum())
        return results

    def _summary(self, name: str, fit: dict[str, Any], totals: dict[str, Any]) -> dict[str, Any]:
        if name == "rfm":
            return {"segments": dict(sorted(totals.get("segments", {}).items()))}
        if name == "lifecycle":
            return {"stages": dict(sorted(totals.get("stages", {}).items()))}
        if name == "clusters":
            if fit.get("model") is None:
                return {"clusters": [], "note": "fewer customers than clusters"}
            sizes, sums = totals.get("sizes", []), totals.get("sums", [])
            return {
                "clusters": [
                    {
                        "id": n,
                        "size": size,
                        "means": {
                            feature: round(total / size, 2) if size else None
                            for feature, total in zip(clustering.FEATURES, sums[n], strict=True)
                        },
                        "description": fit["model"]["descriptions"][n],
                    }
                    for n, size in enumerate(sizes)
                ]
            }
        if fit.get("bgnbd") is None:
            return {"note": f"fewer than {CLV_MINIMUM} customers: not fitted"}
        customers = int(totals.get("customers", 0))
        return {
            "customers": customers,
            "mean_value": round(totals["value"] / customers, 2) if customers else None,
            "mean_churn_probability": round(1 - totals["alive"] / customers, 4) if customers else None,
        }
