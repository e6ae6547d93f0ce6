"""Behavioural clusters: k-means over a customer's order features, each with a readable description.

Features are recency, number of orders, revenue, mean order value and tenure;
they are log-scaled and standardised before k-means (scikit-learn). A cluster is
described by the two features whose cluster mean sets it furthest apart from the
whole population, in the features' own units. A fitted model assigns any customer to
its nearest centre, so a model fitted on a sample scores the whole base.
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


@dataclass(frozen=True)
class ClusterModel:
    """A fitted k-means: the scaling of the features and the centres, by which any customer is assigned."""

    mean: list[float]
    std: list[float]
    centers: list[list[float]]
    descriptions: list[str]

    def assign(self, features: NDArray[np.float64]) -> NDArray[np.int64]:
        """Return the id of the nearest centre of each row of FEATURES."""
        scaled = np.log1p(np.maximum(features, 0))
        std = np.asarray(self.std)
        standardised = (scaled - np.asarray(self.mean)) / np.where(std > 0, std, 1.0)
        distances = ((standardised[:, None, :] - np.asarray(self.centers)[None, :, :]) ** 2).sum(axis=2)
        return np.asarray(distances.argmin(axis=1), dtype=np.int64)


def fit_cluster_model(
    features: NDArray[np.float64], k: int, seed: int = 0
) -> tuple[ClusterModel, list[int], list[Cluster]]:
    """Cluster rows of FEATURES; return the model, each row's cluster id and the clusters, largest first."""
    # Imported here: scikit-learn takes seconds to import and only model runs need it.
    from sklearn.cluster import KMeans  # type: ignore[import-untyped]

    scaled = np.log1p(np.maximum(features, 0))
    mean, std = scaled.mean(axis=0), scaled.std(axis=0)
    standardised = (scaled - mean) / np.where(std > 0, std, 1.0)
    k = min(k, len(features))
    fitted = KMeans(n_clusters=k, n_init=10, random_state=seed).fit(standardised)
    labels = fitted.labels_
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
    model = ClusterModel(
        mean=[float(v) for v in mean],
        std=[float(v) for v in std],
        centers=[[float(v) for v in fitted.cluster_centers_[old]] for old in order],
        descriptions=[c.description for c in clusters],
    )
    return model, [renumber[int(label)] for label in labels], clusters


def fit_clusters(features: NDArray[np.float64], k: int, seed: int = 0) -> tuple[list[int], list[Cluster]]:
    """Cluster rows of FEATURES; return each row's cluster id and the clusters, largest first."""
    _, labels, clusters = fit_cluster_model(features, k, seed)
    return labels, clusters
