"""The models' domain: RFM scoring and names, lifecycle stages, clusters, and the CLV backtest of the model card."""

from __future__ import annotations

from datetime import UTC, date, datetime, timedelta
from pathlib import Path

import numpy as np
import pytest
from cdp_segment.domain.clusters import FEATURES, fit_cluster_model, fit_clusters
from cdp_segment.domain.clv import BgNbd, Customers, fit_bgnbd, fit_gamma_gamma, simulate_customers
from cdp_segment.domain.lifecycle import LifecycleThresholds, lifecycle_stage
from cdp_segment.domain.membership import Catalog, SegmentDefinition, find_cycle
from cdp_segment.domain.rfm import named_segment, quintile_positions, quintile_scores, score_by_thresholds
from cdp_segment.domain.rules import parse_rule

NOW = datetime(2025, 6, 15, tzinfo=UTC)


def test_quintiles_share_scores_on_ties() -> None:
    assert quintile_scores([1, 2, 3, 4, 5, 6, 7, 8, 9, 10]) == [1, 1, 2, 2, 3, 3, 4, 4, 5, 5]
    assert quintile_scores([7, 7, 7, 7]) == [5, 5, 5, 5]


@pytest.mark.parametrize("count", [1, 2, 3, 4, 5, 7, 10, 11, 99, 1000])
def test_thresholds_at_sorted_positions_give_the_quintile_scores(count: int) -> None:
    """What a run finds in SQL (the values at these positions) scores exactly as the whole list does."""
    rng = np.random.default_rng(count)
    values = [float(v) for v in rng.integers(0, max(count // 3, 2), count)]
    ordered = sorted(values)
    thresholds = [ordered[position - 1] for position in quintile_positions(count)]
    assert [score_by_thresholds(v, thresholds) for v in values] == quintile_scores(values)


def test_a_cluster_model_assigns_its_sample_as_k_means_labelled_it() -> None:
    rng = np.random.default_rng(3)
    features = np.abs(rng.normal([50, 3, 300, 80, 400], [40, 2, 250, 50, 200], size=(400, 5)))
    model, labels, clusters = fit_cluster_model(features, k=4)
    assert list(model.assign(features)) == labels
    assert [c.description for c in clusters] == model.descriptions


@pytest.mark.parametrize(
    ("r", "f", "m", "name"),
    [(5, 5, 5, "champions"), (5, 1, 1, "new"), (4, 1, 1, "promising"), (4, 3, 2, "potential_loyalists"),
     (3, 4, 5, "loyal"), (3, 2, 2, "need_attention"), (2, 4, 3, "at_risk"), (1, 5, 5, "cant_lose"),
     (2, 1, 2, "hibernating"), (1, 2, 1, "lost")],
)  # fmt: skip
def test_named_rfm_segments(r: int, f: int, m: int, name: str) -> None:
    assert named_segment(r, f, m) == name


@pytest.mark.parametrize(
    ("orders", "recent", "days", "previous", "stage"),
    [(1, 1, 3, None, "new"), (5, 1, 3, None, "active"), (5, 0, 120, "active", "at_risk"),
     (5, 0, 200, "at_risk", "churned"), (6, 1, 2, "churned", "reactivated"), (7, 1, 40, "reactivated", "reactivated"),
     (0, 0, 0, None, None)],
)  # fmt: skip
def test_lifecycle_stages(
    orders: int, recent: int, days: int, previous: str | None, stage: str | None
) -> None:
    last = NOW - timedelta(days=days) if orders else None
    found = lifecycle_stage(
        orders=orders,
        recent_orders=recent,
        last_order=last,
        previous=previous,
        now=NOW,
        thresholds=LifecycleThresholds(),
    )
    assert found == stage


def test_thresholds_are_configurable() -> None:
    strict = LifecycleThresholds(new_days=7, active_days=14, churn_days=28)
    last = NOW - timedelta(days=20)
    assert (
        lifecycle_stage(orders=3, recent_orders=0, last_order=last, previous=None, now=NOW, thresholds=strict)
        == "at_risk"
    )


def test_clusters_are_described_by_what_sets_them_apart() -> None:
    rng = np.random.default_rng(1)
    loyal = np.column_stack(
        [
            rng.uniform(1, 10, 50),
            rng.uniform(20, 30, 50),
            rng.uniform(2000, 3000, 50),
            rng.uniform(90, 110, 50),
            rng.uniform(600, 700, 50),
        ]
    )
    one_off = np.column_stack(
        [
            rng.uniform(200, 300, 50),
            np.ones(50),
            rng.uniform(20, 40, 50),
            rng.uniform(20, 40, 50),
            rng.uniform(200, 300, 50),
        ]
    )
    labels, clusters = fit_clusters(np.vstack([loyal, one_off]), k=2)
    assert len(set(labels[:50])) == 1
    assert len(set(labels[50:])) == 1
    loyal_cluster = clusters[labels[0]]
    assert "orders more often" in loyal_cluster.description or "spends more" in loyal_cluster.description
    assert set(loyal_cluster.means) == set(FEATURES)


def test_clv_backtest_on_a_synthetic_shop_beats_the_naive_rate() -> None:
    """The figures of the model card: fit on 365 days, predict the next 180, compare with what happened."""
    truth = BgNbd(r=0.5, alpha=40.0, a=0.8, b=4.0)
    customers, holdout = simulate_customers(
        count=3000, calibration_days=365, holdout_days=180, params=truth, seed=7
    )
    model = fit_bgnbd(customers)
    predicted = model.expected_purchases(customers, 180)
    naive = customers.frequency / np.maximum(customers.age, 1) * 180
    model_mae = float(np.abs(predicted - holdout).mean())
    naive_mae = float(np.abs(naive - holdout).mean())
    total_error = abs(predicted.sum() - holdout.sum()) / holdout.sum()
    assert total_error < 0.10
    assert model_mae < naive_mae
    alive = model.probability_alive(customers)
    assert ((alive >= 0) & (alive <= 1)).all()
    value = fit_gamma_gamma(customers).expected_order_value(customers)
    assert (value > 0).all()


CDNOW = Path(__file__).parents[1] / "fixtures" / "CDNOW_sample.txt"
CALIBRATION_END = date(1997, 9, 30)  # 39 weeks after the year began
HOLDOUT_END = date(1998, 6, 30)  # the next 39 weeks
PUBLISHED = BgNbd(r=0.243, alpha=4.414, a=0.793, b=2.426)


def cdnow_in_weeks() -> tuple[Customers, np.ndarray]:
    """The CDNOW sample as the paper summarises it: repeat purchase days, t_x and T in weeks over the
    calibration period, and each customer's purchase days in the holdout."""
    days: dict[str, set[date]] = {}
    for line in CDNOW.read_text().splitlines():
        customer, _, stamp, _, _ = line.split()
        days.setdefault(customer, set()).add(date(int(stamp[:4]), int(stamp[4:6]), int(stamp[6:])))
    frequency, recency, age, holdout = [], [], [], []
    for bought in days.values():
        calibration = sorted(d for d in bought if d <= CALIBRATION_END)
        frequency.append(len(calibration) - 1)
        recency.append((calibration[-1] - calibration[0]).days / 7)
        age.append((CALIBRATION_END - calibration[0]).days / 7)
        holdout.append(sum(1 for d in bought if CALIBRATION_END < d <= HOLDOUT_END))
    customers = Customers(
        frequency=np.array(frequency, dtype=np.float64),
        recency=np.array(recency),
        age=np.array(age),
        monetary=np.zeros(len(frequency)),
    )
    return customers, np.array(holdout, dtype=np.float64)


def test_bgnbd_reproduces_the_published_cdnow_fit_and_its_holdout_forecast() -> None:
    """Fader, Hardie and Lee (2005) on their CDNOW sample: the parameters to two decimals, and a
    39-week forecast as close to what the customers did as the published parameters'."""
    customers, holdout = cdnow_in_weeks()
    assert len(holdout) == 2357
    model = fit_bgnbd(customers)
    fitted = (model.r, model.alpha, model.a, model.b)
    published = (PUBLISHED.r, PUBLISHED.alpha, PUBLISHED.a, PUBLISHED.b)
    assert [round(v, 2) for v in fitted] == [round(v, 2) for v in published]
    assert model.a < 1, "a below 1 is the textbook fit; it must not be clamped"
    forecast = float(model.expected_purchases(customers, 39).sum())
    by_published = float(PUBLISHED.expected_purchases(customers, 39).sum())
    actual = float(holdout.sum())
    assert actual == 1882
    assert abs(forecast - by_published) / by_published < 0.005
    assert abs(forecast - actual) <= abs(by_published - actual) * 1.005


def test_the_customers_bgnbd_calls_most_likely_gone_buy_least_in_the_holdout() -> None:
    """Churn checked on the CDNOW holdout (the model card's table): the repeat customers by decile of
    P(alive) and their purchases in the next 39 weeks. A customer without a repeat purchase has
    P(alive) = 1 by the model's construction, so they are left out of the ranking."""
    customers, holdout = cdnow_in_weeks()
    alive = fit_bgnbd(customers).probability_alive(customers)
    repeat = np.flatnonzero(customers.frequency > 0)
    ranked = repeat[np.argsort(alive[repeat], kind="stable")]
    deciles = [float(holdout[part].mean()) for part in np.array_split(ranked, 10)]
    assert deciles[-1] == max(deciles)
    assert np.mean(deciles[:3]) < np.mean(deciles[-3:]) / 3
    assert np.mean(deciles[:5]) < np.mean(deciles[5:]) / 2


def test_a_change_reaches_only_dependent_segments_then_their_dependents() -> None:
    def definition(key: str, rule: dict[str, object]) -> SegmentDefinition:
        return SegmentDefinition(id=key, key=key, version=1, parsed=parse_rule(rule))

    catalog = Catalog(
        [
            definition("pro", {"trait": "plan", "op": "eq", "value": "pro"}),
            definition("berlin", {"geo": {"city": "Berlin"}}),
            definition("pro_berlin", {"all": [{"segment": "pro"}, {"segment": "berlin"}]}),
        ]
    )
    assert catalog.affected_by({"trait:plan"}) == {"pro"}
    assert [d.key for d in catalog.ordered][-1] == "pro_berlin"
    assert find_cycle({"a": frozenset({"b"}), "b": frozenset({"a"})}) == ["a", "b", "a"]
