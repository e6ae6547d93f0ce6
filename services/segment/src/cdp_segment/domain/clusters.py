"""Behavioural clusters: k-means over a customer's order features, each with a readable description.

Features are recency, number of orders, revenue, mean order value and tenure;
they are log-scaled and standardised before k-means (scikit-learn). A cluster is
described by the two features whose cluster mean sets it furthest apart from the
whole population, in the features' own units.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
from numpy.typing import NDArray

FEATURES = ("recency_days", "orders", "revenue", "mean_order_value", "tenure_days")
WORDS = {
    "recency_days": ("ordered more recently", "has not ordered for longer", "days since the last order"),
    "orders": ("orders more often", "orders less often", "orders"),
    "revenue": ("spends more", "spends less", "revenue"),
    "mean_order_value": ("bigger baskets", "smaller baskets", "mean order value"),
    "tenure_days": ("customers for longer", "newer customers", "days since the first order"),
}


@dataclass(frozen=True)
class Cluster:
    """One cluster: its size, mean features and what sets it apart."""

    id: int
    size: int
    means: dict[str, float]
    description: str


def describe(means: NDArray[np.float64], overall: NDArray[np.float64], spread: NDArray[np.float64]) -> str:
    """Describe a cluster by the two features that set it furthest apart from the population."""
    distance = (means - overall) / np.where(spread > 0, spread, 1.0)
    parts = []
    for index in np.argsort(-np.abs(distance))[:2]:
        name = FEATURES[index]
        more, less, unit = WORDS[name]
        # For recency a smaller number of days is the "more" direction.
        higher = means[index] > overall[index]
        phrase = (less if higher else more) if name == "recency_days" else (more if higher else less)
        parts.append(f"{phrase} ({unit} {means[index]:.1f} against {overall[index]:.1f} overall)")
    return "; ".join(parts)


def fit_clusters(features: NDArray[np.float64], k: int, seed: int = 0) -> tuple[list[int], list[Cluster]]:
    """Cluster rows of FEATURES; return each row's cluster id and the clusters, largest first."""
    # Imported here: scikit-learn takes seconds to import and only model runs need it.
    from sklearn.cluster import KMeans  # type: ignore[import-untyped]

    scaled = np.log1p(np.maximum(features, 0))
    mean, std = scaled.mean(axis=0), scaled.std(axis=0)
    standardised = (scaled - mean) / np.where(std > 0, std, 1.0)
    k = min(k, len(features))
    labels = KMeans(n_clusters=k, n_init=10, random_state=seed).fit_predict(standardised)
    overall = features.mean(axis=0)
    spread = features.std(axis=0)
    order = sorted(range(k), key=lambda c: -int(np.sum(labels == c)))
    renumber = {old: new for new, old in enumerate(order)}
    clusters = []
    for old in order:
        members = features[labels == old]
        means = members.mean(axis=0)
        clusters.append(
            Cluster(
                id=renumber[old],
                size=len(members),
                means={name: round(float(v), 2) for name, v in zip(FEATURES, means, strict=True)},
                description=describe(means, overall, spread),
            )
        )
    return [renumber[int(label)] for label in labels], clusters
