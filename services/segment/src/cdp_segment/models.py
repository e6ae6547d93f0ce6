"""The built-in models run over every customer: RFM, lifecycle, clusters, CLV and churn.

Each run reads the order aggregates from the profile copy, computes (fitting runs in
a worker thread, off the event loop), writes each profile's result into its model
document, keeps the run's parameters and summary, and recomputes in SQL the
segments that depend on the model, so the built-in segments follow.
"""

from __future__ import annotations

import asyncio
import json
import logging
from collections import Counter
from collections.abc import Callable
from datetime import datetime
from typing import Any

import numpy as np
import sqlalchemy as sa
from sqlalchemy.ext.asyncio import AsyncSession, async_sessionmaker

from cdp_segment import store
from cdp_segment.batch import recompute_segments
from cdp_segment.compiler import LIVE_PROFILES
from cdp_segment.domain import clusters as clustering
from cdp_segment.domain import clv as value_model
from cdp_segment.domain.lifecycle import (
    FIRST_SEEN,
    LAST_ORDER_DATE,
    ORDERS_COUNT,
    ORDERS_REVENUE,
    lifecycle_model,
)
from cdp_segment.domain.rfm import named_segment, quintile_scores
from cdp_segment.domain.rules import parse_instant
from cdp_segment.handlers import SegmentContext

logger = logging.getLogger(__name__)
DAY = 86400.0


async def _customers(session: AsyncSession, now: datetime) -> list[dict[str, Any]]:
    """Return every live profile's order aggregates (profiles with at least one order)."""
    rows = await session.execute(
        sa.select(store.profiles.c.profile_id, store.profiles.c.computed, store.profiles.c.model)
        .where(LIVE_PROFILES)
        .order_by(store.profiles.c.profile_id)
    )
    customers = []
    for profile_id, computed, model in rows:
        count = computed.get(ORDERS_COUNT.key)
        last = parse_instant(computed.get(LAST_ORDER_DATE))
        if not isinstance(count, int | float) or isinstance(count, bool) or count < 1 or last is None:
            customers.append({"profile_id": profile_id, "orders": 0, "model": model, "computed": computed})
            continue
        # Profile keeps no first-order time; the first event seen stands in for it.
        first = parse_instant(computed.get(FIRST_SEEN)) or last
        first = min(first, last)
        revenue = computed.get(ORDERS_REVENUE.key)
        revenue = (
            float(revenue) if isinstance(revenue, int | float) and not isinstance(revenue, bool) else 0.0
        )
        customers.append(
            {
                "profile_id": profile_id,
                "orders": int(count),
                "revenue": revenue,
                "recency_days": max((now - last).total_seconds() / DAY, 0.0),
                "tenure_days": max((now - first).total_seconds() / DAY, 0.0),
                "span_days": max((last - first).total_seconds() / DAY, 0.0),
                "model": model,
                "computed": computed,
            }
        )
    return customers


async def _write_results(session: AsyncSession, name: str, results: dict[str, Any | None]) -> int:
    """Set (or remove, for None) one model's result in each profile's model document; return rows changed."""
    ids = list(results)
    documents = [None if results[i] is None else json.dumps(results[i]) for i in ids]
    changed = await session.execute(
        sa.text(
            """
            UPDATE known_profiles AS p
               SET model = CASE WHEN u.doc IS NULL THEN p.model - :name
                                ELSE jsonb_set(p.model, ARRAY[:name], u.doc::jsonb) END,
                   updated_at = now()
              FROM unnest(CAST(:ids AS text[]), CAST(:docs AS text[])) AS u(id, doc)
             WHERE p.profile_id = u.id
               AND p.model -> :name IS DISTINCT FROM u.doc::jsonb
            """
        ),
        {"name": name, "ids": ids, "docs": documents},
    )
    return int(getattr(changed, "rowcount", 0) or 0)


class ModelRunner:
    """Runs the models on demand or from the scheduler; one run at a time per process."""

    def __init__(
        self,
        *,
        session_factory: async_sessionmaker[AsyncSession],
        context: SegmentContext,
        cluster_count: int = 4,
        clv_horizon_days: int = 365,
    ) -> None:
        self._session_factory = session_factory
        self._context = context
        self._cluster_count = cluster_count
        self._clv_horizon_days = clv_horizon_days
        self._lock = asyncio.Lock()
        self._runs: dict[str, Callable[[AsyncSession, datetime], Any]] = {
            "rfm": self._rfm,
            "lifecycle": self._lifecycle,
            "clusters": self._clusters,
            "clv": self._clv,
        }

    async def run(self, name: str, now: datetime | None = None) -> dict[str, Any]:
        """Run one model over every customer and return its summary."""
        at = now or self._context.clock()
        async with self._lock, self._session_factory() as session, session.begin():
            parameters, summary, results = await self._runs[name](session, at)
            model_key = {"clusters": "cluster"}.get(name, name)
            changed = await _write_results(session, model_key, results)
            await store.save_model_run(
                session=session, model=name, ran_at=at, parameters=parameters, summary=summary
            )
            catalog = await self._context.catalog.current(session)
            # Memberships follow the model documents; when no document changed they are
            # current, and recomputing would only hold the outbox lock (and so the real-time
            # path) while every profile is scanned again.
            report = await recompute_segments(
                session=session,
                catalog=catalog,
                keys=catalog.affected_by({f"model:{model_key}"}) if changed else set(),
                now=at,
                topic=self._context.segments_topic,
                trigger=f"model:{name}",
            )
        return {
            "model": name,
            "ran_at": at.isoformat(),
            "parameters": parameters,
            "summary": summary,
            "profiles_changed": changed,
            "segments": report,
        }

    async def run_all(self, now: datetime | None = None) -> None:
        """Run every model in turn, logging failures without stopping the others."""
        for name in self._runs:
            try:
                await self.run(name, now)
            except Exception:
                logger.exception("model run failed", extra={"model": name})

    async def _rfm(
        self, session: AsyncSession, now: datetime
    ) -> tuple[dict[str, Any], dict[str, Any], dict[str, Any]]:
        customers = await _customers(session, now)
        buyers = [c for c in customers if c["orders"] > 0]
        results: dict[str, Any] = {c["profile_id"]: None for c in customers}
        if buyers:
            recency = quintile_scores([-c["recency_days"] for c in buyers])
            frequency = quintile_scores([c["orders"] for c in buyers])
            monetary = quintile_scores([c["revenue"] for c in buyers])
            for c, r, f, m in zip(buyers, recency, frequency, monetary, strict=True):
                results[c["profile_id"]] = {
                    "r": r,
                    "f": f,
                    "m": m,
                    "score": f"{r}{f}{m}",
                    "segment": named_segment(r, f, m),
                }
        sizes = Counter(v["segment"] for v in results.values() if v)
        parameters = {
            "scores": "quintiles by cumulative share; FM = round half up of (F + M) / 2",
            "customers": len(buyers),
        }
        return parameters, {"segments": dict(sorted(sizes.items()))}, results

    async def _lifecycle(
        self, session: AsyncSession, now: datetime
    ) -> tuple[dict[str, Any], dict[str, Any], dict[str, Any]]:
        thresholds = self._context.lifecycle
        # Only someone who ordered has a stage, and only someone with a stage can lose
        # it: everyone else would compute to no stage and stay as they are, so the
        # round (every scheduler tick) reads the buyers alone.
        rows = await session.execute(
            sa.select(store.profiles.c.profile_id, store.profiles.c.computed, store.profiles.c.model).where(
                LIVE_PROFILES,
                sa.or_(
                    store.profiles.c.computed.has_key(LAST_ORDER_DATE),
                    store.profiles.c.model.has_key("lifecycle"),
                ),
            )
        )
        results = {
            pid: lifecycle_model(computed, model.get("lifecycle"), now, thresholds)
            for pid, computed, model in rows
        }
        sizes = Counter(v["stage"] for v in results.values() if v)
        parameters = {
            "new_days": thresholds.new_days,
            "active_days": thresholds.active_days,
            "churn_days": thresholds.churn_days,
        }
        return parameters, {"stages": dict(sorted(sizes.items()))}, results

    async def _clusters(
        self, session: AsyncSession, now: datetime
    ) -> tuple[dict[str, Any], dict[str, Any], dict[str, Any]]:
        customers = await _customers(session, now)
        buyers = [c for c in customers if c["orders"] > 0]
        results: dict[str, Any] = {c["profile_id"]: None for c in customers}
        parameters = {
            "k": self._cluster_count,
            "features": list(clustering.FEATURES),
            "algorithm": "k-means (scikit-learn), log1p and z-scores",
        }
        if len(buyers) < self._cluster_count:
            return parameters, {"clusters": [], "note": "fewer customers than clusters"}, results
        features = np.array(
            [
                [c["recency_days"], c["orders"], c["revenue"], c["revenue"] / c["orders"], c["tenure_days"]]
                for c in buyers
            ],
            dtype=np.float64,
        )
        labels, found = await asyncio.to_thread(clustering.fit_clusters, features, self._cluster_count)
        describe = {c.id: c.description for c in found}
        for customer, label in zip(buyers, labels, strict=True):
            results[customer["profile_id"]] = {"id": label, "description": describe[label]}
        summary = {
            "clusters": [
                {"id": c.id, "size": c.size, "means": c.means, "description": c.description} for c in found
            ]
        }
        return parameters, summary, results

    async def _clv(
        self, session: AsyncSession, now: datetime
    ) -> tuple[dict[str, Any], dict[str, Any], dict[str, Any]]:
        customers = await _customers(session, now)
        buyers = [c for c in customers if c["orders"] > 0]
        results: dict[str, Any] = {c["profile_id"]: None for c in customers}
        horizon = self._clv_horizon_days
        parameters: dict[str, Any] = {
            "horizon_days": horizon,
            "model": "BG/NBD + Gamma-Gamma, maximum likelihood (scipy)",
        }
        if len(buyers) < 20:
            return parameters, {"note": "fewer than 20 customers: not fitted"}, results
        data = value_model.Customers(
            frequency=np.array([c["orders"] - 1 for c in buyers], dtype=np.float64),
            recency=np.array([c["span_days"] for c in buyers], dtype=np.float64),
            age=np.array([max(c["tenure_days"], c["span_days"]) for c in buyers], dtype=np.float64),
            monetary=np.array([c["revenue"] / c["orders"] for c in buyers], dtype=np.float64),
        )

        def fit() -> tuple[value_model.BgNbd, value_model.GammaGamma]:
            return value_model.fit_bgnbd(data), value_model.fit_gamma_gamma(data)

        bgnbd, gamma_gamma = await asyncio.to_thread(fit)
        alive = bgnbd.probability_alive(data)
        purchases = bgnbd.expected_purchases(data, horizon)
        value = purchases * gamma_gamma.expected_order_value(data)
        for c, p_alive, n, v in zip(buyers, alive, purchases, value, strict=True):
            results[c["profile_id"]] = {
                "value": round(float(v), 2),
                "expected_orders": round(float(n), 3),
                "churn_probability": round(float(1 - p_alive), 4),
            }
        parameters.update({"bgnbd": vars(bgnbd), "gamma_gamma": vars(gamma_gamma)})
        summary = {
            "customers": len(buyers),
            "mean_value": round(float(value.mean()), 2),
            "mean_churn_probability": round(float(1 - alive.mean()), 4),
        }
        return parameters, summary, results
